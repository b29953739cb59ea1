"""load_dataset: shard contents, cache reuse, cache keys, and a concurrent build."""

import dataclasses
import json
import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from scaling.config import DataConfig
from scaling.data import DataError, Dataset, load_dataset, open_dataset, shards
from scaling.data.sources import read_corpus, read_transfer, split_documents


def documents(ds: Dataset, tokens: np.ndarray) -> list[str]:
    """Decode a split back into its documents (each ends with eos)."""
    assert tokens[-1] == ds.eos_id
    pieces = np.split(np.asarray(tokens), np.flatnonzero(np.asarray(tokens) == ds.eos_id) + 1)
    return [ds.tokenizer.decode(p[:-1].tolist()) for p in pieces[:-1]]


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_splits_hold_every_document_exactly_once(data_cfg, corpus, kind):
    ds = load_dataset(dataclasses.replace(data_cfg, tokenizer=kind))
    assert isinstance(ds.train, np.memmap)
    assert isinstance(ds.val, np.memmap)
    assert ds.train.dtype == ds.val.dtype == np.uint16
    assert ds.vocab_size == (400 if kind == "bpe" else 256)
    assert int(ds.train.max()) < ds.vocab_size
    train, val = documents(ds, ds.train), documents(ds, ds.val)
    assert (len(train), len(val)) == (ds.n_train_docs, ds.n_val_docs)
    assert sorted(train + val) == sorted(corpus.values())
    japanese = corpus["ja.txt"]
    assert japanese in train + val
    assert ds.tokenizer.decode(ds.tokenizer.encode(japanese)) == japanese
    meta = json.loads((ds.cache_path / "meta.json").read_text("utf-8"))
    assert meta["tokens"] == {"train": len(ds.train), "val": len(ds.val)}
    assert meta["split"]["rule"] == "by_document"
    assert "corpus/lines.jsonl" in meta["source"]["files"]
    assert (ds.cache_path / "tokenizer.json").exists() == (kind == "bpe")


def test_second_load_reuses_the_cache_without_retraining(data_cfg, monkeypatch):
    first = load_dataset(data_cfg)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.cache_path.iterdir()}

    def no_training(*args):
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr(shards, "train_bpe", no_training)
    second = load_dataset(data_cfg)
    assert second.cache_path == first.cache_path
    assert {p.name: p.stat().st_mtime_ns for p in second.cache_path.iterdir()} == stamps
    np.testing.assert_array_equal(second.train, first.train)
    assert second.tokenizer.encode("def f(x):") == first.tokenizer.encode("def f(x):")
    assert [p.name for p in first.cache_path.parent.iterdir() if p.name.startswith(".")] == []


def test_cache_key_follows_content_and_settings(data_cfg, tmp_path):
    base = load_dataset(data_cfg).cache_path
    # Names are relative to the corpus root: an absolute glob finds the same cache.
    absolute = str(tmp_path / "corpus" / "**" / "*")
    assert load_dataset(dataclasses.replace(data_cfg, paths=[absolute])).cache_path == base
    assert load_dataset(dataclasses.replace(data_cfg, vocab_size=300)).cache_path != base
    assert load_dataset(dataclasses.replace(data_cfg, val_fraction=0.4)).cache_path != base
    Path("corpus/a.py").write_text("changed = True\n" * 50)
    assert load_dataset(data_cfg).cache_path != base


