"""Corpus files → documents, and the deterministic train/validation split.

A document is one file (or one line of a .jsonl file) with a stable name; names drive the
split and, with the contents, the cache key, so the same corpus always yields the same data.
Besides the training corpus, a transfer corpus (read_transfer) is only ever evaluated on.
The prose and code corpora share out the files of the python corpus (see python_side).
"""

from __future__ import annotations

import ast
import fcntl
import glob
import hashlib
import itertools
import json
import logging
import os
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scaling.data import python_text
from scaling.data.errors import DataError
from scaling.data.python_text import python_code, python_prose
from scaling.data.text import read_json_lines, read_text

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".md", ".py", ".txt")
# Directory names never read from an installed tree: tests hold odd encodings and
# deliberately broken code.
TEST_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})
# ... nor from the standard library: installed packages are not the standard library, and
# pydoc_data holds the documentation's prose, which is data.transfer=prose.
STDLIB_EXCLUDED_DIRS = TEST_DIRS | {"site-packages", "dist-packages", "pydoc_data"}
SITE_DIRS = ("site-packages", "dist-packages")
# The documentation's prose that ships with CPython: a dict of topic name -> text.
PROSE_FILE = "pydoc_data/topics.py"
# data=prose and data=code share out the files of data=python: a file is prose iff the hash of
# its name salted with this falls below one half. The salt makes the rule independent of the
# validation split (hash_fraction(name) < data.val_fraction), so each half has its own.
SIDE_SALT = "prose-or-code:"


@dataclass(frozen=True)
class Document:
    """One unit of text, named by its path relative to the corpus root (`:line` for jsonl).

    The root is the stdlib directory, or the part of a data.paths entry before its first
    wildcard, so the name (which decides the split and enters the cache key) does not depend
    on where the corpus lives or on the working directory.
    """

    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Non-empty documents plus the files they came from (recorded in the cache's meta.json),
    and the files read but left out because they do not parse (prose and code only)."""

    documents: list[Document]
    files: list[str]
    skipped: list[str] = field(default_factory=list)


def read_corpus(source: str, paths: list[str], cache: Path | None = None,
                path: str | None = None, text_column: str = "text") -> Corpus:
    """Read `source` (stdlib | python | prose | code | files | hf); raise DataError if nothing
    non-empty is found. hf reads `text_column` of the dataset at `path` (scaling.data.user).

    prose and code derive their text from the Python sources, a minute's work: with `cache` (a
    directory) it is kept there for the next call, keyed by the sources and the code that
    derives them.
    """
    if source == "stdlib":
        corpus = _stdlib_corpus()
        where = f"the standard library at {sysconfig.get_paths()['stdlib']}"
    elif source in ("python", "prose", "code"):
        roots = python_roots()
        corpus = _python_corpus(roots) if source == "python" else _derived_corpus(
            source, roots, cache)
        where = "the standard library and site-packages directories of this interpreter"
    elif source == "files":
        corpus = _files_corpus(paths)
        where = f"data.paths={paths}"
    elif source == "hf":
        from scaling.data.user import read_user_corpus  # it reads files as this module names them

        corpus = read_user_corpus(str(path), text_column)
        where = f"data.path={path} (data.text_column={text_column})"
    else:
        raise DataError(f"data.source={source!r} is unknown: expected stdlib, python, prose, "
                        "code, files or hf.")
    if not corpus.documents:
        raise DataError(f"the corpus is empty: {len(corpus.files)} files in {where}, no text.")
    return corpus


def read_transfer(transfer: str, paths: list[str]) -> Corpus:
    """The transfer corpus of `data.transfer` (prose | files), evaluated on, never trained on."""
    if transfer == "prose":
        corpus = _prose_corpus()
    elif transfer == "files":
        corpus = _files_corpus(paths, key="data.transfer_paths")
    else:
        raise DataError(f"data.transfer={transfer!r} is unknown: expected prose or files.")
    if not corpus.documents:
        raise DataError(f"the transfer corpus of data.transfer={transfer} is empty: no text.")
    return corpus


def _stdlib_corpus() -> Corpus:
    """The running interpreter's standard library: *.py outside tests, valid UTF-8 only."""
    root = Path(sysconfig.get_paths()["stdlib"])
    names = _python_files(root, STDLIB_EXCLUDED_DIRS)
    documents, files = [], []
    for name in names:
        try:
            text = (root / name).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(name)
        if text:
            documents.append(Document(name, text))
    return Corpus(documents, files)


