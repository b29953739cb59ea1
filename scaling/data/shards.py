"""Documents → token shards cached on disk: built once per corpus and settings, then memory-mapped.

Layout of `<cache root>/<name>/`: train.npy and val.npy (each document followed by eos_id),
tokenizer.json (BPE only) and meta.json. The name ends in a hash of every document's name and
text, the split and tokenizer settings and FORMAT_VERSION, so any change builds a new cache.
A cache is built in a temporary directory and renamed into place under a file lock: parallel
runs of a sweep build it once, and a killed build never leaves a directory a later run trusts.

A fine-tuning corpus can be encoded with a parent run's tokenizer instead of one trained on
it (load_dataset's `tokenizer_from`): its name then says `<source>-inherited-<hash>`, the hash
keyed by the parent cache's name instead of the tokenizer settings, and the cache holds a copy
of the parent's tokenizer.json, so it opens on its own.

A transfer corpus (data.transfer) is encoded with the dataset's own tokenizer, never one
trained on it, into `<cache root>/transfer-<kind>-<hash>/` (tokens.npy, meta.json), keyed by
its documents and the dataset's cache name, and built the same way.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tokenizers

from scaling.config import DataConfig
from scaling.console import listing
from scaling.data.errors import DataError
from scaling.data.sources import Corpus, Document, read_corpus, read_transfer, split_documents
from scaling.data.tokenizer import (
    BPETokenizer,
    BytesTokenizer,
    Tokenizer,
    token_dtype,
    train_bpe,
)

# Bump when the layout or the meaning of the shards changes, so old caches are not reused.
FORMAT_VERSION = 1
# In the name of a cache encoded with another cache's tokenizer (load_dataset's tokenizer_from).
INHERITED = "-inherited-"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A tokenized corpus: memory-mapped splits (documents separated by eos_id) and tokenizer."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int  # the tokenizer's, unpadded
    eos_id: int
    tokenizer: Tokenizer
    cache_path: Path
    n_train_docs: int
    n_val_docs: int
    transfer: np.ndarray | None = None  # the transfer corpus (data.transfer), memory-mapped


def load_dataset(cfg: DataConfig, tokenizer_from: Dataset | None = None) -> Dataset:
    """The corpus of `cfg` (and its transfer corpus, if any), tokenized; builds the caches on
    first call and reuses them afterwards.

    With `tokenizer_from` (a parent run's dataset), both splits are encoded with its tokenizer
    and no tokenizer is trained: cfg.tokenizer and cfg.vocab_size are ignored, and the result's
    vocab_size and eos_id are the parent's. Raises DataError for an unreadable corpus, or one
    too small to split.
    """
    corpus = read_corpus(cfg.source, cfg.paths, cache_root(cfg.cache_dir), cfg.path,
                         cfg.text_column)
    inherited = tokenizer_from.cache_path.name if tokenizer_from is not None else None
    path = cache_root(cfg.cache_dir) / _cache_name(cfg, corpus, inherited)
    if not (path / "meta.json").exists():
        what = f"{len(corpus.documents)} documents" + (
            f" with the tokenizer of {tokenizer_from.cache_path.name}" if tokenizer_from else "")
        _build_locked(path, what, lambda tmp: _write(tmp, cfg, corpus, tokenizer_from))
    dataset = _open(path)
    if cfg.transfer == "none":
        return dataset
    return replace(dataset, transfer=_load_transfer(cfg, dataset))


def cache_root(cache_dir: str | None) -> Path:
    """`data.cache_dir` if set, else $SCALING_CACHE, else ~/.cache/scaling."""
    root = cache_dir or os.environ.get("SCALING_CACHE") or "~/.cache/scaling"
    return Path(root).expanduser()


def open_dataset(cfg: DataConfig, cache_name: str) -> Dataset:
    """A parent run's dataset by the cache name its summary recorded (`corpus_cache`), without
    its transfer corpus; `cfg` is the parent's data config.

    Opens `<cache root>/<cache_name>` if it is there; else rebuilds it with load_dataset(cfg).
    Raises DataError naming both names when the rebuilt cache has another name (the corpus or
    its settings changed since the parent ran), or when a missing cache was encoded with an
    earlier run's tokenizer, which `cfg` does not name.
    """
    path = cache_root(cfg.cache_dir) / cache_name
    if (path / "meta.json").exists():
        return _open(path)
    if INHERITED in cache_name:
        raise DataError(
            f"the parent run's data cache {cache_name} is not in {path.parent}, and it cannot "
            "be rebuilt from its data config: it was encoded with an earlier run's tokenizer"
        )
    rebuilt = load_dataset(replace(cfg, transfer="none"))
    if rebuilt.cache_path.name != cache_name:
        raise DataError(
            f"the parent run's data cache {cache_name} is not in {path.parent}, and its data "
            f"config now builds {rebuilt.cache_path.name}: its corpus or settings changed"
        )
    return rebuilt


def _settings(cfg: DataConfig, tokenizer_from: str | None = None) -> dict:
    """Everything besides the documents that determines the shards' contents; `tokenizer_from`
    names the cache whose tokenizer encodes them, if not their own."""
    if tokenizer_from is not None:
        tokenizer = {"tokenizer_from": tokenizer_from}
    else:
        vocab = cfg.vocab_size if cfg.tokenizer == "bpe" else BytesTokenizer.vocab_size
        tokenizer = {"tokenizer": cfg.tokenizer, "vocab_size": vocab}
    return {"format": FORMAT_VERSION, **tokenizer, "val_fraction": cfg.val_fraction}


def _cache_name(cfg: DataConfig, corpus: Corpus, tokenizer_from: str | None = None) -> str:
    """A readable prefix (source, tokenizer) and a hash of the documents and settings;
    `tokenizer_from` names the cache whose tokenizer encodes them, if not their own."""
    digest = _digest(_settings(cfg, tokenizer_from), corpus.documents)
    if tokenizer_from is not None:
        return f"{cfg.source}{INHERITED}{digest}"
    vocab = str(cfg.vocab_size) if cfg.tokenizer == "bpe" else ""
    return f"{cfg.source}-{cfg.tokenizer}{vocab}-{digest}"


def _digest(settings: dict, documents: Sequence[Document]) -> str:
    """16 hex digits of a hash of `settings` and every document's name and text."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for d in documents:
        for part in (d.name, d.text):
            data = part.encode("utf-8")
            # Length-prefixed, so the boundary between name and text is unambiguous.
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()[:16]


def _build_locked(path: Path, what: str, write: Callable[[Path], None]) -> None:
    """Build the cache at `path` with `write(tmp)` unless another process does so first; the
    rename commits it. `what` says what is built, for the log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        if (path / "meta.json").exists():
            return  # built by another process while this one waited
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            shutil.rmtree(stale)  # left by a killed build; safe, we hold the lock
        if path.exists():
            shutil.rmtree(path)  # no meta.json: not a finished cache
        log.info("building the data cache %s from %s", path, what)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()  # unlike tempfile.mkdtemp, honours the umask: a shared cache stays readable
        try:
            write(tmp)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _write(out: Path, cfg: DataConfig, corpus: Corpus, tokenizer_from: Dataset | None) -> None:
    """Split, train the tokenizer on the train split only (or take `tokenizer_from`'s), encode
    both splits; meta.json last."""
    split = split_documents(corpus.documents, cfg.val_fraction)
    if not split.train or not split.val:
        raise DataError(
            f"cannot split {len(corpus.documents)} documents with data.val_fraction="
            f"{cfg.val_fraction}: the {'train' if not split.train else 'validation'} split is empty"
        )
    start = time.perf_counter()
    tokenizer, tokenizer_meta = _tokenizer(out, cfg, split.train, tokenizer_from)
    trained = time.perf_counter()
    train = tokenizer.encode_documents(split.train)
    val = tokenizer.encode_documents(split.val)
    np.save(out / "train.npy", train)
    np.save(out / "val.npy", val)
    meta = {
        "format": FORMAT_VERSION,
        "source": _source_meta(cfg.source, cfg.paths, corpus),
        "tokenizer": tokenizer_meta,
        "split": {"val_fraction": cfg.val_fraction, "rule": split.rule},
        "documents": {"train": len(split.train), "val": len(split.val)},
        "tokens": {"train": len(train), "val": len(val)},
        "dtype": str(train.dtype),
        "build_seconds": {
            "tokenizer": round(trained - start, 3),
            "encode": round(time.perf_counter() - trained, 3),
        },
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), "utf-8")


def _tokenizer(
    out: Path, cfg: DataConfig, train: list[Document], tokenizer_from: Dataset | None
) -> tuple[Tokenizer, dict]:
    """The tokenizer of the cache being built in `out`, saved there if BPE, and its meta.json
    entry: `tokenizer_from`'s (its file copied), else per cfg, trained on `train` only."""
    if tokenizer_from is not None:
        parent = tokenizer_from.cache_path
        if (parent / "tokenizer.json").exists():
            shutil.copyfile(parent / "tokenizer.json", out / "tokenizer.json")
        return tokenizer_from.tokenizer, {**_read_meta(parent)["tokenizer"], "from": parent.name}
    tokenizer: Tokenizer
    if cfg.tokenizer == "bpe":
        tokenizer = train_bpe(train, cfg.vocab_size)
        tokenizer.save(out / "tokenizer.json")
    else:
        tokenizer = BytesTokenizer()
    return tokenizer, {
        "kind": cfg.tokenizer,
        "requested_vocab_size": _settings(cfg)["vocab_size"],
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokenizers_version": tokenizers.__version__,
    }


def tokenizer_dataset(tokenizer: Tokenizer, tokenizer_json: Path,
                      cache_dir: str | None) -> Dataset:
    """A cache of no documents that carries a tokenizer made elsewhere (a Hugging Face
    checkpoint's, read from `tokenizer_json`), for load_dataset's `tokenizer_from`:
    `<cache root>/tokenizer-<kind>-<hash of the file>/`, built once."""
    kind = "bytes" if isinstance(tokenizer, BytesTokenizer) else "bpe"
    digest = hashlib.sha256(tokenizer_json.read_bytes()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"tokenizer-{kind}{tokenizer.vocab_size}-{digest}"

    def write(out: Path) -> None:
        if kind == "bpe":
            shutil.copyfile(tokenizer_json, out / "tokenizer.json")
        empty = np.zeros(0, token_dtype(tokenizer.vocab_size))
        np.save(out / "train.npy", empty)
        np.save(out / "val.npy", empty)
        meta = {"format": FORMAT_VERSION,
                "source": {"kind": "tokenizer", "paths": [str(tokenizer_json)], "files": []},
                "tokenizer": {"kind": kind, "requested_vocab_size": tokenizer.vocab_size,
                              "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
                              "tokenizers_version": tokenizers.__version__},
                "split": {"val_fraction": 0.0, "rule": "none"},
                "documents": {"train": 0, "val": 0}, "tokens": {"train": 0, "val": 0}}
        (out / "meta.json").write_text(json.dumps(meta, indent=1), "utf-8")

    if not (path / "meta.json").exists():
        _build_locked(path, f"the tokenizer of {tokenizer_json}", write)
    return _open(path)


def _load_transfer(cfg: DataConfig, dataset: Dataset) -> np.ndarray:
    """The transfer corpus encoded with `dataset`'s tokenizer, each document followed by eos."""
    corpus = read_transfer(cfg.transfer, cfg.transfer_paths)
    settings = {"format": FORMAT_VERSION, "dataset": dataset.cache_path.name}
    name = f"transfer-{cfg.transfer}-{_digest(settings, corpus.documents)}"
    path = dataset.cache_path.parent / name
    if not (path / "meta.json").exists():
        _build_locked(path, f"{len(corpus.documents)} transfer documents",
                      lambda tmp: _write_transfer(tmp, cfg, corpus, dataset))
    return np.load(path / "tokens.npy", mmap_mode="r")


def _source_meta(kind: str, paths: list[str], corpus: Corpus) -> dict:
    """Where a cached corpus came from, for its meta.json."""
    return {"kind": kind, "paths": list(paths), "python": sys.version.split()[0],
            "files": corpus.files}


def _write_transfer(out: Path, cfg: DataConfig, corpus: Corpus, dataset: Dataset) -> None:
    """Encode the transfer documents with the dataset's tokenizer; meta.json last."""
    start = time.perf_counter()
    tokens = dataset.tokenizer.encode_documents(corpus.documents)
    np.save(out / "tokens.npy", tokens)
    meta = {
        "format": FORMAT_VERSION,
        "source": _source_meta(cfg.transfer, cfg.transfer_paths, corpus),
        "dataset": dataset.cache_path.name,  # whose tokenizer encoded it
        "documents": len(corpus.documents),
        "tokens": len(tokens),
        "dtype": str(tokens.dtype),
        "build_seconds": {"encode": round(time.perf_counter() - start, 3)},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), "utf-8")


def _open(path: Path) -> Dataset:
    """A finished cache as a Dataset with memory-mapped splits."""
    meta = _read_meta(path)
    tokenizer: Tokenizer = (
        BPETokenizer.load(path / "tokenizer.json")
        if meta["tokenizer"]["kind"] == "bpe"
        else BytesTokenizer()
    )
    return Dataset(
        train=np.load(path / "train.npy", mmap_mode="r"),
        val=np.load(path / "val.npy", mmap_mode="r"),
        vocab_size=tokenizer.vocab_size,
        eos_id=tokenizer.eos_id,
        tokenizer=tokenizer,
        cache_path=path,
        n_train_docs=meta["documents"]["train"],
        n_val_docs=meta["documents"]["val"],
    )


def describe(dataset: Dataset) -> str:
    """The corpus in one line, for a run's start: the source and its files, the tokens and
    documents of each split, the rule that split them, and the tokenizer."""
    meta = _read_meta(dataset.cache_path)
    source, tokenizer, split = meta["source"], meta["tokenizer"], meta["split"]
    files = source["files"]
    fraction = split["val_fraction"]
    rule = {"by_document": f"split by document (a name whose hash falls below "
                           f"data.val_fraction={fraction} is held out)",
            "by_text_tail": f"split by text (the last {fraction:.0%} of every document held "
                            "out: too few documents to hold whole ones out)"}
    if "from" in tokenizer:
        words = f"the parent's tokenizer ({dataset.vocab_size:,} tokens, {tokenizer['from']})"
    elif tokenizer["kind"] == "bpe":
        words = (f"BPE vocabulary {dataset.vocab_size:,}"
                 + (f" (data.vocab_size={tokenizer['requested_vocab_size']:,} asked)"
                    if dataset.vocab_size < tokenizer["requested_vocab_size"] else ""))
    else:
        words = f"bytes ({dataset.vocab_size} tokens)"
    return (f"data={source['kind']}: {len(files):,} files ({listing(files, 3)}); "
            f"{len(dataset.train):,} train / {len(dataset.val):,} validation tokens "
            f"({dataset.n_train_docs:,} / {dataset.n_val_docs:,} documents), "
            f"{rule.get(split['rule'], split['rule'])}; {words}")


def vocabulary_shortfall(dataset: Dataset) -> tuple[int, int] | None:
    """(learned, asked) where the BPE learned fewer tokens than data.vocab_size asked for (a
    small corpus has too few pairs to merge), else None."""
    tokenizer = _read_meta(dataset.cache_path)["tokenizer"]
    if tokenizer["kind"] != "bpe" or "from" in tokenizer:
        return None
    asked = tokenizer["requested_vocab_size"]
    return (dataset.vocab_size, asked) if dataset.vocab_size < asked else None


def _read_meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text("utf-8"))
