"""A sweep SIGKILLed at random moments, relaunched, killed again, ... until a launch completes it:
every run is completed exactly once, never trained from step 0 while a checkpoint of it was
committed, and ends with the curve of the same sweep never killed.

The kills come from inside the processes (`kill_points.py`, as their sitecustomize: inside and
right after a record write, inside a checkpoint save), so that the moments a crash hurts most
are hit by design, not luck, and from outside (the whole process group, once the sweep has
committed a random number of checkpoints, after a random delay). Every decision is a pure
function of SEED and the launch; the moments an outside kill lands on vary with timing. The
first launch starts every run from scratch with no outside kill, so what it injects is the same
on every machine: with SEED, a kill right after a run's completed record, one inside its first
checkpoint save (its only checkpoint lost: it must start from step 0 again) and one inside a
record write.
"""

import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.faults.sweeps import (
    REPORT,
    TRAIN,
    committed_steps,
    curve,
    run_dirs,
    summary,
    sweep_args,
)

SEED = 20261239
# 3 runs of one shape (its programs compiled once), 32 steps each, a checkpoint every 4
SEEDS = ("model.d_model=16", "train.seed=0,1,2")
EVERY = 4
# Each faulty launch: (kills from inside, a kill from outside); the launch after them has no
# faults and must complete the sweep
PLAN = ((True, False), (False, True), (True, True))
MAX_LAUNCHES = len(PLAN) + 1
# probability of a fault at each moment of its kind (kill_points.py), in a faulty launch
P_FAULT = {"record": 0.2, "after-record": 0.1, "checkpoint": 0.15}
OUTSIDE = "sigkill: the whole sweep (launcher and runs) at a random moment"
INSIDE = {"record": "sigkill: inside a record write (temporary file written, not renamed)",
          "after-record": "sigkill: right after a record write",
          "checkpoint": "sigkill: inside a checkpoint save"}
FRESH = re.compile(r"no checkpoint to resume from; training from step 0")
RESUMED = re.compile(r"resuming \S+ from step (\d+)")


@dataclass(frozen=True)
class Snapshot:
    """What a run directory holds between launches, when no process is left in it."""

    committed: tuple[int, ...]
    log_size: int  # of launcher.log, where each attempt appends its output
    record: tuple[bytes, int, int] | None  # summary.json: bytes, inode, mtime (ns)

    @classmethod
    def of(cls, run_dir: Path) -> "Snapshot":
        log, path = run_dir / "launcher.log", run_dir / "summary.json"
        record = None
        if path.exists():
            stat = path.stat()
            record = (path.read_bytes(), stat.st_ino, stat.st_mtime_ns)
        return cls(tuple(committed_steps(run_dir)), log.stat().st_size if log.exists() else 0,
                   record)

    @property
    def completed(self) -> bool:
        return self.record is not None and json.loads(self.record[0])["status"] == "completed"


