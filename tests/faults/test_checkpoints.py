"""A damaged newest checkpoint (cut short, bytes overwritten, garbage metadata, a file gone): the
run resumes from the one before, says which it passed over, and ends as if never interrupted.
Every checkpoint damaged: one line naming each, exit 2, and no completed record. What a kill
mid-save leaves is cleared, and a completed record never names a checkpoint still uncommitted."""

import asyncio
import dataclasses
import logging
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from orbax.checkpoint._src.path import atomicity

from scaling import record, train
from scaling.checkpoint import Checkpointer
from scaling.config import Config, DataConfig, ModelConfig, TrainConfig
from scaling.record import read_summary
from tests.faults.sweeps import TRAIN, committed_steps, curve, run_args
from tests.runs import crash_at_step, pretrain

# The shape and steps of the kill test's runs (their programs compiled once): 32 steps,
# checkpoints at 8 and 16, a crash at 20
TOKENS, EVERY, CRASH = 8192, 8, 20
NEWEST, PREVIOUS = 16, 8
TMP_SUFFIX = atomicity.TMP_DIR_SUFFIX  # Orbax's name for a checkpoint it has not committed yet


def config(corpus_dir: Path, cache_dir: Path) -> Config:
    """The run of `run_args(TOKENS, EVERY)`, as `scaling-train` builds it from those overrides."""
    return Config(
        model=ModelConfig(n_layer=1, d_model=16, n_head=2, n_ctx=32),
        data=DataConfig(source="files", paths=[f"{corpus_dir}/*.py"], tokenizer="bytes",
                        cache_dir=str(cache_dir)),
        train=TrainConfig(tokens=TOKENS, batch_size=8, eval_count=5, eval_batches=1,
                          checkpoint_every_steps=EVERY))


@pytest.fixture(scope="module")
def reference(corpus_dir, cache_dir, tmp_path_factory) -> Path:
    """The run trained without interruption."""
    run = tmp_path_factory.mktemp("reference")
    pretrain(config(corpus_dir, cache_dir), run)
    return run


@pytest.fixture(scope="module")
def crashed(corpus_dir, cache_dir, tmp_path_factory) -> Path:
    """The run crashed at step CRASH, with checkpoints PREVIOUS and NEWEST: copy it, never
    change it."""
    run = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.MonkeyPatch.context() as patch:
        crash_at_step(patch, CRASH)
        with pytest.raises(RuntimeError, match="simulated crash"):
            pretrain(config(corpus_dir, cache_dir), run)
    assert committed_steps(run) == [PREVIOUS, NEWEST]
    return run


