"""data=prose and data=code: the stripping and extraction, the split by file, the skips, the
memo, and their place in the config and the token cache."""

import ast
import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

from scaling.config import Config, ConfigError, DataConfig, StageConfig, validate
from scaling.data import load_dataset, sources
from scaling.data.python_text import python_code, python_prose
from scaling.data.sources import PROSE_FILE, python_files, python_roots, python_side, read_corpus

SOURCE = '''#!/usr/bin/env python
# -*- coding: utf-8 -*-
"""Module docstring.

    Detail:
        indented.
"""
import os  # noqa: F401
# A comment block
# that continues.
# ----------


def f(x):
    """Return x."""
    return x  # trailing


class C:
    """Only a docstring."""


class D:
    a = "é"; "Attribute doc."


def g():
    s = "# not a comment"
    if s:
        "a string statement"
    return s
'''

CODE = '''import os


def f(x):
    return x


class C:
    pass


class D:
    a = "é";


def g():
    s = "# not a comment"
    if s:
        pass
    return s
'''

PROSE = '''Module docstring.

Detail:
    indented.

A comment block
that continues.

Return x.

trailing

Only a docstring.

Attribute doc.

a string statement
'''


def test_code_keeps_the_code_and_nothing_else():
    assert python_code(SOURCE) == CODE
    assert ast.dump(ast.parse(CODE)) == ast.dump(ast.parse(python_code(CODE)))  # a fixed point
    assert python_code('"""Only a docstring."""\n# and a comment\n') == ""
    assert python_code("x = 1\r\n\r\n\r\n\r\n\r\ny = 2  # two\r\n") == "x = 1\n\n\ny = 2\n"


def test_prose_is_the_docstrings_and_comments_in_source_order():
    assert python_prose(SOURCE) == PROSE
    assert python_prose("x = 1\n") == ""


def test_what_does_not_parse_raises():
    for bad in ("def f(:\n    pass\n", "x = (1,\n", "if x:\npass\n"):
        with pytest.raises(SyntaxError):
            python_code(bad)
        with pytest.raises(SyntaxError):
            python_prose(bad)
    with pytest.raises(ValueError, match="does not parse"):
        python_code('"""Doc."""; x = 1\n')  # the cut leaves `; x = 1`


def test_side_is_a_stable_half_independent_of_the_validation_split():
    names = list(python_files(python_roots()))
    sides = [python_side(name) for name in names]
    assert sides == [python_side(name) for name in names]
    assert 0.45 < sides.count("prose") / len(names) < 0.55
    val = [s for name, s in zip(names, sides, strict=True) if sources.hash_fraction(name) < 0.05]
    assert 0.3 < val.count("prose") / len(val) < 0.7


