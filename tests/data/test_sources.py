"""Corpus discovery, jsonl parsing, the errors for bad paths, and the deterministic split."""

import json
import sys
from pathlib import Path

import pytest

from scaling.data import DataError, sources
from scaling.data.sources import (
    Document,
    python_files,
    python_roots,
    read_corpus,
    read_transfer,
    split_documents,
)
from tests.data.conftest import JSONL_TEXTS, SPLITLINES_ONLY, corpus_texts


def test_files_corpus_reads_every_supported_file_once_in_sorted_order(corpus):
    c = read_corpus("files", ["corpus/**/*", "corpus/a.py"])
    assert c.files == [
        "corpus/a.py",
        "corpus/b.py",
        "corpus/ja.txt",
        "corpus/lines.jsonl",
        "corpus/notes.md",
        "corpus/sub/c.txt",
    ]
    assert {d.name: d.text for d in c.documents} == corpus


def test_names_are_relative_to_the_pattern_root(corpus):
    by_dir = read_corpus("files", ["corpus"]).documents
    assert [d.name for d in by_dir] == sorted(corpus)
    assert [d.name for d in read_corpus("files", ["corpus/sub/c.txt"]).documents] == ["c.txt"]
    nested = read_corpus("files", ["corpus/*/*.txt", "corpus/**/*.txt"]).documents
    assert [d.name for d in nested] == ["sub/c.txt", "ja.txt"]


def test_jsonl_line_is_a_document_and_blank_lines_are_skipped(corpus):
    Path("extra.jsonl").write_text('{"text": "一行目"}\n\n{"text": "second", "x": 1}\n', "utf-8")
    c = read_corpus("files", ["extra.jsonl"])
    assert [(d.name, d.text) for d in c.documents] == [
        ("extra.jsonl:1", "一行目"),
        ("extra.jsonl:3", "second"),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [("{not json", "malformed JSON"), ('{"body": "x"}', '"text" field'), ("[1, 2]", '"text"')],
)
def test_bad_jsonl_line_names_file_and_line(corpus, line, reason):
    Path("bad.jsonl").write_text(json.dumps({"text": "ok"}) + "\n" + line + "\n", "utf-8")
    with pytest.raises(DataError, match=rf"bad\.jsonl:2: .*{reason}"):
        read_corpus("files", ["bad.jsonl"])


@pytest.mark.parametrize("sep", SPLITLINES_ONLY, ids=ascii)
def test_jsonl_strings_keep_the_characters_splitlines_breaks_at(corpus, sep):
    texts = [f"before{sep}after", f"{sep}", f"a{sep}{sep}b"]
    # Written raw: json.dumps escapes the C0 ones (\v, \f, \x1c-\x1e), but corpora hold them raw.
    Path("sep.jsonl").write_text("".join(f'{{"text": "{t}"}}\n' for t in texts), "utf-8")
    c = read_corpus("files", ["sep.jsonl"])
    assert [(d.name, d.text) for d in c.documents] == [
        (f"sep.jsonl:{i}", t) for i, t in enumerate(texts, start=1)
    ]


def test_crlf_and_bom_files_read_as_lf_files(corpus):
    jsonl = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in JSONL_TEXTS)
    plain = corpus_texts()["notes.md"]
    for name, head, newline in [("lf", "", "\n"), ("crlf", "", "\r\n"), ("bom", "\ufeff", "\r\n")]:
        Path(name).mkdir()
        for suffix, text in [("jsonl", jsonl), ("md", plain)]:
            Path(name, f"x.{suffix}").write_bytes((head + text.replace("\n", newline)).encode())
    lf, crlf, bom = ([(d.name, d.text) for d in read_corpus("files", [d]).documents]
                     for d in ("lf", "crlf", "bom"))
    assert crlf == bom == lf
    records = [(f"x.jsonl:{i}", t) for i, t in enumerate(JSONL_TEXTS, start=1)]
    assert lf == [*records, ("x.md", plain)]


def test_malformed_jsonl_line_after_a_line_separator_names_its_physical_line(corpus):
    first = json.dumps({"text": "one\u2028two\u2029three\x85four"}, ensure_ascii=False)
    Path("ls.jsonl").write_text(f'{first}\n{{"text": "ok"}}\n{{oops\n', "utf-8")
    with pytest.raises(DataError, match=r"^ls\.jsonl:3: malformed JSON"):
        read_corpus("files", ["ls.jsonl"])