def _python_files(root: Path, excluded: frozenset[str]) -> list[str]:
    """Every *.py below `root` outside directories named in `excluded`, relative, sorted."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        rel = Path(dirpath).relative_to(root)
        names += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(names)


def python_roots() -> list[tuple[str, Path]]:
    """(kind, directory) of every tree `data.source=python` reads, in import order.

    The standard library ("stdlib"), then each site-packages directory ("site"): this
    interpreter's purelib and platlib and any other site-packages or dist-packages on
    sys.path. A directory reachable under two spellings (a symlink) counts once.
    """
    paths = sysconfig.get_paths()
    site = [p for p in sys.path if p and Path(p).name in SITE_DIRS]
    site += [paths["purelib"], paths["platlib"]]
    roots, seen = [], set()
    for kind, directory in [("stdlib", paths["stdlib"]), *(("site", p) for p in site)]:
        path = Path(directory)
        if path.is_dir() and path.resolve() not in seen:
            seen.add(path.resolve())
            roots.append((kind, path))
    return roots


def python_files(roots: list[tuple[str, Path]]) -> dict[str, Path]:
    """Document name -> file for `data.source=python`: `<kind>/<path below its root>`.

    Test directories and __pycache__ are left out (in the standard library also what
    `stdlib` leaves out). Where two site roots hold the same path, the first on the import
    path wins: the other is shadowed, so not importable.
    """
    files: dict[str, Path] = {}
    for kind, root in roots:
        excluded = STDLIB_EXCLUDED_DIRS if kind == "stdlib" else TEST_DIRS
        for name in _python_files(root, excluded):
            files.setdefault(f"{kind}/{name}", root / name)
    return dict(sorted(files.items()))


def _python_corpus(roots: list[tuple[str, Path]]) -> Corpus:
    """The files of _python_texts as they are."""
    texts = _python_texts(roots)
    return Corpus([Document(name, text) for name, text in texts.items() if text], list(texts))


def _python_texts(roots: list[tuple[str, Path]]) -> dict[str, str]:
    """Name -> text of every importable *.py of `roots` (see python_files), valid UTF-8 only,
    each distinct text once (named by its first name in sorted order), so a package installed
    twice, or a file vendored verbatim, cannot sit in both splits."""
    texts, seen = {}, set()
    for name, path in python_files(roots).items():
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a dangling link, an unreadable or non-UTF-8 file
        digest = hashlib.sha256(data).digest()
        if digest not in seen:
            seen.add(digest)
            texts[name] = text
    return texts


def python_side(name: str) -> str:
    """"prose" or "code": the corpus a file of data=python goes to, by its name (SIDE_SALT)."""
    return "prose" if hash_fraction(SIDE_SALT + name) < 0.5 else "code"


def _derived_corpus(side: str, roots: list[tuple[str, Path]], cache: Path | None) -> Corpus:
    """data=prose or data=code: the files of `roots` on `side` (python_side), each as
    python_prose or python_code makes it; prose also has the documentation topics of
    _prose_corpus. Files that do not parse are skipped (Corpus.skipped)."""
    derived, skipped = _derive(_python_texts(roots), cache)
    names = [name for name in derived if python_side(name) == side]
    documents = [Document(name, derived[name]) for name in names if derived[name]]
    skipped = [name for name in skipped if python_side(name) == side]
    if side == "code":
        return Corpus(documents, names, skipped)
    topics = _prose_corpus()
    return Corpus(topics.documents + documents, topics.files + names, skipped)


def _derive(texts: dict[str, str], cache: Path | None) -> tuple[dict[str, str], list[str]]:
    """Name -> prose or code (as python_side says) of each text that parses, and the names of
    those that do not; kept in `cache`, keyed by the texts, SIDE_SALT, the code of python_text
    and Python's version (its ast and tokenize)."""
    key = hashlib.sha256(Path(python_text.__file__).read_bytes())
    for part in (SIDE_SALT, sys.version, *itertools.chain.from_iterable(texts.items())):
        data = part.encode("utf-8")
        key.update(len(data).to_bytes(8, "little") + data)
    if cache is None:
        return _derive_all(texts)
    kept = cache / f"python-text-{key.hexdigest()[:16]}.json"
    cache.mkdir(parents=True, exist_ok=True)
    # One process derives, the others of a sweep wait for it and read its file
    with open(cache / f"{kept.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        if not kept.is_file():
            log.info("deriving prose and code from %d Python files into %s (once, about a "
                     "minute)", len(texts), kept)
            derived, skipped = _derive_all(texts)
            partial = kept.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps({"derived": derived, "skipped": skipped}), "utf-8")
            partial.replace(kept)  # whole or absent
            return derived, skipped
    memo = json.loads(kept.read_text("utf-8"))
    return memo["derived"], memo["skipped"]