def test_cache_dir_defaults_to_the_environment(data_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("SCALING_CACHE", str(tmp_path / "env-cache"))
    ds = load_dataset(dataclasses.replace(data_cfg, cache_dir=None, tokenizer="bytes"))
    assert ds.cache_path.parent == tmp_path / "env-cache"


def test_unfinished_build_is_ignored_and_cleaned_up(data_cfg):
    ds = load_dataset(data_cfg)
    (ds.cache_path / "meta.json").unlink()  # as if the build died before committing
    stale = ds.cache_path.parent / f".{ds.cache_path.name}.tmp-dead"
    stale.mkdir()
    again = load_dataset(data_cfg)
    assert (again.cache_path / "meta.json").exists()
    assert not stale.exists()
    np.testing.assert_array_equal(again.train, ds.train)


def test_corpus_too_small_to_split(data_cfg):
    Path("tiny.txt").write_text("x")
    with pytest.raises(DataError, match="the validation split is empty"):
        load_dataset(dataclasses.replace(data_cfg, paths=["tiny.txt"]))


def test_missing_path_fails_before_building(data_cfg, tmp_path):
    with pytest.raises(DataError, match=r"no such file or directory: nope\.txt"):
        load_dataset(dataclasses.replace(data_cfg, paths=["nope.txt"]))
    assert not (tmp_path / "cache").exists()


def test_transfer_corpus_is_encoded_with_the_runs_own_tokenizer(data_cfg, corpus, monkeypatch):
    plain = load_dataset(data_cfg)
    assert plain.transfer is None
    ds = load_dataset(dataclasses.replace(data_cfg, transfer="prose"))
    assert ds.cache_path == plain.cache_path  # same shards, same tokenizer
    assert isinstance(ds.transfer, np.memmap) and int(ds.transfer.max()) < ds.vocab_size
    assert documents(ds, ds.transfer) == [d.text for d in read_transfer("prose", []).documents]
    (built,) = [p for p in ds.cache_path.parent.glob("transfer-prose-*") if p.is_dir()]
    meta = json.loads((built / "meta.json").read_text("utf-8"))
    assert meta["dataset"] == ds.cache_path.name and meta["tokens"] == len(ds.transfer)
    files = dataclasses.replace(data_cfg, transfer="files", transfer_paths=["corpus/notes.md"])
    assert documents(ds, load_dataset(files).transfer) == [corpus["notes.md"]]
    other = load_dataset(dataclasses.replace(data_cfg, transfer="prose", vocab_size=300))
    assert len(other.transfer) > len(ds.transfer)  # another tokenizer, another transfer cache

    def no_building(*args):
        raise AssertionError("built again")

    monkeypatch.setattr(shards, "train_bpe", no_building)
    monkeypatch.setattr(shards, "_write_transfer", no_building)
    np.testing.assert_array_equal(
        load_dataset(dataclasses.replace(data_cfg, transfer="prose")).transfer, ds.transfer
    )


def finetune_corpus(data_cfg: DataConfig) -> DataConfig:
    """Another small corpus beside the conftest one; its config asks for a tokenizer that
    tokenizer_from must override."""
    Path("ft").mkdir()
    for i in range(12):
        Path(f"ft/doc{i}.txt").write_text(f"Fine-tuning text {i}: 猫 and dogs.\n" * (i + 1))
    return dataclasses.replace(data_cfg, paths=["ft/*.txt"], tokenizer="bytes", vocab_size=999)


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_corpus_encoded_with_a_parents_tokenizer(data_cfg, kind, monkeypatch):
    parent = load_dataset(dataclasses.replace(data_cfg, tokenizer=kind))
    cfg = finetune_corpus(data_cfg)

    def no_training(*args):
        raise AssertionError("a tokenizer was trained")

    monkeypatch.setattr(shards, "train_bpe", no_training)
    child = load_dataset(cfg, tokenizer_from=parent)
    assert "-inherited-" in child.cache_path.name
    assert (child.vocab_size, child.eos_id) == (parent.vocab_size, parent.eos_id)
    split = split_documents(read_corpus("files", cfg.paths).documents, cfg.val_fraction)
    for tokens, docs in ((child.train, split.train), (child.val, split.val)):
        expected = [i for d in docs for i in [*parent.tokenizer.encode(d.text), parent.eos_id]]
        assert np.asarray(tokens).tolist() == expected
    meta = json.loads((child.cache_path / "meta.json").read_text("utf-8"))
    assert meta["tokenizer"]["from"] == parent.cache_path.name
    assert meta["tokenizer"]["kind"] == kind
    parent_file = parent.cache_path / "tokenizer.json"
    assert (child.cache_path / "tokenizer.json").exists() == parent_file.exists()
    if parent_file.exists():
        assert (child.cache_path / "tokenizer.json").read_bytes() == parent_file.read_bytes()

    def no_building(*args):
        raise AssertionError("built again")

    monkeypatch.setattr(shards, "_write", no_building)
    again = load_dataset(cfg, tokenizer_from=parent)
    assert again.cache_path == child.cache_path
    np.testing.assert_array_equal(again.train, child.train)
    text = "Fine-tuning 猫"
    assert again.tokenizer.encode(text) == parent.tokenizer.encode(text)  # opens on its own


def test_inherited_cache_follows_the_parent(data_cfg):
    cfg = finetune_corpus(data_cfg)
    bpe = load_dataset(cfg, tokenizer_from=load_dataset(data_cfg))
    other = load_dataset(cfg, tokenizer_from=load_dataset(dataclasses.replace(data_cfg,
                                                                              vocab_size=300)))
    assert other.cache_path != bpe.cache_path and other.vocab_size == 300


def test_open_dataset_by_cache_name_rebuilds_or_names_the_change(data_cfg):
    ds = load_dataset(data_cfg)
    name = ds.cache_path.name
    train = np.array(ds.train)
    opened = open_dataset(dataclasses.replace(data_cfg, transfer="prose"), name)
    assert opened.cache_path == ds.cache_path and opened.transfer is None
    shutil.rmtree(ds.cache_path)  # a cleaned cache is rebuilt from the parent's config
    np.testing.assert_array_equal(open_dataset(data_cfg, name).train, train)
    shutil.rmtree(ds.cache_path)
    Path("corpus/a.py").write_text("changed = True\n" * 50)
    with pytest.raises(DataError, match=rf"cache {name} is not in .*, and its data config now "
                                        r"builds files-bpe400-[0-9a-f]{16}: its corpus"):
        open_dataset(data_cfg, name)
    with pytest.raises(DataError, match=r"files-inherited-0123 is not in .* earlier run's"):
        open_dataset(data_cfg, "files-inherited-0123")


def _load_in_child(cfg: DataConfig) -> tuple[str, int, bytes]:
    """Load in a fresh process; report the cache path, whether it built, and the train bytes."""
    builds = []
    write = shards._write

    def counted_write(*args):
        builds.append(1)
        time.sleep(0.5)  # widen the window in which the other process must wait
        write(*args)

    shards._write = counted_write
    ds = load_dataset(cfg)
    return str(ds.cache_path), len(builds), np.asarray(ds.train).tobytes()


def test_concurrent_builds_make_one_cache(data_cfg):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_load_in_child, [data_cfg, data_cfg])
    (path_a, built_a, train_a), (path_b, built_b, train_b) = results
    assert path_a == path_b
    assert built_a + built_b == 1
    assert train_a == train_b
    assert sorted(p.name for p in Path(path_a).parent.iterdir()) == sorted(
        [Path(path_a).name, Path(path_a).name + ".lock"]
    )
    assert load_dataset(data_cfg).cache_path == Path(path_a)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_full_stdlib_build(tmp_path, kind):
    start = time.perf_counter()
    ds = load_dataset(DataConfig(tokenizer=kind, vocab_size=4096, cache_dir=str(tmp_path)))
    seconds = time.perf_counter() - start
    meta = json.loads((ds.cache_path / "meta.json").read_text("utf-8"))
    print(f"stdlib/{kind}: {seconds:.1f}s {meta['build_seconds']} tokens={meta['tokens']}")
    assert ds.vocab_size == (4096 if kind == "bpe" else 256)
    assert len(ds.train) > 5 * len(ds.val) > 0
    assert len(ds.train) > 1_000_000
    sample = documents(ds, ds.val[: 1 + int(np.flatnonzero(np.asarray(ds.val) == 0)[0])])[0]
    assert "import" in sample or "def " in sample
