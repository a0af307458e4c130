"""README's first screen is a quickstart, and every link in README and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)#\s]+)[^)]*\)")
GUIDES = ("cluster", "configuration", "datasets", "results", "tracking")


def test_readme_opens_with_a_quickstart_of_at_most_80_lines_before_the_first_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    quickstart = lines.index("## Quickstart")
    first_guide = next(
        number
        for number, line in enumerate(lines)
        if any(not bang and target.startswith("docs/") for bang, target in LINK.findall(line))
    )
    assert quickstart < first_guide <= 80, (quickstart, first_guide)
    assert "Contents:" in "\n".join(lines[:quickstart])  # a table of contents above it
    linked = {target for line in lines for _, target in LINK.findall(line)}
    assert {f"docs/{guide}.md" for guide in GUIDES} <= linked


@pytest.mark.parametrize(
    "page", ["README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
)
def test_local_links_and_images_exist(page):
    path = ROOT / page
    for _bang, target in LINK.findall(path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{page}: {target} does not exist"
