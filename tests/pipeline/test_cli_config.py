"""`pixelrnn config show` lists every config key with a description; `pixelrnn --version`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.config import ExperimentConfig
from pipeline.config_reference import field_descriptions

REPO = Path(__file__).resolve().parents[2]


def dataclass_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of a dataclass tree, walked independently of pipeline.config's helpers."""
    keys = []
    for field in dataclasses.fields(cls):
        default = field.default_factory() if callable(field.default_factory) else field.default
        if dataclasses.is_dataclass(default):
            keys += dataclass_keys(type(default), f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def shown(capsys, *argv: str) -> dict[str, tuple[str, str, str]]:
    """{key: (marker, value, description)} from `config show`'s text output."""
    assert main(["config", "show", *argv]) == 0
    entries = {}
    for line in capsys.readouterr().out.splitlines():
        marker, setting = line[0], line[2:]
        key_value, _, description = setting.partition("  # ")
        key, _, value = key_value.partition(" = ")
        entries[key] = (marker, value.strip(), description)
    return entries


def test_config_show_lists_every_dataclass_key_with_its_value_and_a_description(capsys):
    entries = shown(capsys)
    assert list(entries) == dataclass_keys(ExperimentConfig)
    defaults = ExperimentConfig().to_flat()
    for key, (marker, value, description) in entries.items():
        assert marker == " " and json.loads(value) == defaults[key], key
        assert len(description) > 8, f"{key}: no description (give its field a comment)"


def test_descriptions_come_from_comments_and_docstrings():
    from pipeline.config import OptimConfig, TrackingConfig
    from pixelrnn_model import ModelConfig

    assert field_descriptions(TrackingConfig)["system_metrics"].startswith("log CPU, memory")
    assert field_descriptions(OptimConfig)["schedule"].startswith('"constant", "cosine"')
    assert field_descriptions(ModelConfig)["hidden_channels"].startswith("h; the residual")


def test_config_show_applies_the_file_and_overrides_and_marks_changes(capsys):
    entries = shown(capsys, "--config", str(REPO / "experiments" / "smoke.yaml"),
                    "--set", "optim.lr=3e-4", "--set", "tracking.system_metrics=false")  # fmt: skip
    assert entries["optim.lr"][:2] == ("*", "0.0003")
    assert entries["tracking.system_metrics"][:2] == ("*", "false")
    assert entries["model.num_layers"][:2] == ("*", "2")  # from smoke.yaml
    assert entries["optim.optimizer"][:2] == (" ", '"rmsprop"')


def test_config_show_markdown_and_docs_list_every_key(capsys):
    assert main(["config", "show", "--format", "markdown"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == dataclass_keys(ExperimentConfig)
    documented = (REPO / "docs" / "configuration.md").read_text()
    missing = [key for key in dataclass_keys(ExperimentConfig) if f"`{key}`" not in documented]
    assert not missing, (
        f"docs/configuration.md lacks {missing}: regenerate its table with "
        "`pixelrnn config show --format markdown`"
    )


def test_config_show_rejects_unknown_keys_in_one_line(capsys):
    assert main(["config", "show", "--set", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)" in err


def test_version_prints_the_package_version():
    done = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True,
                          text=True, cwd=REPO)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == f"pixelrnn {version('pixelrnn')}"


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "sample", "tune", "compare",
                                     "config", "verify", "export", "batches"])  # fmt: skip
def test_every_command_s_help_carries_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "example:" in capsys.readouterr().out
