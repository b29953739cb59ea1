"""Whole sweeps as users launch them: re-launch skips, concurrent workers, kill and re-launch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from scaling.results import collect

TRAIN = [sys.executable, "-c", "from scaling.cli import train; train()"]
REPORT = [sys.executable, "-c", "from scaling.cli import report; report()"]


def sweep_args(corpus_dir: Path, cache_dir: Path, sweep_dir: Path, widths: str,
               tokens: int = 30_000) -> list[str]:
    return [
        "-m", f"model.d_model={widths}", "model.n_layer=1", "model.n_head=2", "model.n_ctx=32",
        f"train.tokens={tokens}", "train.batch_size=8", "train.eval_count=5",
        "train.eval_batches=1", "train.checkpoint_every_steps=20", "data=files",
        f"data.paths=[{corpus_dir}/*.py]", "data.vocab_size=512", f"data.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def trained_from_scratch(output: str) -> int:
    """Runs a worker trained from step 0: each logs its first evaluation exactly once."""
    return sum(" step 1/" in line and "val_loss" in line for line in output.splitlines())


def test_relaunching_a_finished_sweep_skips_every_run(corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "S"
    args = sweep_args(corpus_dir, cache_dir, sweep, "16,32")
    t0 = time.perf_counter()
    first = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    first_s = time.perf_counter() - t0
    assert first.returncode == 0, first.stderr
    results = collect(sweep).results  # what scaling-report tabulates (tests/test_results.py)
    assert list(results["status"]) == ["completed", "completed"]
    assert sorted(results["model.d_model"]) == [16, 32]

    t0 = time.perf_counter()
    again = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    again_s = time.perf_counter() - t0
    assert again.returncode == 0, again.stderr
    assert trained_from_scratch(again.stdout + again.stderr) == 0
    assert again_s < first_s / 2
    assert len(collect(sweep).results) == 2


def test_two_concurrent_workers_train_each_run_once(corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "S"
    args = sweep_args(corpus_dir, cache_dir, sweep, "16,24,32")
    workers = [subprocess.Popen([*TRAIN, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    results = collect(sweep).results
    assert len(results) == 3 and set(results["status"]) == {"completed"}
    assert results["resumed_from_step"].isna().all()
    # A run a worker found locked or finished is skipped; none is trained twice.
    started = sum(trained_from_scratch(o) for o in outputs)
    relaunch = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert started + trained_from_scratch(relaunch.stdout + relaunch.stderr) == 3


@pytest.mark.slow  # in CI, tests/faults/test_kill.py: the same, with kills inside writes too
def test_killed_parallel_sweep_completes_every_run_exactly_once(corpus_dir, cache_dir,
                                                                tmp_path):
    sweep = tmp_path / "S"
    args = [*sweep_args(corpus_dir, cache_dir, sweep, "16,24,32,40", tokens=40_000),
            "hydra/launcher=local", "hydra.launcher.n_jobs=2"]
    proc = subprocess.Popen([*TRAIN, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        committed = [p for p in sweep.glob("*/checkpoints/*") if p.name.isdigit()]
        if len(committed) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([*REPORT, str(sweep)], capture_output=True)
    before = pd.read_parquet(sweep / "results.parquet") if (sweep / "results.parquet").exists() \
        else pd.DataFrame({"status": []})
    assert (before["status"] == "completed").sum() < 4, "the sweep ended before the kill"

    relaunch = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 0, relaunch.stderr
    subprocess.run([*REPORT, str(sweep)], capture_output=True, check=True)
    results = pd.read_parquet(sweep / "results.parquet")
    assert len(results) == 4 and set(results["status"]) == {"completed"}
    assert results["resumed_from_step"].notna().any()
    assert len({p.name for p in sweep.iterdir() if p.is_dir() and p.name != "report"}) == 4


# A tiny study preset: its grids follow
STUDY_HEAD = """
defaults:
  - config
  - override hydra/sweeper: study
  - _self_
model: {n_layer: 1, n_head: 2, n_ctx: 32}
train: {batch_size: 8, eval_count: 3, eval_batches: 1}
hydra:
  mode: MULTIRUN
  sweeper:
    grids:
"""
STUDY = STUDY_HEAD + """      sizes: {model.d_model: '16,32', train.tokens: 10000}
      budgets: {model.d_model: 16, train.tokens: '10000,20000'}
