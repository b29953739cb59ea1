"""A full disk: a run directory, and a sweep directory, on a tmpfs of a few MB that a ballast
file fills to leave just so much room.

A run that meets the full disk (before anything is written, during a checkpoint save, during
the record's writes) ends with one line on stderr naming the path and "No space left on
device", exit 2, no traceback; its summary.json is absent or a valid record that is not
completed, and no temporary file is left for a reader to take for a record. Once the ballast
is deleted the same command completes the run with the losses of an uninterrupted one.
`scaling-report` into a full sweep directory fails the same way and leaves the old table.
The room each case leaves is measured on the uninterrupted run, not assumed.
"""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from scaling.results import RESULTS, collect, write_tables

BIN = Path(sys.executable).parent
SIZE = 8 << 20  # bytes: the tmpfs, room for two runs of `run_args`
PAGE = 4096  # tmpfs allocates whole pages


@pytest.fixture(scope="module")
def tmpfs(tmp_path_factory) -> Iterator[Path]:
    """A tmpfs of SIZE bytes (the tests run as root); the module is skipped, saying why, where
    mounting one is refused."""
    where = tmp_path_factory.mktemp("tmpfs")
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE // 1024}k",
                                  "tmpfs", str(where)], capture_output=True, text=True)
    except FileNotFoundError as error:
        pytest.skip(f"cannot mount a tmpfs: {error}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", str(where)], check=True)


@pytest.fixture(autouse=True)
def no_ballast(tmpfs) -> Iterator[None]:
    """Whatever a test leaves, the next one starts with the tmpfs's room back."""
    yield
    (tmpfs / "ballast").unlink(missing_ok=True)


def fill(tmpfs: Path, room: int) -> Path:
    """A ballast file that leaves `room` bytes free on `tmpfs` (rounded down to pages)."""
    stat = os.statvfs(tmpfs)
    ballast = tmpfs / "ballast"
    fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize - room // PAGE * PAGE)
    finally:
        os.close(fd)
    return ballast


def used(path: Path) -> int:
    """Bytes the files below `path` take on disk (a tmpfs counts whole pages)."""
    return sum(p.lstat().st_blocks * 512 for p in [path, *path.rglob("*")] if p.is_file())


def run_args(corpus_dir: Path, cache_dir: Path, run_dir: Path) -> list[str]:
    """A tiny run of 32 steps, checkpointed at steps 20 and 32 and both kept."""
    return [
        "model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.n_ctx=32",
        "train.tokens=8192", "train.batch_size=8", "train.eval_count=4", "train.eval_batches=2",
        "train.checkpoint_every_steps=20", "train.keep_checkpoints=2", "data=files",
        f"data.paths=[{corpus_dir}/*.py]", "data.tokenizer=bytes", f"data.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
    ]


def scaling_train(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "scaling-train"), *args], capture_output=True, text=True,
                          timeout=300)