def fault_env(site: Path, log: Path, launch: int) -> dict[str, str]:
    """The environment of a faulty launch: kill_points.py as every process's sitecustomize."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "FAULT_LOG": str(log), "FAULT_SEED": str(SEED), "FAULT_LAUNCH": str(launch),
            **{f"FAULT_P_{kind.upper().replace('-', '_')}": str(p)
               for kind, p in P_FAULT.items()}}


def wait_unlocked(run_dir: Path, timeout: float = 30.0) -> None:
    """Wait until no process holds the run (its flock goes with the last one killed)."""
    lock = run_dir / ".lock"
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{run_dir} still locked {timeout} s after the kill") from None
                time.sleep(0.05)
    finally:
        os.close(fd)


def progress(sweep: Path) -> int:
    """Checkpoints the sweep's runs have committed, in all (the newest of each, in saves)."""
    runs = run_dirs(sweep) if sweep.exists() else []
    return sum(max(committed_steps(d), default=0) // EVERY for d in runs)


def launch(args: list[str], sweep: Path, env: dict[str, str], out: Path,
           kill: tuple[int, float] | None) -> tuple[int, bool]:
    """Launch the sweep of `args` in `sweep`; with `kill` = (n, s), SIGKILL its whole process
    group s seconds after its runs have committed n more checkpoints, if it is still running.
    Returns its exit status and whether it was killed."""
    start = progress(sweep)
    with open(out, "wb") as log:
        proc = subprocess.Popen([*TRAIN, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while kill is not None and proc.poll() is None and time.monotonic() < deadline:
        if progress(sweep) >= start + kill[0]:
            time.sleep(kill[1])
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait(), True
        time.sleep(0.02)
    return proc.wait(timeout=max(deadline - time.monotonic(), 1)), False


def check_launch(number: int, runs: list[str], sweep: Path, before: dict[str, Snapshot],
                 fresh_starts: Counter[str]) -> None:
    """What each run's attempt in launch `number` did, against what its directory held before."""
    for run in runs:
        run_dir, was = sweep / run, before[run]
        if not run_dir.exists():  # the launch ended before it reached this run
            continue
        wait_unlocked(run_dir)
        now = Snapshot.of(run_dir)
        output = ((run_dir / "launcher.log").read_bytes()[was.log_size:].decode(errors="replace")
                  if now.log_size else "")
        if was.completed:  # completed once: never started, never written again
            assert output == "" and now.record == was.record, f"launch {number}: {run} again"
            continue
        starts = len(FRESH.findall(output))
        resumed = [int(step) for step in RESUMED.findall(output)]
        assert starts + len(resumed) <= 1, f"launch {number}: {run} trained twice:\n{output}"
        if starts:
            assert not was.committed, (f"launch {number}: {run} trained from step 0 although "
                                       f"checkpoints {was.committed} were committed")
            fresh_starts[run] += 1
        if resumed:
            assert resumed == [max(was.committed)], (
                f"launch {number}: {run} resumed from {resumed}, not from the newest committed "
                f"checkpoint of {was.committed}")


def test_a_sweep_killed_again_and_again_completes_every_run_exactly_once(
        corpus_dir, cache_dir, tmp_path, faults):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(Path(__file__).with_name("kill_points.py"), site / "sitecustomize.py")
    fault_log = tmp_path / "faults.log"

    clean_dir = tmp_path / "clean"  # the reference: the same sweep, never killed
    t0 = time.monotonic()
    clean = subprocess.run([*TRAIN, *sweep_args(corpus_dir, cache_dir, clean_dir, *SEEDS)],
                           capture_output=True, text=True, timeout=300)
    clean_s = time.monotonic() - t0
    assert clean.returncode == 0, clean.stdout + clean.stderr
    runs = [d.name for d in run_dirs(clean_dir)]
    assert len(runs) == 3

    sweep = tmp_path / "S"
    args = sweep_args(corpus_dir, cache_dir, sweep, *SEEDS)
    rng = random.Random(SEED)
    fresh_starts: Counter[str] = Counter()
    outputs, killed_outside = [], 0
    for number in range(MAX_LAUNCHES):
        inside, outside = PLAN[number] if number < len(PLAN) else (False, False)
        kill = (rng.randint(2, 6), rng.uniform(0.0, 0.5))  # drawn for every launch
        before = {run: Snapshot.of(sweep / run) for run in runs}
        out = tmp_path / f"launch{number}.log"
        env = fault_env(site, fault_log, number) if inside else dict(os.environ)
        status, killed = launch(args, sweep, env, out, kill if outside else None)
        outputs.append(out.read_text(errors="replace"))
        killed_outside += killed
        check_launch(number, runs, sweep, before, fresh_starts)
        if status == 0:
            break
    else:
        pytest.fail(f"the sweep did not complete in {MAX_LAUNCHES} launches, the last one "
                    f"without faults; its output:\n{outputs[-1][-3000:]}")

    injected, kinds = Counter(), set()
    for line in fault_log.read_text().splitlines() if fault_log.exists() else []:
        kind, _, _, detail = line.split("\t")
        injected[INSIDE[kind] + (f", {detail}" if detail else "")] += 1
        kinds.add(kind)
    faults.update(injected)
    faults[OUTSIDE] += killed_outside
    assert kinds == set(INSIDE), f"not every kind of kill was injected: {injected}"
    assert killed_outside >= 1

    # Every run completed once, in one directory, with the never-killed sweep's curve
    assert [d.name for d in run_dirs(sweep)] == runs
    for run in runs:
        done, reference = summary(sweep / run), summary(clean_dir / run)
        assert done["status"] == "completed"
        assert done["final_val_loss"] == reference["final_val_loss"], run
        metrics = curve(sweep / run)
        assert metrics["step"].is_unique
        pd.testing.assert_frame_equal(metrics, curve(clean_dir / run), check_exact=True)
        # what a fine-tune of it (stage.init_from, `latest`) or scaling-sample would read
        assert committed_steps(sweep / run)[-1] == done["steps"], run
        assert not list((sweep / run / "checkpoints").glob("*.orbax-checkpoint-tmp*")), run
    assert set(fresh_starts) == set(runs)  # each started from step 0 in some launch, and said so

    report = subprocess.run([*REPORT, str(sweep)], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "skipped" not in report.stderr
    results = pd.read_parquet(sweep / "results.parquet")
    assert sorted(results["run_id"]) == runs and set(results["status"]) == {"completed"}
    print(f"{number + 1} launches, clean sweep {clean_s:.1f} s; trained from step 0: "
          f"{dict(fresh_starts)}; faults: {dict(injected)}, {killed_outside} outside")