def array_files(checkpoint: Path) -> list[Path]:
    """The files holding the state's arrays (TensorStore's OCDBT data files), largest first."""
    files = [p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    return sorted(files, key=lambda p: (-p.stat().st_size, p.name))


def truncate(checkpoint: Path) -> None:
    """The largest array file cut to half its length: a torn write."""
    path = array_files(checkpoint)[0]
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def empty(checkpoint: Path) -> None:
    """Every array file of 0 bytes: a copy that never got its data."""
    for path in array_files(checkpoint):
        path.write_bytes(b"")


def overwrite(checkpoint: Path) -> None:
    """64 bytes a third of the way into the largest array file zeroed: zstd fails to decode."""
    path = array_files(checkpoint)[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 3:len(data) // 3 + 64] = bytes(64)
    path.write_bytes(bytes(data))


def read_params(checkpoint: Path) -> list[np.ndarray]:
    """The checkpoint's parameters as Orbax reads them, with no check of ours."""
    reader = Checkpointer(checkpoint.parent, keep=1, create=False)
    return jax.tree_util.tree_leaves(reader.read_params(int(checkpoint.name)))


def overwrite_undetected(checkpoint: Path) -> None:
    """8 bytes of the largest array file overwritten where Orbax reads other values from them
    without an error (zstd keeps incompressible data as it is, with no checksum): found by
    trying seeded places."""
    path, saved = array_files(checkpoint)[0], read_params(checkpoint)
    original = path.read_bytes()
    rng = random.Random(0)
    for _ in range(40):
        at = rng.randrange(len(original) - 8)
        path.write_bytes(original[:at] + bytes(rng.randrange(256) for _ in range(8))
                         + original[at + 8:])
        try:
            changed = read_params(checkpoint)
        except Exception:  # Orbax's bare Exception: this one is detected, try elsewhere
            continue
        if any(not np.array_equal(a, b) for a, b in zip(saved, changed, strict=True)):
            return
    pytest.fail(f"no overwrite of {path} that Orbax reads without an error in 40 tries")


def garbage_meta(checkpoint: Path) -> None:
    """The run's bookkeeping (JSON: evaluations so far, wall time, the state's digest)."""
    (checkpoint / "meta" / "metadata").write_text("{not json")


def garbage_tree(checkpoint: Path) -> None:
    """Orbax's JSON of the state's tree."""
    (checkpoint / "state" / "_METADATA").write_text("{not json")


def remove_array_file(checkpoint: Path) -> None:
    array_files(checkpoint)[0].unlink()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "emptied": empty,
    "overwritten": overwrite,
    "overwritten-undetected": overwrite_undetected,
    "garbage-bookkeeping": garbage_meta,
    "garbage-tree-metadata": garbage_tree,
    "array-file-missing": remove_array_file,
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_newest_checkpoint_is_passed_over_for_the_one_before(
        kind, corpus_dir, cache_dir, reference, crashed, tmp_path, caplog, faults):
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    DAMAGE[kind](run / "checkpoints" / str(NEWEST))
    faults[f"damaged newest checkpoint: {kind}"] += 1

    with caplog.at_level(logging.WARNING, logger="scaling"):
        resumed = pretrain(config(corpus_dir, cache_dir), run)
    assert f"checkpoints/{NEWEST} cannot be restored" in caplog.text
    assert f"deleted the unreadable checkpoints {NEWEST}; resuming from step {PREVIOUS}" in (
        caplog.text)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == PREVIOUS
    assert resumed["final_val_loss"] == read_summary(reference)["final_val_loss"]
    pd.testing.assert_frame_equal(curve(run), curve(reference), check_exact=True)


def test_every_checkpoint_damaged_fails_in_one_line_with_no_completed_record(
        corpus_dir, cache_dir, crashed, tmp_path, faults):
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    for step, kind in ((NEWEST, "overwritten-undetected"), (PREVIOUS, "truncated")):
        DAMAGE[kind](run / "checkpoints" / str(step))
        faults[f"every checkpoint damaged: {kind}"] += 1

    result = subprocess.run([*TRAIN, *run_args(corpus_dir, cache_dir, TOKENS, EVERY),
                             "model.d_model=16", f"hydra.run.dir={run}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]  # one line, naming each checkpoint's damage
    assert ": error: no checkpoint in " in error
    assert f"no checkpoint in {run / 'checkpoints'} can be restored" in error
    assert f"step {NEWEST}: ValueError: the restored state differs" in error
    assert f"step {PREVIOUS}: ValueError: " in error
    summary = read_summary(run)
    assert summary["status"] == "failed" and "CheckpointError" in summary["error"]
    assert committed_steps(run) == [PREVIOUS, NEWEST]  # nothing deleted: the user decides


def test_a_save_killed_before_its_commit_leaves_nothing_behind_once_the_run_reopens(
        corpus_dir, cache_dir, crashed, tmp_path, faults):
    """A process killed mid-save leaves Orbax's temporary directory, as big as a checkpoint;
    one of a step the run does not save again (a save on the wall clock) stayed for good."""
    run = tmp_path / "run"
    shutil.copytree(crashed, run)
    partial = run / "checkpoints" / f"{NEWEST - 3}{TMP_SUFFIX}"  # a step off the step clock
    shutil.copytree(run / "checkpoints" / str(NEWEST), partial)
    truncate(partial)
    faults["partial save left by a kill: a temporary checkpoint directory"] += 1

    done = pretrain(config(corpus_dir, cache_dir), run)
    assert done["status"] == "completed" and done["resumed_from_step"] == NEWEST
    assert not partial.exists()


def test_a_completed_record_is_written_once_its_last_checkpoint_is_committed(
        corpus_dir, cache_dir, tmp_path, monkeypatch, faults):
    """Killed right after its completed record, a run must keep its last checkpoint: what a
    fine-tune (`stage.init_from`, latest) and scaling-sample read. Orbax commits a big
    checkpoint long after the last step; here a commit that takes a second stands for one."""
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def slow_finalize(self) -> None:
        await asyncio.sleep(1.0)
        await finalize(self)

    run, committed_when_recorded = tmp_path / "run", []

    def write_summary(run_dir, summary) -> None:
        if summary["status"] == "completed":
            committed_when_recorded.append(committed_steps(run))
        record.write_summary(run_dir, summary)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", slow_finalize)
    monkeypatch.setattr(train, "write_summary", write_summary)
    faults["slow checkpoint commit: 1 s"] += 1
    cfg = config(corpus_dir, cache_dir)
    done = pretrain(dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, checkpoint_every_steps=16)), run)
    assert committed_when_recorded == [[16, done["steps"]]]
