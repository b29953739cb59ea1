"""README.ja.md stays in step with README.md: the same sections, and every fenced block of
README.md (commands, outputs, the layout) in it verbatim; both open with at most three lines
saying what the project is for, before the two commands."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FENCED = re.compile(r"^```\w*\n.*?^```", flags=re.MULTILINE | re.DOTALL)


def read(name: str) -> str:
    return (ROOT / name).read_text("utf-8")


def heading_levels(text: str) -> list[int]:
    """The level of each Markdown heading outside fenced blocks, in order."""
    return [len(m.group(1)) for m in re.finditer(r"^(#+) ", FENCED.sub("", text), re.MULTILINE)]


def test_every_fenced_block_of_the_readme_is_in_the_japanese_one():
    japanese = read("README.ja.md")
    missing = [b.splitlines()[1] for b in FENCED.findall(read("README.md")) if b not in japanese]
    assert not missing, f"README.md blocks not in README.ja.md (first lines): {missing}"


def test_the_same_sections_in_the_same_order():
    assert heading_levels(read("README.ja.md")) == heading_levels(read("README.md"))


@pytest.mark.parametrize("name", ["README.md", "README.ja.md"])
def test_the_opening_is_three_lines_before_the_two_commands(name):
    text = read(name)
    opening = [p for p in text[:text.index("```")].split("\n\n")[1:] if p.strip()]
    assert len(opening) == 1 and len(opening[0].strip().splitlines()) <= 3, opening
    first = FENCED.search(text).group(0)
    assert "make demo" in first and "make test" in first


def test_every_table_row_of_the_readme_is_in_the_japanese_one():
    """Tables are matched by their first cell: a preset, stage, group or counting rule."""
    first_cells = re.findall(r"^\| (`[^`]+`)", read("README.md"), flags=re.MULTILINE)
    japanese = set(re.findall(r"^\| (`[^`]+`)", read("README.ja.md"), flags=re.MULTILINE))
    assert [cell for cell in first_cells if cell not in japanese] == []


def test_each_links_to_the_other():
    assert "(README.ja.md)" in read("README.md") and "(README.md)" in read("README.ja.md")
