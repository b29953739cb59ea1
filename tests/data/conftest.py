"""A small mixed corpus (code, prose, Japanese, jsonl) in a temporary working directory."""

import json
from pathlib import Path

import pytest

from scaling.config import DataConfig

# Every character besides "\n" and "\r" at which str.splitlines() breaks a line: text to a
# JSON Lines or text reader.
SPLITLINES_ONLY = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
JAPANESE = "吾輩は猫である。名前はまだ無い。\nどこで生れたかとんと見当がつかぬ。\n"


def corpus_texts() -> dict[str, str]:
    """Document name (path relative to corpus/) → text, for every non-jsonl file."""
    code = "".join(f"def f{i}(x):\n    return x * {i} + 1  # step {i}\n\n" for i in range(40))
    prose = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))
    return {
        "a.py": code,
        "b.py": code.replace("x", "value"),
        "notes.md": "# Notes\n\n" + prose,
        "ja.txt": JAPANESE * 20,
        "sub/c.txt": prose.upper(),
    }


JSONL_TEXTS = [f"record {i}: a short line of text, number {i}." for i in range(6)] + ["日本語の行"]


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Write tmp_path/corpus/, make tmp_path the working directory; return name → text."""
    monkeypatch.chdir(tmp_path)
    texts = corpus_texts()
    for name, text in texts.items():
        Path("corpus", name).parent.mkdir(parents=True, exist_ok=True)
        Path("corpus", name).write_text(text, encoding="utf-8")
    # Alternate \\u escapes and raw UTF-8: a jsonl file may hold either.
    lines = [json.dumps({"text": t}, ensure_ascii=i % 2 == 0) for i, t in enumerate(JSONL_TEXTS)]
    Path("corpus/lines.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts.update({f"lines.jsonl:{i + 1}": t for i, t in enumerate(JSONL_TEXTS)})
    return texts


@pytest.fixture
def data_cfg(tmp_path: Path, corpus: dict[str, str]) -> DataConfig:
    """The corpus above with a small BPE vocabulary and a cache inside tmp_path."""
    return DataConfig(
        source="files",
        paths=["corpus/**/*"],
        tokenizer="bpe",
        vocab_size=400,
        val_fraction=0.3,
        cache_dir=str(tmp_path / "cache"),
    )