def test_invalid_utf8_in_jsonl_names_file_and_line(corpus):
    good = '{"text": "\u2028"}\n{"text": "ok"}\n'.encode()
    Path("bad.jsonl").write_bytes(good + b'{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"^bad\.jsonl:3: not valid UTF-8"):
        read_corpus("files", ["bad.jsonl"])


def test_missing_path_is_named(corpus):
    with pytest.raises(DataError, match=r"no such file or directory: corpus/missing\.txt"):
        read_corpus("files", ["corpus/a.py", "corpus/missing.txt"])


def test_glob_matching_nothing_is_named(corpus):
    with pytest.raises(DataError, match=r"nowhere/\*\*/\*.txt matches no files"):
        read_corpus("files", ["nowhere/**/*.txt"])


def test_unsupported_types_fail_when_named_and_are_skipped_by_globs(corpus):
    Path("corpus/image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"corpus/image.png has an unsupported type.*\.txt"):
        read_corpus("files", ["corpus/image.png"])
    assert "corpus/image.png" not in read_corpus("files", ["corpus/**/*"]).files
    with pytest.raises(DataError, match=r"corpus/\*.png matches 1 files but none of a supported"):
        read_corpus("files", ["corpus/*.png"])


def test_directory_is_read_recursively(corpus):
    assert read_corpus("files", ["corpus"]).files == read_corpus("files", ["corpus/**/*"]).files


def test_non_utf8_file_is_named(corpus):
    Path("latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:1: not valid UTF-8"):
        read_corpus("files", ["latin1.txt"])


def test_empty_corpus(corpus):
    Path("empty").mkdir()
    Path("empty/a.txt").write_text("")
    Path("empty/b.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(DataError, match="corpus is empty: 2 files"):
        read_corpus("files", ["empty/*"])


def test_split_by_document_is_deterministic_and_independent_of_other_documents(corpus):
    docs = read_corpus("files", ["corpus/**/*"]).documents
    split = split_documents(docs, 0.3)
    assert split.rule == "by_document"
    assert split == split_documents(docs, 0.3)
    assert sorted(d.name for d in split.train + split.val) == sorted(d.name for d in docs)
    val_names = {d.name for d in split.val}
    assert {d.name for d in split_documents(docs[::-1], 0.3).val} == val_names
    # Removing a training document never moves another document across the split.
    fewer = split_documents([d for d in docs if d is not split.train[0]], 0.3)
    assert {d.name for d in fewer.val} == val_names


def test_single_document_falls_back_to_holding_out_its_tail():
    text = "".join(f"line {i}\n" for i in range(100))
    split = split_documents([Document("only.txt", text)], 0.1)
    assert split.rule == "by_text_tail"
    (head,), (tail,) = split.train, split.val
    assert head.text + tail.text == text
    assert head.text.endswith("\n")
    assert 0.05 < len(tail.text) / len(text) < 0.15


def test_one_line_document_is_cut_mid_line():
    split = split_documents([Document("x.txt", "abcdefghij")], 0.2)
    assert [d.text for d in split.train] == ["abcdefgh"]
    assert [d.text for d in split.val] == ["ij"]


def test_stdlib_listing_has_no_tests_and_splits_deterministically():
    c = read_corpus("stdlib", [])
    assert len(c.files) > 100
    assert c.files == sorted(c.files)
    assert all(f.endswith(".py") for f in c.files)
    excluded = {"test", "tests", "idle_test", "site-packages", "dist-packages", "pydoc_data"}
    assert not [f for f in c.files if excluded & set(f.split("/")[:-1])]
    assert "json/__init__.py" in c.files
    split = split_documents(c.documents, 0.05)
    assert split.rule == "by_document"
    assert 0.02 < len(split.val) / len(c.documents) < 0.1
    assert [d.name for d in split.val] == [
        d.name for d in split_documents(read_corpus("stdlib", []).documents, 0.05).val
    ]


def test_prose_is_one_document_per_documentation_topic():
    c = read_transfer("prose", [])
    names = [d.name for d in c.documents]
    assert len(names) > 50 and names == sorted(names)
    assert "pydoc_data/topics.py:assert" in names
    assert all(d.text.strip() for d in c.documents)
    assert "assert" in c.documents[names.index("pydoc_data/topics.py:assert")].text
    assert sum(len(d.text) for d in c.documents) > 100_000


def test_missing_prose_file_is_named_with_the_alternative(monkeypatch):
    monkeypatch.setattr(sources, "PROSE_FILE", "pydoc_data/no_such_topics.py")
    with pytest.raises(DataError, match=r"no_such_topics\.py.*data\.transfer=files"):
        read_transfer("prose", [])


def test_transfer_files_errors_name_their_own_key(corpus):
    with pytest.raises(DataError, match=r"data\.transfer_paths: no such file"):
        read_transfer("files", ["nope.txt"])
    c = read_transfer("files", ["corpus/notes.md"])
    assert [d.name for d in c.documents] == ["notes.md"]


def test_python_listing_has_stdlib_and_installed_packages_without_tests():
    files = python_files(python_roots())
    assert "stdlib/json/__init__.py" in files
    assert "site/numpy/__init__.py" in files  # a dependency, so installed wherever we run
    assert {name.split("/")[0] for name in files} == {"stdlib", "site"}
    skipped = {"test", "tests", "idle_test", "__pycache__", "pydoc_data", "site-packages"}
    assert not [n for n in files if skipped & set(n.split("/")[1:-1])]
    assert not [n for n in files if sys.prefix in n or sys.base_prefix in n]


def test_python_corpus_drops_shadowed_and_duplicate_files(tmp_path):
    def tree(root: str, files: dict[str, str]) -> Path:
        for name, text in files.items():
            (tmp_path / root / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / root / name).write_text(text)
        return tmp_path / root

    lib = tree("lib", {"os.py": "import sys\n", "pydoc_data/topics.py": "topics = {}\n",
                       "test/test_os.py": "x = 1\n"})
    first = tree("a", {"pkg/x.py": "a = 1\n", "pkg/tests/t.py": "t = 1\n",
                       "pkg/__pycache__/x.py": "c = 1\n", "pkg/data.txt": "not python\n"})
    second = tree("b", {"pkg/x.py": "b = 1\n", "other/y.py": "a = 1\n", "other/z.py": "z = 1\n"})
    roots = [("stdlib", lib), ("site", first), ("site", second)]
    corpus = sources._python_corpus(roots)
    texts = {d.name: d.text for d in corpus.documents}
    # b/pkg/x.py is shadowed by a/pkg/x.py; b/other/y.py repeats a/pkg/x.py's text, and of
    # the two names the first in sorted order stays.
    assert texts == {"site/other/y.py": "a = 1\n", "site/other/z.py": "z = 1\n",
                     "stdlib/os.py": "import sys\n"}
    assert corpus.files == sorted(texts)
