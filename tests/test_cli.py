"""`scaling-train` as users type it: --help, fast config errors, SIGKILL or Ctrl-C, resume."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from scaling.config import (
    Config,
    DataConfig,
    DistributedConfig,
    FreezeConfig,
    ModelConfig,
    StageConfig,
    TrainConfig,
    field_comments,
    to_dict,
)
from scaling.sweep import flatten

TRAIN = [sys.executable, "-c", "from scaling.cli import train; train()"]
BIN = Path(sys.executable).parent


def scaling_train(*overrides: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN, *overrides], capture_output=True, text=True, timeout=300,
                          **kwargs)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["model.d_model=-8"], "model.d_model"),
        (["model.d_model=64", "model.n_head=3"], "model.n_head"),
        (["model.no_such_key=1"], "model.no_such_key"),
        (["+model.no_such_key=1"], "model.no_such_key"),
        (["model.d_model=abc"], "model.d_model"),
        (["train.tokens=100"], "train.tokens"),
        (["data=files"], "data.paths"),
        (["data.transfer=web"], "data.transfer"),
        (["data.transfer=files"], "data.transfer_paths"),
    ],
)
def test_bad_config_fails_fast_naming_the_field(overrides, field, tmp_path):
    started = time.perf_counter()
    result = scaling_train(*overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert field in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 8
    assert not (tmp_path / "run").exists(), "a refused launch leaves no stub run directory"
    assert time.perf_counter() - started < 30


def test_a_refused_launch_keeps_a_directory_that_holds_a_run(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    result = scaling_train("model.d_model=-8", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert (tmp_path / "summary.json").exists() and (tmp_path / ".hydra").is_dir()


def test_help_lists_every_key_with_the_schemas_comment():
    result = subprocess.run([str(BIN / "scaling-train"), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("scaling-train [KEY=VALUE ...]: train one model")
    assert "model: n100k, n12k" in result.stdout  # the config groups
    for key, words in [("model.n_layer=2", "Transformer blocks"),
                       ("data.paths=[]", "globs, for source=files, jsonl, comparisons"),
                       ("data.cache_dir=null", "$SCALING_CACHE"),
                       ("train.checkpoint_every_seconds=600.0", "and every this much wall"),
                       ("stage.freeze.blocks=0", "the lowest k Transformer blocks")]:
        assert any(line.split() == [key, *words.split()] or
                   (line.split()[:1] == [key] and words in line) for line in lines), key
    keys = {line.split()[0] for line in lines if re.match(r"  \w", line)}
    flat = set(flatten(to_dict(Config())))
    assert {key.split("=")[0] for key in keys} == flat

    bench = subprocess.run([str(BIN / "scaling-bench"), "--help"], capture_output=True,
                           text=True, timeout=60)
    assert bench.returncode == 0, bench.stderr
    assert bench.stdout.startswith("scaling-bench [KEY=VALUE ...]: time the trainer's own step")
    assert "one JSON\nline" in bench.stdout or "one JSON line" in bench.stdout
    assert "model.n_layer=2" in bench.stdout


def test_every_key_has_a_comment_in_the_schema():
    for schema in (ModelConfig, DataConfig, TrainConfig, StageConfig, FreezeConfig,
                   DistributedConfig):
        comments = field_comments(schema)
        assert all(comments.get(f.name) for f in dataclasses.fields(schema)), schema


def test_missing_corpus_path_is_named_before_training(tmp_path):
    missing = tmp_path / "no_such_dir" / "*.txt"
    result = scaling_train("data=files", f"data.paths=[{missing}]",
                           f"data.cache_dir={tmp_path / 'cache'}",
                           f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and str(missing) in summary["error"]


def _run_args(corpus_dir: Path, cache_dir: Path, run_dir: Path) -> list[str]:
    return [
        "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.n_ctx=32",
        "train.tokens=120000", "train.batch_size=8", "train.checkpoint_every_steps=25",
        "train.eval_count=10", "train.eval_batches=2", "data=files",
        f"data.paths=[{corpus_dir}/*.py]", "data.vocab_size=512", f"data.cache_dir={cache_dir}",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def uninterrupted(corpus_dir, cache_dir, tmp_path_factory) -> Path:
    """The run of `_run_args` trained without a stop: its directory."""
    run_dir = tmp_path_factory.mktemp("reference")
    reference = scaling_train(*_run_args(corpus_dir, cache_dir, run_dir))
    assert reference.returncode == 0, reference.stderr
    return run_dir


def _start_and_signal(args: list[str], run_dir: Path, signum: int) -> tuple[int, str]:
    """Launch `scaling-train` and send `signum` to it (its process group, as a terminal's
    Ctrl-C does) once it has saved its first checkpoint; its exit status and stderr."""
    proc = subprocess.Popen([*TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.slow  # in CI, tests/faults/test_kill.py SIGKILLs runs at every moment
def test_sigkill_mid_training_then_rerun_matches_uninterrupted(corpus_dir, cache_dir, tmp_path,
                                                               uninterrupted):
    expected = json.loads((uninterrupted / "summary.json").read_text())
    run_dir = tmp_path / "killed"
    args = _run_args(corpus_dir, cache_dir, run_dir)
    _start_and_signal(args, run_dir, signal.SIGKILL)
    interrupted = json.loads((run_dir / "summary.json").read_text())
    assert interrupted["status"] == "running", "the run finished before it could be killed"

    resumed = scaling_train(*args)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert 0 < summary["resumed_from_step"] < summary["steps"]
    assert summary["final_val_loss"] == expected["final_val_loss"]


def test_ctrl_c_checkpoints_records_and_the_relaunch_ends_with_the_same_losses(
        corpus_dir, cache_dir, tmp_path, uninterrupted):
    run_dir = tmp_path / "interrupted"
    args = _run_args(corpus_dir, cache_dir, run_dir)
    status, stderr = _start_and_signal(args, run_dir, signal.SIGINT)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", stderr
    step = summary["interrupted_step"]
    assert 0 < step < summary["steps"]
    assert status == 128 + signal.SIGINT
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"-c: interrupted at step {step} (SIGINT); run the same command to resume")
    assert str(step) in os.listdir(run_dir / "checkpoints")

    resumed = scaling_train(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} from step {step}" in resumed.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] == step
    assert resumed.stdout.strip().splitlines()[-1].endswith(
        f"done: final val_loss {summary['final_val_loss']:.4f}, best "
        f"{summary['best_val_loss']:.4f} at step {summary['best_val_step']} of "
        f"{summary['steps']}; record in {run_dir / 'summary.json'}")
    curve = ["step", "train_loss", "val_loss"]
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "metrics.parquet")[curve],
                                  pd.read_parquet(uninterrupted / "metrics.parquet")[curve])