def python_tree(tmp_path: Path, count: int = 12) -> list[tuple[str, Path]]:
    """A site root of `count` modules with docstrings and comments, and one that does not parse
    on each side; with a stdlib root holding only tests, so that python_roots is just this."""
    root = tmp_path / "site"
    for i in range(count):
        text = f'"""Module {i} says hello."""\n# Comment {i} here.\nX{i} = {i}  # the value\n'
        (root / f"m{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"m{i}.py").write_text(text, "utf-8")
    (tmp_path / "lib/test").mkdir(parents=True)
    (tmp_path / "lib/test/t.py").write_text("x = 1\n")
    broken = {python_side(f"site/bad{i}.py"): f"bad{i}.py" for i in range(20)}
    for name in broken.values():
        (root / name).write_text(f'"""Doc of {name}."""\ndef f(:\n')
    return [("stdlib", tmp_path / "lib"), ("site", root)]


def test_corpora_split_the_files_and_skip_what_does_not_parse(tmp_path):
    roots = python_tree(tmp_path)
    prose = sources._derived_corpus("prose", roots, None)
    code = sources._derived_corpus("code", roots, None)
    files = {f"site/m{i}.py" for i in range(12)}
    prose_files = set(prose.files) - {PROSE_FILE}
    assert not prose_files & set(code.files) and prose_files | set(code.files) == files
    assert not {d.name for d in prose.documents} & {d.name for d in code.documents}
    assert len(prose.skipped) == len(code.skipped) == 1
    assert python_side(prose.skipped[0]) == "prose" and python_side(code.skipped[0]) == "code"
    assert all(python_side(d.name) == "code" for d in code.documents)
    assert [d.text for d in code.documents] == [f"X{n[6:-3]} = {n[6:-3]}\n" for n in code.files]
    texts = {d.name: d.text for d in prose.documents}
    assert {n: texts[n] for n in prose_files} == {
        n: f"Module {n[6:-3]} says hello.\n\nComment {n[6:-3]} here.\n\nthe value\n"
        for n in prose_files}
    topics = [n for n in texts if n.startswith(f"{PROSE_FILE}:")]
    assert len(topics) > 50 and f"{PROSE_FILE}:assert" in topics
    again = sources._derived_corpus("code", roots, None)
    assert again == code


def test_the_memo_is_used_and_keyed_by_the_sources(tmp_path, monkeypatch):
    roots = python_tree(tmp_path)
    first = sources._derived_corpus("code", roots, tmp_path / "memo")
    assert len(list((tmp_path / "memo").glob("python-text-*.json"))) == 1

    def no_derivation(text: str) -> str:
        raise AssertionError("derived again")

    monkeypatch.setattr(sources, "python_code", no_derivation)
    monkeypatch.setattr(sources, "python_prose", no_derivation)
    assert sources._derived_corpus("code", roots, tmp_path / "memo") == first
    (tmp_path / "site/m0.py").write_text("X0 = 100\n")
    with pytest.raises(AssertionError, match="derived again"):
        sources._derived_corpus("code", roots, tmp_path / "memo")


def test_code_and_prose_load_as_byte_token_caches(tmp_path, monkeypatch):
    roots = python_tree(tmp_path, count=40)
    monkeypatch.setattr(sources, "python_roots", lambda: roots)
    for side in ("prose", "code"):
        cfg = DataConfig(source=side, tokenizer="bytes", cache_dir=str(tmp_path / "cache"))
        ds = load_dataset(cfg)
        assert ds.cache_path.name.startswith(f"{side}-bytes-")
        assert ds.n_train_docs > 0 and ds.n_val_docs > 0
        text = ds.tokenizer.decode(np.concatenate([ds.train, ds.val]).tolist())
        assert ("says hello" in text) == (side == "prose")
        assert bool(re.search(r"X\d+ = \d+", text)) == (side == "code")
        assert load_dataset(cfg).cache_path == ds.cache_path


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_config_takes_prose_and_code_to_pretrain_and_fine_tune(kind):
    init = "runs/parent" if kind == "finetune" else None
    for source in ("prose", "code"):
        validate(Config(data=DataConfig(source=source), stage=StageConfig(kind, init_from=init)))
    with pytest.raises(ConfigError, match=r"data\.source='code'"):
        validate(Config(data=DataConfig(source="code"), stage=StageConfig("sft", "runs/p")))


@pytest.mark.slow
def test_real_corpora_are_disjoint_and_the_code_holds_no_comment_or_docstring(tmp_path):
    prose, code = (read_corpus(side, [], tmp_path) for side in ("prose", "code"))
    assert not {d.name for d in prose.documents} & {d.name for d in code.documents}
    assert sum(len(d.text) for d in prose.documents) > 1_000_000
    for d in code.documents[::10]:
        tokens = tokenize.generate_tokens(io.StringIO(d.text).readline)
        assert not [t for t in tokens if t.type == tokenize.COMMENT], d.name
        strings = [n for n in ast.walk(ast.parse(d.text)) if isinstance(n, ast.Expr)
                   and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)]
        assert not strings, d.name
    assert [d.name for d in read_corpus("code", [], tmp_path).documents] == [
        d.name for d in code.documents]
