"""A run of a sweep diverges (a huge learning rate): it is recorded as diverged at its step, the
sweep goes on and completes the others, the results table lists every run with its status, and a
relaunch trains none of them again. A diverged run is a result, like a completed one: its
batches and steps are pure functions of its config, so training it again would only diverge
again at the same step (`scaling.record.FINISHED`)."""

import math
import subprocess

import pandas as pd

from scaling.results import collect
from scaling.train import eval_steps
from tests.faults.sweeps import TRAIN, run_args, run_dirs, summary, sweep_args

# 1e30 diverges (Adam's steps are about lr in size, clipped gradients or not), launched first;
# null is the size rule's lr, the kill test's runs (programs compiled once)
LRS = "train.lr=1e30,null,3e-3"


def test_a_diverging_run_is_recorded_as_such_and_the_sweep_goes_on(corpus_dir, cache_dir,
                                                                  tmp_path, faults):
    sweep = tmp_path / "S"
    args = sweep_args(corpus_dir, cache_dir, sweep, "model.d_model=16", LRS)
    first = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    faults["divergence: a run of a sweep at lr 1e30"] += 1
    output = first.stdout + first.stderr
    assert first.returncode == 0, output
    assert "FAILED" not in output and "[3/3]" in output

    runs = {summary(d)["config"]["train"]["lr"] or "rule": d for d in run_dirs(sweep)}
    assert set(runs) == {1e30, "rule", 3e-3}
    diverged = summary(runs[1e30])
    assert diverged["status"] == "diverged"
    assert 1 <= diverged["diverged_step"] < diverged["steps"]
    assert diverged["final_val_loss"] is None
    # the evaluations of the schedule until it stopped, not one more
    schedule = eval_steps(diverged["steps"], diverged["config"]["train"]["eval_count"])
    evaluated = pd.read_parquet(runs[1e30] / "metrics.parquet")["step"].tolist()
    assert evaluated == schedule[:len(evaluated)] and len(evaluated) < len(schedule)
    assert all(step < diverged["diverged_step"] for step in evaluated)  # no row of NaNs
    for lr in ("rule", 3e-3):
        done = summary(runs[lr])
        assert done["status"] == "completed" and math.isfinite(done["final_val_loss"])

    results = collect(sweep).results.set_index("run_id")  # what scaling-report tabulates
    assert results.loc[runs[1e30].name, "status"] == "diverged"
    assert results.loc[runs[1e30].name, "diverged_step"] == diverged["diverged_step"]
    assert sorted(results["status"]) == ["completed", "completed", "diverged"]

    # A relaunch starts no process for any of them ...
    records = {d: ((d / "summary.json").read_bytes(), (d / "launcher.log").stat().st_size)
               for d in runs.values()}
    again = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "Launching 0 runs (3 already completed)" in again.stdout + again.stderr
    assert {d: ((d / "summary.json").read_bytes(), (d / "launcher.log").stat().st_size)
            for d in runs.values()} == records

    # ... and the diverged run's own process, as a Slurm job of the sweep would start it, keeps
    # its record as it is
    alone = subprocess.run(
        [*TRAIN, *run_args(corpus_dir, cache_dir), "model.d_model=16", "train.lr=1e30",
         f"hydra.run.dir={runs[1e30]}"],
        capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    assert f"{runs[1e30]} already holds a diverged run; nothing to do" in (
        alone.stdout + alone.stderr)
    assert (runs[1e30] / "summary.json").read_bytes() == records[runs[1e30]][0]