def assert_disk_full(result: subprocess.CompletedProcess, tmpfs: Path, prog: str) -> None:
    """One line on stderr naming a path on `tmpfs` and the full disk; exit 2; no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: {tmpfs}/"), lines[0]
    assert "No space left on device" in lines[0], lines[0]


def assert_no_false_record(run_dir: Path) -> None:
    """summary.json absent, or a valid record that is not completed; no temporary record file;
    the results table does not take the run for a completed one."""
    summary = run_dir / "summary.json"
    if summary.exists():
        assert json.loads(summary.read_text())["status"] in ("running", "failed")
    assert not [p for p in run_dir.rglob(".*.tmp")], "a temporary record file was left"
    results = collect(run_dir).results
    assert results.empty or not (results["status"] == "completed").any()


def losses(run_dir: Path) -> list[float]:
    return pd.read_parquet(run_dir / "metrics.parquet")["val_loss"].tolist()


@pytest.fixture(scope="module")
def uninterrupted(tmpfs, corpus_dir, cache_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """(a) A run launched on a full disk, and its launch again once there is room: its
    directory (an uninterrupted run, the others' reference, measured for their rooms) and the
    first launch's result. What the first launch left is checked before the second."""
    run_dir = tmpfs / "uninterrupted"
    ballast = fill(tmpfs, 0)
    refused = scaling_train(run_args(corpus_dir, cache_dir, run_dir))
    assert_no_false_record(run_dir)
    ballast.unlink()
    result = scaling_train(run_args(corpus_dir, cache_dir, run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir, refused


def test_full_before_anything_is_written(uninterrupted, tmpfs, faults):
    faults["disk full: before the first write"] += 1
    run_dir, refused = uninterrupted
    assert_disk_full(refused, tmpfs, "scaling-train")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert len(losses(run_dir)) == 4


def record_bytes(run_dir: Path) -> int:
    """What the record's last writes take: metrics.parquet, positions.parquet, summary.json."""
    return sum(used(run_dir / name)
               for name in ("metrics.parquet", "positions.parquet", "summary.json"))


def relaunch_after_freeing(ballast: Path, run_dir: Path, reference: Path, step: int,
                           corpus_dir: Path, cache_dir: Path) -> None:
    """Delete the ballast and launch the same run again: it resumes from `step` and ends with
    the uninterrupted run's losses."""
    ballast.unlink()
    result = scaling_train(run_args(corpus_dir, cache_dir, run_dir))
    assert result.returncode == 0, result.stderr
    assert f"from step {step}" in result.stdout
    assert losses(run_dir) == losses(reference)
    shutil.rmtree(run_dir)


def test_full_during_a_checkpoint_save(uninterrupted, tmpfs, corpus_dir, cache_dir, faults):
    """Room for all the run writes before its last checkpoint and half of that: the save at
    step 32 fails, the one at step 20 holds, and the relaunch resumes from it."""
    faults["disk full: during a checkpoint save"] += 1
    reference, _ = uninterrupted
    run_dir = tmpfs / "checkpoint"
    last = used(reference / "checkpoints" / "32")
    ballast = fill(tmpfs, used(reference) - record_bytes(reference) - last // 2)
    result = scaling_train(run_args(corpus_dir, cache_dir, run_dir))
    assert_disk_full(result, tmpfs, "scaling-train")
    assert_no_false_record(run_dir)
    assert (run_dir / "checkpoints" / "20").is_dir()
    assert not (run_dir / "checkpoints" / "32").exists()

    relaunch_after_freeing(ballast, run_dir, reference, 20, corpus_dir, cache_dir)


def test_full_during_the_record_write(uninterrupted, tmpfs, corpus_dir, cache_dir, tmp_path,
                                      faults):
    """Checkpoints on another disk (a link; Orbax's transient files would make their share of
    this one vary), and room on this one for all the run writes but two pages: its last writes,
    the record's (metrics.parquet, positions.parquet, summary.json), fail."""
    faults["disk full: during the record write"] += 1
    reference, _ = uninterrupted
    run_dir = tmpfs / "record"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(tmp_path)
    ballast = fill(tmpfs, used(reference) - used(reference / "checkpoints") - 2 * PAGE)
    result = scaling_train(run_args(corpus_dir, cache_dir, run_dir))
    assert_disk_full(result, tmpfs, "scaling-train")
    assert any(name in result.stderr for name in ("metrics", "positions", "summary"))
    assert (tmp_path / "32").is_dir(), "the record comes after the last checkpoint"
    assert_no_false_record(run_dir)

    relaunch_after_freeing(ballast, run_dir, reference, 32, corpus_dir, cache_dir)


def test_report_into_a_full_sweep_keeps_the_old_table(uninterrupted, tmpfs, faults):
    faults["disk full: scaling-report's results table"] += 1
    reference, _ = uninterrupted
    sweep = tmpfs / "sweep"
    for name in ("a", "b"):
        (sweep / name).mkdir(parents=True)
        for record in ("summary.json", "metrics.parquet"):
            shutil.copy(reference / record, sweep / name / record)
    write_tables(sweep)
    old = (sweep / RESULTS).read_bytes()
    shutil.copytree(sweep / "b", sweep / "c")  # a new run, then the disk fills
    ballast = fill(tmpfs, 0)
    result = subprocess.run([str(BIN / "scaling-report"), str(sweep)], capture_output=True,
                            text=True, timeout=300)
    ballast.unlink()
    assert_disk_full(result, tmpfs, "scaling-report")
    assert (sweep / RESULTS).read_bytes() == old
    assert len(pd.read_parquet(sweep / RESULTS)) == 2
    assert sorted(p.name for p in sweep.iterdir()) == [
        "a", "b", "c", "curves.parquet", "positions.parquet", RESULTS]
    shutil.rmtree(sweep)
