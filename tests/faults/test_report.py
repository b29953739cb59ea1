"""Concurrent writers of one sweep's tables: two `scaling-report` processes report on the same
sweep directory again and again while a third process keeps adding run records. A reader
polling meanwhile always reads whole tables of whole runs (results.parquet, curves.parquet)
and a whole report (fits.json, index.html), and once the adding is over, the last reports hold
every run.
"""

import json
import multiprocessing
import shutil
import threading
import time
from pathlib import Path

import pandas as pd

from scaling.record import write_metrics, write_summary
from scaling.results import collect

WRITERS = 2  # scaling-report processes at once
MIN_ROUNDS = 2  # reports each writes at least
RUNS_AT_START, RUNS_ADDED = 2, 4
WALKS = 300  # walks of a sweep while directories in it come and go
N = 1000  # every run's parameters: a seed sweep at one size, whose report fits little (quick)


def evaluations(i: int) -> int:
    """Run i's number of evaluations (curve rows): 2 + i, so a torn curve shows."""
    return 2 + i


def add_run(sweep: Path, i: int) -> None:
    """Record run i (seed i) as the trainer does: its metrics, then its completed summary."""
    config = {"model": {"n_layer": 2, "d_model": 32}, "data": {"source": "stdlib"},
              "train": {"tokens": 1000, "budget": None, "seed": i}}
    steps = range(1, evaluations(i) + 1)
    rows = [{"step": s, "tokens": 100 * s, "flops": 6 * N * 100 * s,
             "train_loss": 3.0 + 0.01 * i + 1 / s, "val_loss": 3.0 + 0.01 * i + 1 / s,
             "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e4} for s in steps]
    write_metrics(sweep / f"run-{i:02d}", rows)
    write_summary(sweep / f"run-{i:02d}", {
        "status": "completed", "n_params_nonembed": N, "tokens": rows[-1]["tokens"],
        "flops": rows[-1]["flops"], "final_val_loss": rows[-1]["val_loss"], "config": config})


def add_runs(sweep: Path, done: Path) -> None:
    """The third process: a run every second (a report takes a few), then `done`."""
    for i in range(RUNS_AT_START, RUNS_AT_START + RUNS_ADDED):
        time.sleep(1.0)
        add_run(sweep, i)
    done.touch()


def report_until(sweep: Path, done: Path, rounds: Path) -> None:
    """A writer: `scaling-report SWEEP` again and again, at least MIN_ROUNDS times and until one
    round has started after `done`; its rounds counted in `rounds`. A failed round ends the
    process with the command's status."""
    from scaling.cli import report

    count, last = 0, False
    while not (last and count >= MIN_ROUNDS):
        last = done.exists()
        report([str(sweep)])
        count += 1
    rounds.write_text(str(count))


def check_whole(sweep: Path) -> bool:
    """Read what a reader would, as it is now; assert each table is whole and of whole runs.
    False where the first report has not been written yet."""
    try:
        results = pd.read_parquet(sweep / "results.parquet")
        curves = pd.read_parquet(sweep / "curves.parquet")
    except FileNotFoundError:
        return False
    assert results["run_id"].is_unique and (results["status"] == "completed").all()
    rows = curves.groupby("run_id").size()
    for run_id, n in rows.items():
        assert n == evaluations(int(run_id.removeprefix("run-"))), f"{run_id}: torn curve"
    report = sweep / "report"
    if (report / "index.html").exists():
        json.loads((report / "fits.json").read_text())
        assert (report / "index.html").read_text().rstrip().endswith("</html>")
    return True


def test_concurrent_reports_never_tear_a_table(tmp_path, faults):
    sweep, done = tmp_path / "sweep", tmp_path / "done"
    for i in range(RUNS_AT_START):
        add_run(sweep, i)
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, as separate commands
    writers = [spawn.Process(target=report_until, args=(sweep, done, tmp_path / f"rounds{w}"))
               for w in range(WRITERS)]
    adder = spawn.Process(target=add_runs, args=(sweep, done))
    for process in [*writers, adder]:
        process.start()
    reads = 0
    while any(process.is_alive() for process in writers):
        reads += check_whole(sweep)
        time.sleep(0.2)
    for process in [*writers, adder]:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert check_whole(sweep) and reads > 0

    total = RUNS_AT_START + RUNS_ADDED
    assert len(pd.read_parquet(sweep / "results.parquet")) == total
    assert pd.read_parquet(sweep / "curves.parquet")["run_id"].nunique() == total
    assert not list(sweep.glob(".*.tmp")), "a writer left its temporary files"
    rounds = sum(int((tmp_path / f"rounds{w}").read_text()) for w in range(WRITERS))
    faults["concurrent scaling-report: rounds written"] += rounds
    faults["concurrent scaling-report: runs added while they wrote"] += RUNS_ADDED
    faults["concurrent scaling-report: tables read while written"] += reads


def test_a_directory_vanishing_while_the_sweep_is_walked_is_passed_over(tmp_path, faults):
    """A checkpoint Orbax renames into place, another report's staging directory: gone between
    being listed and being read. Path.rglob raised FileNotFoundError then (within the first
    few hundred walks here, every time), and the report stopped."""
    write_summary(tmp_path / "run-00", {"status": "running", "config": {"train": {"seed": 0}}})
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for name in ("a", "b", "c"):
                (tmp_path / "run-00" / ".staging" / name / "d").mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp_path / "run-00" / ".staging", ignore_errors=True)
            faults["a directory vanishing during a walk"] += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(WALKS):
            assert list(collect(tmp_path).results["run_id"]) == ["run-00"]
    finally:
        stop.set()
        thread.join()
