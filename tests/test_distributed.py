"""Training across processes (`scaling.distributed`): two CPU processes on this machine, one
device each, joined through a coordinator on a free local port (gloo collectives), train as one
process does, stop together when one of them gets a signal or dies, resume together from their
checkpoint, and leave one record.

Each run is `scaling-train` as a user launches it, in its own subprocess: JAX joins processes
once, before it starts its devices, so the pytest process cannot be one of them.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scaling.config import (
    Config,
    ConfigError,
    DataConfig,
    DistributedConfig,
    ModelConfig,
    TrainConfig,
    to_dict,
    validate,
)
from scaling.distributed import SLURM_STEP_TASKS, wanted
from scaling.sweep import run_id
from tests.runs import pretrain

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH, N_CTX = 20, 8, 32
CURVE = ["step", "train_loss", "val_loss", "grad_norm"]
WORKER = "from tests.test_distributed import worker; worker()"


def config(corpus_dir: Path, cache_dir: Path, **train) -> Config:
    """A byte-level model of 1 block, 20 steps of 8 sequences, weights and Adam moments split
    over the devices (FSDP: the sharded state is what each process saves and restores)."""
    base = dict(tokens=STEPS * BATCH * N_CTX, batch_size=BATCH, eval_count=6, eval_batches=2,
                lr=3e-3, parallel="fsdp", checkpoint_every_steps=5, loggers=[])
    return Config(
        model=ModelConfig(n_layer=1, d_model=32, n_head=2, n_ctx=N_CTX),
        data=DataConfig(source="files", paths=[f"{corpus_dir}/*.py"], tokenizer="bytes",
                        cache_dir=str(cache_dir)),
        train=TrainConfig(**{**base, **train}),
    )


def overrides(corpus_dir: Path, cache_dir: Path, run_dir: Path,
              tensorboard: bool = False) -> list[str]:
    """`config` as scaling-train's command line; TensorBoard only where asked (tensorboardX
    imports torch where it is installed: seconds of each launch)."""
    return [f"train.loggers=[{'tensorboard' if tensorboard else ''}]",
            "model.n_layer=1", "model.d_model=32", "model.n_head=2", f"model.n_ctx={N_CTX}",
            f"train.tokens={STEPS * BATCH * N_CTX}", f"train.batch_size={BATCH}",
            "train.eval_count=6", "train.eval_batches=2", "train.lr=3e-3", "train.parallel=fsdp",
            "train.checkpoint_every_steps=5", "data=files", f"data.paths=[{corpus_dir}/*.py]",
            "data.tokenizer=bytes", f"data.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]


def worker() -> None:
    """scaling-train, in a subprocess. Its first arguments: a step whose batch it reads only
    once a file, the second, exists (0: no such step), saying it waits in a file of that name
    and its pid; and the pace of its hooks' wall clock (2: twice real time, as the clock of
    another host may drift)."""
    pause_at, release, pace = int(sys.argv.pop(1)), Path(sys.argv.pop(1)), float(sys.argv.pop(1))
    if pause_at:
        from scaling.stages import pretrain as pretrain_stage

        class Paused(pretrain_stage.Batches):
            def __call__(self, step: int) -> np.ndarray:
                if step == pause_at:
                    waiting(release, os.getpid()).touch()
                    while not release.exists():
                        time.sleep(0.05)
                return super().__call__(step)

        pretrain_stage.Batches = Paused
    if pace != 1:
        from scaling import hooks

        class Drifting:
            """The time module, its monotonic clock at `pace`."""

            def __getattr__(self, name: str):
                return getattr(time, name)

            @staticmethod
            def monotonic() -> float:
                return pace * time.monotonic()

        hooks.time = Drifting()
    from scaling.cli import train

    train()


def waiting(release: Path, pid: int) -> Path:
    """The file that says process `pid` waits for `release`."""
    return release.with_name(f"{release.name}.{pid}")


def wait_for(paths: list[Path], procs: list[subprocess.Popen], what: str) -> None:
    """Return once all `paths` exist (`what` they say, for a failure), every process running."""
    deadline = time.monotonic() + 240
    while not all(path.exists() for path in paths):
        assert all(proc.poll() is None for proc in procs), procs[0].communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int, devices: int = 1, pause_at: int = 0,
           release: Path = Path("release"), drifting: bool = False) -> list[subprocess.Popen]:
    """`processes` processes of `scaling-train args`, each with `devices` CPU devices, joined
    through a coordinator on a free port when there are several; `worker` says what
    `pause_at` and `release` do; with `drifting`, process 1's clock runs at twice the pace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= {"JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    port = free_port()
    joined = [f"train.distributed.coordinator_address=localhost:{port}",
              f"train.distributed.num_processes={processes}"] if processes > 1 else []
    return [subprocess.Popen(
        [sys.executable, "-c", WORKER, str(pause_at), str(release),
         "2" if drifting and i == 1 else "1", *args, *joined,
         *([f"train.distributed.process_id={i}"] if processes > 1 else [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        for i in range(processes)]


def finish(procs: list[subprocess.Popen]) -> list[str]:
    """Each process's output (the log lines Hydra prints), once all have exited 0."""
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, err in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return outputs


def curve(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "metrics.parquet")[CURVE]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(corpus_dir, cache_dir, tmp_path_factory) -> dict:
    """The same config trained by one process on one device (here), one process on two
    devices, and two processes of one device each, all at once. The two processes also save
    a checkpoint every 0.5 s of wall time by clocks that drift apart (process 1's runs at
    twice the pace): they must agree on the steps, or one saves alone and gloo aborts both."""
    out = tmp_path_factory.mktemp("distributed")
    started = time.perf_counter()
    two_devices = launch(overrides(corpus_dir, cache_dir, out / "two_devices"), 1, devices=2)
    two_processes = launch([*overrides(corpus_dir, cache_dir, out / "two_processes", True),
                            "train.checkpoint_every_seconds=0.5"], 2, drifting=True)
    pretrain(config(corpus_dir, cache_dir), out / "one")
    finish(two_devices)
    logs = finish(two_processes)
    return {"dirs": out, "logs": logs, "wall_s": time.perf_counter() - started}


def test_two_processes_train_as_one_process_does(runs):
    one = curve(runs["dirs"] / "one")
    assert len(one) == 6 and one["step"].iloc[-1] == STEPS
    for name in ("two_devices", "two_processes"):
        other = curve(runs["dirs"] / name)
        assert other["step"].tolist() == one["step"].tolist()
        for column in ("train_loss", "val_loss", "grad_norm"):
            np.testing.assert_allclose(other[column], one[column], rtol=1e-5,
                                       err_msg=f"{name}: {column}")
    record = summary(runs["dirs"] / "two_processes")
    assert record["status"] == "completed" and record["n_devices"] == 2


def test_only_process_0_records_logs_and_reports_progress(runs):
    run_dir = runs["dirs"] / "two_processes"
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    assert not list(run_dir.glob(".*.tmp"))
    first, second = runs["logs"]
    assert "val_loss" in first and "done: final val_loss" in first
    assert "val_loss" not in second and "step " not in second


def test_a_signalled_then_a_killed_process_stop_both_and_both_resume(runs, corpus_dir,
                                                                     cache_dir, tmp_path):
    """Slurm signals a job's tasks one by one, and a user may signal or kill one.

    Process 1 alone gets SIGTERM while both wait for batch 13: both stop after step 13, with
    its checkpoint, recorded as interrupted. (Each stopping on its own flag, process 1 stopped
    at 13 while process 0 went on to 14: their collectives mismatched, gloo aborted process 1,
    process 0 failed, and 13 had no checkpoint.) Relaunched,
    both wait for batch 17, after checkpoint 15, and process 1 is SIGKILLed: process 0, let go
    on, fails its next collective at once (gloo: connection reset by peer) and records the run
    as failed. (It would then wait in JAX's shutdown for the dead one until the coordination
    service's heartbeat timeout, 100 s, and abort: the test kills it.) Relaunched again, both
    resume from 15 and end as the uninterrupted run.
    """
    run_dir = runs["dirs"] / "stopped"
    args = overrides(corpus_dir, cache_dir, run_dir)
    release = tmp_path / "signalled"
    procs = launch(args, 2, pause_at=12, release=release)
    wait_for([waiting(release, proc.pid) for proc in procs], procs, "pause before step 13")
    procs[1].send_signal(signal.SIGTERM)
    assert any("SIGTERM received" in line for line in procs[1].stdout)  # read up to it
    release.touch()
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
        assert "interrupted at step 13 (SIGTERM)" in output
    record = summary(run_dir)
    assert record["status"] == "interrupted" and record["interrupted_step"] == 13
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["10", "13"]

    release = tmp_path / "killed"
    procs = launch(args, 2, pause_at=16, release=release)
    wait_for([waiting(release, proc.pid) for proc in procs], procs, "pause before step 17")
    wait_for([run_dir / "checkpoints" / "15"], procs, "committed checkpoint of step 15")
    procs[1].send_signal(signal.SIGKILL)
    procs[1].communicate(timeout=60)
    release.touch()
    deadline = time.monotonic() + 60
    while summary(run_dir)["status"] == "running":
        assert time.monotonic() < deadline, "process 0 went on without process 1"
        time.sleep(0.2)
    record = summary(run_dir)
    assert record["status"] == "failed" and record["resumed_from_step"] == 13
    procs[0].send_signal(signal.SIGKILL)
    procs[0].communicate(timeout=60)

    finish(launch(args, 2))  # another coordinator port: not part of the run's identity
    resumed = summary(run_dir)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == 15
    assert resumed["final_val_loss"] == summary(runs["dirs"] / "two_processes")["final_val_loss"]
    pd.testing.assert_frame_equal(curve(run_dir), curve(runs["dirs"] / "two_processes"))


@pytest.mark.parametrize(("train", "field"), [
    ({"num_processes": 0}, "train.distributed.num_processes"),
    ({"num_processes": 2, "process_id": 2}, "train.distributed.process_id"),
    ({"process_id": -1}, "train.distributed.process_id"),
    ({"enabled": "maybe"}, "train.distributed.enabled"),
    ({"num_processes": 2, "batch_size": 9}, "train.batch_size"),
    ({"num_processes": 2, "parallel": "none"}, "train.parallel"),
])
def test_bad_distributed_settings_are_refused_naming_the_key(corpus_dir, cache_dir, train,
                                                             field):
    batch = {k: train.pop(k) for k in ("batch_size", "parallel") if k in train}
    cfg = config(corpus_dir, cache_dir, **batch)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, distributed=DistributedConfig(**train)))
    with pytest.raises(ConfigError, match=rf"^{field}="):
        validate(cfg)


def test_a_process_id_out_of_range_exits_2_in_one_line_writing_nothing(corpus_dir, cache_dir,
                                                                       tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", "from scaling.cli import train; train()",
         *overrides(corpus_dir, cache_dir, run_dir), "train.distributed.num_processes=2",
         "train.distributed.process_id=2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "train.distributed.process_id=2 is invalid" in result.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize(("settings", "environ", "joins"), [
    ({}, {}, False),  # a plain run
    ({}, {SLURM_STEP_TASKS: "4"}, True),  # srun -n 4
    ({}, {SLURM_STEP_TASKS: "1", "SLURM_NTASKS": "4"}, False),  # an sbatch -n 4 script's Python
    ({"num_processes": 2}, {}, True),
    ({"num_processes": 1}, {SLURM_STEP_TASKS: "4"}, False),  # the settings win
    ({"enabled": "false"}, {SLURM_STEP_TASKS: "4"}, False),
    ({"enabled": True}, {}, True),  # `enabled: true` in YAML is a bool
])
def test_auto_joins_where_the_settings_or_srun_say_several_processes(settings, environ, joins):
    assert wanted(DistributedConfig(**settings), environ) is joins


def test_where_a_run_trains_is_not_part_of_its_identity(corpus_dir, cache_dir):
    """Runs recorded before train.distributed existed keep their ids, and a run relaunched on
    another coordinator or number of processes is the same run (it resumes)."""
    alone = to_dict(config(corpus_dir, cache_dir))
    joined = to_dict(dataclasses.replace(config(corpus_dir, cache_dir), train=dataclasses.replace(
        config(corpus_dir, cache_dir).train, distributed=DistributedConfig(
            enabled="true", coordinator_address="host0:1234", num_processes=4, process_id=3,
            local_device_ids=[3]))))
    recorded_before = {**alone, "train": {k: v for k, v in alone["train"].items()
                                          if k != "distributed"}}
    assert run_id(joined) == run_id(alone) == run_id(recorded_before)