def _derive_all(texts: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    derived, skipped = {}, []
    for name, text in texts.items():
        derive = python_prose if python_side(name) == "prose" else python_code
        try:
            derived[name] = derive(text)
        except (SyntaxError, ValueError, RecursionError, tokenize.TokenError):
            skipped.append(name)
    return derived, skipped


def _prose_corpus() -> Corpus:
    """The documentation's prose shipped with CPython, one document per topic.

    Read with `ast` from pydoc_data/topics.py, never imported; named `<file>:<topic>`.
    """
    path = Path(sysconfig.get_paths()["stdlib"]) / PROSE_FILE
    if not path.is_file():
        raise DataError(
            f"data.transfer=prose reads the Python documentation's prose from {PROSE_FILE} in "
            f"the standard library, and this interpreter has no {path}; use data.transfer=files "
            "with data.transfer_paths=[...] instead"
        )
    values = [
        node.value
        for node in ast.parse(path.read_bytes(), filename=str(path)).body
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["topics"]
    ]
    try:
        topics = ast.literal_eval(values[-1]) if values else None
    except ValueError:
        topics = None
    if not isinstance(topics, dict):
        raise DataError(f"{path} has no literal dict `topics`; use data.transfer=files instead")
    documents = [
        Document(f"{PROSE_FILE}:{name}", text)
        for name, text in sorted(topics.items())
        if isinstance(text, str) and text.strip()
    ]
    return Corpus(documents, [PROSE_FILE])


def _files_corpus(patterns: list[str], key: str = "data.paths") -> Corpus:
    """Documents from the files of globs (see file_names); `key` names their config field."""
    names = file_names(patterns, key)
    documents = [d for path, name in names.items() for d in _read_file(path, name) if d.text]
    return Corpus(documents, list(names))


def file_names(
    patterns: list[str], key: str, suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES
) -> dict[str, str]:
    """File path -> name (relative to its pattern's root) for the files of `patterns` that end
    in one of `suffixes`, in order; a file matched by several patterns is named by the first.

    Raises DataError naming `key` (the config field) for a pattern that finds nothing usable.
    """
    names: dict[str, str] = {}
    for pattern in patterns:
        root = _root(pattern)
        for path in _expand(pattern, key, suffixes):
            names.setdefault(path, Path(os.path.relpath(path, root)).as_posix())
    return names


def _root(pattern: str) -> str:
    """The directory that names are relative to: `pattern` up to its first wildcard."""
    expanded = os.path.expanduser(pattern)
    if os.path.isdir(expanded):
        return expanded
    parts = Path(expanded).parts[:-1]
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    return str(Path(*fixed)) if fixed else "."


def _expand(pattern: str, key: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files for one entry of data.paths, sorted.

    A literal file must exist and have one of `suffixes`. A glob (or a directory, read as
    `dir/**/*`) keeps the supported files it matches and skips the rest, so a mixed folder
    works; it is an error only if it matches nothing or nothing supported.
    """
    expanded = os.path.expanduser(pattern)
    if os.path.isdir(expanded):
        expanded = os.path.join(expanded, "**", "*")
    elif not glob.has_magic(expanded):
        if not os.path.isfile(expanded):
            raise DataError(f"{key}: no such file or directory: {pattern}")
        if not expanded.lower().endswith(suffixes):
            raise DataError(
                f"{key}: {pattern} has an unsupported type; supported: "
                f"{', '.join(suffixes)}"
            )
        return [os.path.normpath(expanded)]
    matches = [m for m in glob.glob(expanded, recursive=True) if os.path.isfile(m)]
    if not matches:
        raise DataError(f"{key}: {pattern} matches no files")
    supported = [m for m in matches if m.lower().endswith(suffixes)]
    if not supported:
        raise DataError(
            f"{key}: {pattern} matches {len(matches)} files but none of a supported type "
            f"({', '.join(suffixes)}), e.g. {sorted(matches)[0]}"
        )
    return sorted(os.path.normpath(m) for m in supported)


def _read_file(path: str, name: str) -> Iterator[Document]:
    """A text file is one document; a .jsonl file is one document per line's "text" field."""
    if not path.lower().endswith(".jsonl"):
        yield Document(name, read_text(path))
        return
    for lineno, record in read_json_lines(path):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f'{path}:{lineno}: expected a JSON object with a string "text" field')
        yield Document(f"{name}:{lineno}", record["text"])


@dataclass(frozen=True)
class Split:
    """Train and validation documents, and which rule produced them (see split_documents)."""

    train: list[Document]
    val: list[Document]
    rule: str


def split_documents(documents: list[Document], val_fraction: float) -> Split:
    """Split deterministically into train and validation documents.

    Rule "by_document": a document is held out iff the first 8 bytes of sha256(name), read as a
    fraction of 2**64, fall below `val_fraction` — independent of the other documents, so
    adding a file never moves another. If that leaves either side empty (e.g. a single file),
    rule "by_text_tail": every document's last `val_fraction` of text is held out, cut at the
    line boundary nearest to that point when one leaves both parts non-empty.
    """
    held_out = [hash_fraction(d.name) < val_fraction for d in documents]
    if 0 < sum(held_out) < len(documents):
        return Split(
            train=[d for d, h in zip(documents, held_out, strict=True) if not h],
            val=[d for d, h in zip(documents, held_out, strict=True) if h],
            rule="by_document",
        )
    train, val = [], []
    for d in documents:
        cut = _cut_point(d.text, 1.0 - val_fraction)
        train += [Document(d.name, d.text[:cut])] if cut > 0 else []
        val += [Document(d.name, d.text[cut:])] if cut < len(d.text) else []
    return Split(train, val, "by_text_tail")


def hash_fraction(name: str) -> float:
    """The first 8 bytes of sha256(name) as a fraction of 2**64: a name's place in a split."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2**64


def _cut_point(text: str, fraction: float) -> int:
    """Where to split `text` so about `fraction` of it comes first, preferring a line start."""
    cut = min(max(round(len(text) * fraction), 1), len(text) - 1) if len(text) > 1 else len(text)
    before = text.rfind("\n", 0, cut) + 1
    after = text.find("\n", cut) + 1
    candidates = [p for p in (before, after) if 0 < p < len(text)]
    return min(candidates, key=lambda p: abs(p - cut)) if candidates else cut
