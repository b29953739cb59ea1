"""docs/tutorial.md runs as written: each `bash` block, in order, in a fresh directory laid out
like the repository's root (.venv, a small corpus in my_corpus/), so the tutorial cannot rot.

`console` blocks (make install) are what the test's own environment already did."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).parent.parent / "docs" / "tutorial.md"
# About 120 KB of real text for my_corpus/: the json package and a slice of email's sources.
CORPUS = ("json/*.py", "email/[a-f]*.py")


def blocks(text: str, language: str) -> list[str]:
    """The contents of the fenced code blocks of `language` in a Markdown text, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with the repository's .venv and my_corpus/ of .txt files."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    corpus = tmp_path / "my_corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for pattern in CORPUS:
        for path in sorted(stdlib.glob(pattern)):
            shutil.copy(path, corpus / f"{path.parent.name}_{path.stem}.txt")
    return tmp_path


def test_the_install_is_a_console_block_and_every_other_command_bash():
    text = TUTORIAL.read_text("utf-8")
    assert [b.split()[:2] for b in blocks(text, "console")] == [["make", "install"]]
    assert len(blocks(text, "bash")) >= 6
    assert set(re.findall(r"^```(\w*)", text, flags=re.MULTILINE)) <= {"bash", "console", ""}


def test_every_bash_block_of_the_tutorial_runs(workdir: Path):
    env = {**os.environ, "SCALING_CACHE": str(workdir / "cache")}
    for block in blocks(TUTORIAL.read_text("utf-8"), "bash"):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=workdir, env=env,
                                capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"{block}\n{result.stderr[-3000:]}"
    assert (workdir / "runs/parquet-check/summary.json").is_file()
    assert len(list((workdir / "runs/mine").glob("L1-*/summary.json"))) == 9
    assert (workdir / "runs/mine/report/fits.json").is_file()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (workdir / "hf/mine").iterdir()}
