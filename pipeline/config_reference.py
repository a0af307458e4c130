"""Every config key with a one-line description, read from the config dataclasses' source.

A key's description is its field's trailing comment, else the comment lines right above it,
else its entry in the class docstring's `Attributes:` section (ModelConfig's style). Keys come
from `ExperimentConfig` itself, so a new field is listed the moment it exists.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any

from pipeline.config import SECTIONS, ExperimentConfig


@dataclasses.dataclass(frozen=True)
class KeyReference:
    """One dotted config key: its resolved value, its default and what it means."""

    key: str
    value: Any
    default: Any
    description: str


def reference(cfg: ExperimentConfig) -> list[KeyReference]:
    """Every key of `cfg` in declaration order, with `ExperimentConfig()`'s default beside it."""
    defaults = ExperimentConfig().to_flat()
    descriptions = {"preset": field_descriptions(ExperimentConfig)["preset"]}
    for section, section_type in SECTIONS.items():
        for name, text in field_descriptions(section_type).items():
            descriptions[f"{section}.{name}"] = text
    return [KeyReference(key, value, defaults.get(key), descriptions.get(key, ""))
            for key, value in cfg.to_flat().items()]  # fmt: skip


@functools.cache
def field_descriptions(cls: type) -> dict[str, str]:
    """{field name: one-line description} of a dataclass, from its source ("" when none)."""
    source = textwrap.dedent(inspect.getsource(cls))
    trailing, whole_line = _comments_by_line(source)
    documented = _docstring_attributes(inspect.getdoc(cls) or "")
    body = ast.parse(source).body[0].body  # the class statement's body
    fields = {f.name for f in dataclasses.fields(cls)}
    descriptions = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            if name in fields:
                text = trailing.get(node.end_lineno) or _comment_block_above(
                    whole_line, node.lineno
                )
                descriptions[name] = text or documented.get(name, "")
    return descriptions


def _comments_by_line(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """(trailing comments, whole-line comments), each by line number."""
    trailing, whole_line = {}, {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and "fmt:" not in token.string:
            alone = not token.line[: token.start[1]].strip()
            (whole_line if alone else trailing)[token.start[0]] = token.string.lstrip("#").strip()
    return trailing, whole_line


def _comment_block_above(whole_line: dict[int, str], line: int) -> str:
    block = []
    while line - 1 in whole_line:
        line -= 1
        block.insert(0, whole_line[line])
    return " ".join(block)


def _docstring_attributes(doc: str) -> dict[str, str]:
    """`name: text` entries of a Google-style `Attributes:` section (continuations joined)."""
    entries: dict[str, str] = {}
    inside, current = False, ""
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            inside = True
        elif inside and line.startswith("    ") and not line.startswith("        "):
            current, _, text = line.strip().partition(":")
            entries[current] = text.strip()
        elif inside and line.startswith("        ") and current:
            entries[current] += " " + line.strip()
        elif inside and line.strip():
            inside = False
    return entries
