"""`hydra/launcher=slurm` on a real Slurm cluster (this machine, `scaling.slurm_local`): a sweep
runs as a job array and its table is complete; a run that Slurm signals ahead of its time
limit checkpoints and is requeued by submitit, and once its job is cancelled it resumes when
the sweep is submitted again, ending with the losses of the uninterrupted run, step for step.

Tiny byte-level models, one CPU per job; the interrupted run is the sweep's larger model, so
that the sweep's own run is the uninterrupted reference.
"""

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scaling.record import read_summary
from scaling.results import collect

TRAIN = [sys.executable, "-c", "from scaling.cli import train; train()"]
REPORT = [sys.executable, "-c", "from scaling.cli import report; report()"]
WIDTHS = (16, 64)  # the sweep's models; the resume test interrupts the larger one
STEPS, CHECKPOINT_EVERY = 160, 20
TIMEOUT_S = 150  # for a sweep of these runs to end, queueing included


def sweep_args(cluster, corpus_dir: Path, cache_dir: Path, sweep_dir: Path,
               widths: tuple[int, ...]) -> list[str]:
    """A sweep over model widths on the local cluster, one CPU and no GPU per job."""
    batch, n_ctx = 8, 128
    return [
        "-m", f"model.d_model={','.join(map(str, widths))}", "model.n_layer=2",
        "model.n_head=2", f"model.n_ctx={n_ctx}", f"train.tokens={STEPS * batch * n_ctx}",
        f"train.batch_size={batch}", "train.eval_count=12", "train.eval_batches=2",
        f"train.checkpoint_every_steps={CHECKPOINT_EVERY}", "data=files",
        f"data.paths=[{corpus_dir}/*.py]", "data.tokenizer=bytes", f"data.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/launcher=slurm", f"hydra.launcher.partition={cluster.partition}",
        "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
    ]


def submit(cluster, args: list[str]) -> subprocess.Popen:
    """`scaling-train -m ... hydra/launcher=slurm`: submits, then waits for the jobs' results.

    Started with SIGINT's default action, as from a terminal: a test session launched in the
    background of a script (`make test &`) ignores SIGINT, every child inherits that, and Python
    then never turns Ctrl-C into KeyboardInterrupt (the front end would outlive it)."""
    return subprocess.Popen([*TRAIN, *args], env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(front: subprocess.Popen) -> str:
    """The front end's output once it exits; fails the test if it fails or hangs."""
    try:
        output, _ = front.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        front.kill()
        pytest.fail(f"the sweep did not end in {TIMEOUT_S}s: {front.communicate()[0][-2000:]}")
    assert front.returncode == 0, output[-3000:]
    return output


def run_of_width(sweep_dir: Path, width: int) -> Path:
    """The directory of the sweep's run of model width `width`."""
    (run,) = [p.parent for p in sweep_dir.glob("*/summary.json")
              if read_summary(p.parent)["config"]["model"]["d_model"] == width]
    return run


def wait_until(condition: Callable[[], Any], poll_s: float = 0.05) -> Any:
    """`condition()`'s first truthy value; fails the test after TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"still waiting after {TIMEOUT_S}s for {condition}")


def wait_for_checkpoint(sweep_dir: Path, front: subprocess.Popen, after: int = 0) -> Path:
    """The run directory of the sweep's one run, once it has committed a checkpoint of a step
    past `after`; fails the test if the sweep ends first."""

    def committed() -> Path | None:
        if front.poll() is not None:
            pytest.fail(f"the sweep ended before a checkpoint: {front.communicate()[0][-2000:]}")
        steps = [p for p in sweep_dir.glob("*/checkpoints/*")
                 if p.name.isdigit() and int(p.name) > after]
        return steps[0].parent.parent if steps else None

    return wait_until(committed)


def job_id(sweep_dir: Path) -> str:
    """The Slurm job id of a sweep of one run (submitit's folder is named after it)."""
    (folder,) = [p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]
    return folder.name


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The same evaluations, the same losses (to float tolerance), as the reference run."""
    curve, expected = (pd.read_parquet(d / "metrics.parquet") for d in (run_dir, reference))
    assert list(curve["step"]) == list(expected["step"])
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(curve[column], expected[column], rtol=1e-6, err_msg=column)
    final, uninterrupted = read_summary(run_dir), read_summary(reference)
    assert final["status"] == "completed"
    np.testing.assert_allclose(final["final_val_loss"], uninterrupted["final_val_loss"],
                               rtol=1e-6)


@pytest.fixture(scope="module")
def swept(cluster, corpus_dir, cache_dir, tmp_path_factory) -> Path:
    """A sweep of WIDTHS through the Slurm launcher, finished: its directory."""
    sweep = tmp_path_factory.mktemp("sweep")
    finish(submit(cluster, sweep_args(cluster, corpus_dir, cache_dir, sweep, WIDTHS)))
    return sweep


def test_a_sweep_runs_as_a_job_array_and_its_table_is_complete(swept):
    # submitit names an array task's folder ARRAYID_INDEX: one array, a task per run
    tasks = sorted(p.name for p in (swept / ".submitit").glob("*_*") if p.is_dir())
    assert len(tasks) == len(WIDTHS) and len({t.split("_")[0] for t in tasks}) == 1, tasks
    assert sorted(int(t.split("_")[1]) for t in tasks) == list(range(len(WIDTHS)))

    subprocess.run([*REPORT, str(swept)], capture_output=True, check=True, timeout=120)
    results = pd.read_parquet(swept / "results.parquet")
    assert sorted(results["model.d_model"]) == list(WIDTHS)
    assert set(results["status"]) == {"completed"}
    assert results["final_val_loss"].notna().all()
    assert not collect(swept).problems


def test_a_preempted_then_cancelled_run_ends_as_the_uninterrupted_one(
        cluster, swept, corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "interrupted"
    args = sweep_args(cluster, corpus_dir, cache_dir, sweep, WIDTHS[-1:])
    front = submit(cluster, args)
    run_dir = wait_for_checkpoint(sweep, front)
    job = job_id(sweep)

    # What Slurm sends signal_delay_s before the time limit (sbatch --signal=USR2@N), the way
    # submitit's own tests fake a time-out (Job._interrupt): the run checkpoints, records itself
    # interrupted, and submitit requeues the job, which resumes from that checkpoint.
    cluster.run("scancel", "--signal=USR2", job)
    resumed = wait_until(lambda: read_summary(run_dir).get("resumed_from_step"))
    logs = "".join(p.read_text() for p in (sweep / ".submitit" / job).glob("*_log.*"))
    assert f"Requeued job {job}" in logs, logs[-2000:]
    wait_for_checkpoint(sweep, front, after=resumed)

    # Cancelled (SIGTERM, SIGKILL after KillWait): the run checkpoints and records itself
    # interrupted; the job is gone for good.
    cluster.run("scancel", job)
    wait_until(lambda: not cluster.run("squeue", "-h", "-o", "%i").strip())
    interrupted = read_summary(run_dir)
    assert interrupted["status"] == "interrupted"
    assert interrupted["interrupted_step"] > resumed
    # Without accounting (sacct) submitit cannot tell that a job ended without its result:
    # the front end waits, as on any cluster without slurmdbd; Ctrl-C ends it.
    assert front.poll() is None
    front.send_signal(signal.SIGINT)
    front.communicate(timeout=TIMEOUT_S)

    finish(submit(cluster, args))  # the same sweep again
    assert read_summary(run_dir)["resumed_from_step"] == interrupted["interrupted_step"]
    assert_same_run(run_dir, run_of_width(swept, WIDTHS[-1]))