"""


def test_a_study_launches_the_union_of_its_grids_once(corpus_dir, cache_dir, tmp_path):
    (tmp_path / "study.yaml").write_text(STUDY)
    sweep = tmp_path / "S"
    args = ["--config-dir", str(tmp_path), "--config-name", "study", "hydra/launcher=local",
            "data=files", f"data.paths=[{corpus_dir}/*.py]", "data.vocab_size=512",
            f"data.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"]
    first = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    log = first.stdout + first.stderr
    assert "Study of 3 runs: sizes 2, budgets 2" in log
    assert "[3/3]" in log  # one progress count for the whole study
    results = collect(sweep).results
    assert sorted(zip(results["model.d_model"], results["tokens"] // 1000, strict=True)) == [
        (16, 9), (16, 19), (32, 9)]  # whole steps of 256 tokens

    again = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "Launching 0 runs (3 already completed)" in again.stdout + again.stderr


TRANSFER = STUDY_HEAD + """\
      finetune: {model.d_model: '16,24', train.tokens: 3000, stage: finetune,
                 stage.init_from: 'grid:pretrain'}
      pretrain: {model.d_model: '16,24', train.tokens: '10000'}
"""


def test_a_study_fine_tunes_each_size_after_its_parent_and_skips_those_of_a_failed_parent(
        corpus_dir, cache_dir, tmp_path):
    (tmp_path / "study.yaml").write_text(TRANSFER)
    sweep = tmp_path / "S"
    args = ["--config-dir", str(tmp_path), "--config-name", "study", "hydra/launcher=local",
            "hydra.launcher.n_jobs=2", "data=files", f"data.paths=[{corpus_dir}/*.py]",
            "data.tokenizer=bytes", f"data.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"]
    first = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    log = first.stdout + first.stderr
    assert "Study of 4 runs: finetune 2, pretrain 2" in log and "[4/4]" in log
    results = collect(sweep).results.set_index("run_id")
    tuned = results[results["stage"] == "finetune"]
    assert len(tuned) == 2 and set(tuned["status"]) == {"completed"}
    for run_id, row in tuned.iterrows():
        parent = results.loc[row["parent_run"]]  # the pretraining run of its own width
        assert parent["stage"] == "pretrain" and parent["model.d_model"] == row["model.d_model"]
        summary = json.loads((sweep / run_id / "summary.json").read_text())
        assert summary["config"]["stage"]["init_from"].endswith(row["parent_run"])

    again = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    # fine-tunes too are checked against their records without starting a process
    assert "Launching 0 runs (4 already completed)" in again.stdout + again.stderr

    # 5 heads do not divide the width: each parent is refused in its process, and its
    # fine-tunes are skipped without starting
    failing = TRANSFER.replace("pretrain: {model.d_model: '16,24', train.tokens: '10000'}",
                               "pretrain: {model.d_model: '16,24', train.tokens: '10000',"
                               " model.n_head: 5}")
    (tmp_path / "study.yaml").write_text(failing)
    second = subprocess.run([*TRAIN, *[a.replace(str(sweep), str(tmp_path / "F")) for a in args]],
                            capture_output=True, text=True, timeout=300)
    log = second.stdout + second.stderr
    assert second.returncode != 0
    assert log.count("FAILED (skipped: the run its stage.init_from names") == 2, log
    # the skipped fine-tunes never started: only the parents have directories
    assert sorted(p.name.split("-")[3] for p in (tmp_path / "F").iterdir() if p.is_dir()) == [
        "D10k", "D10k"]


def test_ctrl_c_on_a_parallel_sweep_checkpoints_its_runs_and_the_relaunch_resumes_them(
        corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "S"
    args = [*sweep_args(corpus_dir, cache_dir, sweep, "16,24", tokens=80_000),
            "hydra/launcher=local", "hydra.launcher.n_jobs=2"]
    # As from a terminal: a background job of a script inherits SIGINT ignored, and Python
    # then never raises KeyboardInterrupt (the launcher would wait for its runs instead)
    at_terminal = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, "
                   "signal.default_int_handler); from scaling.cli import train; train()"]
    proc = subprocess.Popen([*at_terminal, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len({p.parent.parent for p in sweep.glob("*/checkpoints/*") if p.name.isdigit()}) == 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the launcher and its runs
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].endswith(
        "sweep interrupted; the 2 running runs stopped, each with a checkpoint of the step it "
        "reached; run the same command to resume")
    stopped = summaries(sweep)
    assert [s["status"] for s in stopped.values()] == ["interrupted"] * 2

    relaunch = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert relaunch.returncode == 0, relaunch.stderr
    for run, summary in summaries(sweep).items():
        assert summary["status"] == "completed"
        assert summary["resumed_from_step"] == stopped[run]["interrupted_step"]


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))}
