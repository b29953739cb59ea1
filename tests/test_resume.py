"""A run is never stuck and never mixes data: damaged checkpoints, failures before the loop, a
corpus that changed on disk, and the many spellings of one corpus path."""

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.scaling_launcher import local_launcher
from hydra_plugins.scaling_launcher.local_launcher import completed
from scaling.checkpoint import CheckpointError
from scaling.config import Config, DataConfig, to_dict
from scaling.data import Batches
from scaling.record import RESTART_ENV, DataChangedError, read_replicas, read_summary, write_summary
from scaling.results import collect
from scaling.stages import pretrain as pretrain_module
from scaling.sweep import corpus_fingerprint, identity, run_id
from scaling.train import Interrupted
from tests.runs import crash_at_step, pretrain, pretrain_replicas

TRAIN = [sys.executable, "-c", "from scaling.cli import train; train()"]


def interrupted_run(config: Config, run_dir: Path, monkeypatch) -> None:
    """A run of `config` in `run_dir` that crashed at step 120 (checkpoints at 50 and 100)."""
    with monkeypatch.context() as patch:
        crash_at_step(patch, 120)
        with pytest.raises(RuntimeError, match="simulated crash"):
            pretrain(config, run_dir)
    assert checkpoint_steps(run_dir) == [50, 100]


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def damage(checkpoint: Path) -> None:
    """Truncate the checkpoint's array files to 0 bytes: a torn write, or a partial copy."""
    state = checkpoint / "state"
    files = [p for p in state.rglob("*") if p.is_file() and "d" in p.relative_to(state).parts]
    assert files
    for path in files:
        path.write_bytes(b"")


def test_no_readable_checkpoint_fails_in_one_line_naming_it(tiny_config, corpus_dir, cache_dir,
                                                            tmp_path, monkeypatch):
    config = tiny_config(checkpoint_every_steps=50)
    run = tmp_path / "run"
    interrupted_run(config, run, monkeypatch)
    for step in (50, 100):
        damage(run / "checkpoints" / str(step))

    with pytest.raises(CheckpointError, match=r"checkpoints can be restored .*: step 100: \w+"):
        pretrain(config, run)
    assert read_summary(run)["status"] == "failed"

    # The same run as `scaling-train` launches it: one line, status 2, nothing deleted.
    result = subprocess.run(
        [*TRAIN, "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.n_ctx=32",
         "train.tokens=40000", "train.batch_size=8", "train.eval_count=8", "train.eval_batches=2",
         "train.lr=3e-3", "train.checkpoint_every_steps=50", "data=files",
         f"data.paths=[{corpus_dir}/*.py]", "data.vocab_size=512", f"data.cache_dir={cache_dir}",
         f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert f"no checkpoint in {run / 'checkpoints'} can be restored" in error
    assert "step 100" in error and "step 50" in error
    summary = read_summary(run)
    assert summary["status"] == "failed" and "CheckpointError" in summary["error"]
    assert checkpoint_steps(run) == [50, 100]


@pytest.fixture
def group_config(tiny_config):
    return lambda: tiny_config(tokens=16_384, replicas=2)


def broken_data(cfg):
    raise RuntimeError("disk on fire")


def test_an_unexpected_error_preparing_the_data_is_recorded(tiny_config, group_config,
                                                            tmp_path, monkeypatch):
    config = tiny_config()
    write_summary(tmp_path / "run", {"status": "running", "config": to_dict(config)})  # killed
    monkeypatch.setattr(pretrain_module, "load_dataset", broken_data)
    with pytest.raises(RuntimeError, match="disk on fire"):
        pretrain(config, tmp_path / "run")
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: disk on fire"

    with pytest.raises(RuntimeError, match="disk on fire"):
        pretrain_replicas(group_config(), tmp_path / "group")
    group = read_replicas(tmp_path / "group")
    assert group["status"] == "failed" and group["error"] == "RuntimeError: disk on fire"


def test_a_completed_run_stays_completed_when_preparing_it_again_fails(tiny_config, tmp_path,
                                                                      monkeypatch):
    done = pretrain(tiny_config(), tmp_path)
    monkeypatch.setattr(pretrain_module, "load_dataset", broken_data)
    with pytest.raises(RuntimeError, match="disk on fire"):
        pretrain(tiny_config(), tmp_path)
    assert read_summary(tmp_path) == done


# --- the corpus: its paths' spellings, and its contents changing on disk ---------------------


def files_config(path: str) -> dict:
    return to_dict(Config(data=DataConfig(source="files", paths=[path], tokenizer="bytes")))


def test_every_spelling_of_a_corpus_path_gives_one_run_id(tmp_path, monkeypatch):
    root = Path(os.path.realpath(tmp_path))
    (root / "corpus.txt").write_text("the same corpus\n")
    (root / "other.txt").write_text("another corpus\n")
    (root / "link.txt").symlink_to(root / "corpus.txt")
    (root / "dir").mkdir()
    (root / "linked_dir").symlink_to(root)
    monkeypatch.chdir(root / "dir")
    spellings = ["../corpus.txt", "./../corpus.txt", str(root / "corpus.txt"), "../link.txt",
                 "../linked_dir/corpus.txt", str(root / "dir" / ".." / "corpus.txt")]
    assert len({run_id(files_config(p)) for p in spellings}) == 1
    assert run_id(files_config("../other.txt")) != run_id(files_config("../corpus.txt"))
    # An absolute path without symlinks is already canonical: recorded runs keep their ids.
    assert identity(files_config(str(root / "corpus.txt")))["data.paths"] == [
        str(root / "corpus.txt")]
    transfer = {**files_config("../corpus.txt")}
    transfer["data"] = {**transfer["data"], "transfer": "files", "transfer_paths": ["../link.txt"]}
    assert identity(transfer)["data.transfer_paths"] == [str(root / "corpus.txt")]
    # ... and the same data: the documents are read under the same names.
    assert len({corpus_fingerprint(DataConfig(source="files", paths=[p], tokenizer="bytes"))
                for p in spellings}) == 1


@pytest.fixture
def own_corpus(corpus_dir, tmp_path) -> Path:
    """A copy of a few files of the shared corpus, for a test to change."""
    out = tmp_path / "corpus"
    out.mkdir()
    for path in sorted(corpus_dir.glob("json_*.py")):
        shutil.copy(path, out / path.name)
    return out


@pytest.fixture
def corpus_config(tiny_config, own_corpus):
    def make(**train_overrides) -> Config:
        config = tiny_config(**train_overrides)
        return dataclasses.replace(config, data=dataclasses.replace(
            config.data, paths=[str(own_corpus / "*.py")], tokenizer="bytes"))

    return make


def change(corpus: Path) -> None:
    """Rewrite one file of the corpus, as a re-exported dataset or a `pip install` would."""
    first = sorted(corpus.glob("*.py"))[0]
    first.write_text(first.read_text() + "\n# one more line\n")


def test_a_run_whose_corpus_changed_is_not_resumed(corpus_config, own_corpus, tmp_path,
                                                    monkeypatch):
    config = corpus_config(checkpoint_every_steps=50)
    run = tmp_path / "run"
    interrupted_run(config, run, monkeypatch)
    before = read_summary(run)["corpus_cache"]
    change(own_corpus)

    with pytest.raises(DataChangedError,
                       match=rf"corpus_cache {before} -> files-bytes-\w+\): the corpus changed"):
        pretrain(config, run)
    assert read_summary(run)["corpus_cache"] == before  # what its checkpoints were trained on
    assert checkpoint_steps(run) == [50, 100]

    monkeypatch.setenv(RESTART_ENV, "1")
    restarted = pretrain(config, run)
    fresh = pretrain(config, tmp_path / "fresh")
    assert restarted["resumed_from_step"] is None
    assert restarted["corpus_cache"] == fresh["corpus_cache"] != before
    assert restarted["final_val_loss"] == fresh["final_val_loss"]


def test_a_completed_run_whose_corpus_changed_is_not_skipped(corpus_config, own_corpus, tmp_path):
    config = corpus_config()
    done = pretrain(config, tmp_path)
    assert completed(OmegaConf.structured(config), tmp_path)  # the local launcher skips it
    change(own_corpus)

    assert not completed(OmegaConf.structured(config), tmp_path)  # ... but no longer
    with pytest.raises(DataChangedError, match=rf"corpus_cache {done['corpus_cache']} -> "):
        pretrain(config, tmp_path)
    assert read_summary(tmp_path) == done  # the result on the old corpus stays as it was


def test_a_completed_group_whose_corpus_changed_is_not_skipped(corpus_config, own_corpus,
                                                               tmp_path):
    config = corpus_config(tokens=16_384, replicas=2)
    pretrain_replicas(config, tmp_path / "group")
    assert read_replicas(tmp_path / "group")["corpus_cache"].startswith("files-bytes-")
    change(own_corpus)
    assert not completed(OmegaConf.structured(config), tmp_path / "group")
    with pytest.raises(DataChangedError, match=r"corpus_cache files-bytes-\w+ -> "):
        pretrain_replicas(config, tmp_path / "group")
    assert read_replicas(tmp_path / "group")["status"] == "completed"


def test_the_local_launcher_reads_each_corpus_once_per_launch(corpus_config, tmp_path,
                                                             monkeypatch):
    config = corpus_config()
    for name in "ab":
        write_summary(tmp_path / name, {"status": "completed", "config": to_dict(config),
                                        "corpus_cache": "files-bytes-0000000000000000"})
    reads = []
    monkeypatch.setattr(local_launcher, "corpus_fingerprint",
                        lambda data, tokenizer_from=None: reads.append(data) or corpus_fingerprint(
                            data, tokenizer_from))
    fingerprints = {}
    assert not any([completed(OmegaConf.structured(config), tmp_path / name, fingerprints)
                    for name in "ab"])  # another corpus than the records name
    assert len(reads) == 1


def test_a_run_records_the_versions_it_ran_with(corpus_config, tmp_path):
    versions = pretrain(corpus_config(tokens=4096), tmp_path / "run")["versions"]
    assert set(versions) == {"python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                             "numpy"}
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    results = collect(tmp_path).results  # one column per package in the results table
    assert results["versions.jax"].tolist() == [versions["jax"]]


def test_the_local_launcher_lists_failed_runs_with_their_errors_and_retries_them(
        corpus_dir, cache_dir, tmp_path):
    sweep = tmp_path / "S"
    args = [*TRAIN, "-m", "hydra/launcher=local", "model.d_model=32,30", "model.n_head=4",
            "model.n_layer=1", "model.n_ctx=32", "train.tokens=8192", "train.batch_size=8",
            "train.eval_count=3", "train.eval_batches=1", "data=files",
            f"data.paths=[{corpus_dir}/*.py]", "data.vocab_size=512",
            f"data.cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300)
    output = first.stdout + first.stderr
    assert first.returncode != 0
    failed = next(p for p in sweep.iterdir() if p.name.startswith("L1-d30-"))
    report = output[output.index("1 of 2 runs failed"):]
    assert f"{failed}: exit 2: " in report and "model.n_head" in report.splitlines()[1]
    assert "Traceback" not in output

    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert "Launching 1 runs (1 already completed)" in again.stdout + again.stderr
    assert "1 of 2 runs failed" in again.stdout + again.stderr


def test_a_run_without_a_checkpoint_says_it_trains_from_step_0(tiny_config, tmp_path, caplog):
    write_summary(tmp_path, {"status": "interrupted", "config": to_dict(tiny_config())})
    with caplog.at_level(logging.INFO, logger="scaling"):
        pretrain(tiny_config(), tmp_path)
    assert f"{tmp_path}: no checkpoint to resume from; training from step 0" in caplog.text


def test_a_pre_timeout_signal_checkpoints_then_runs_the_handler_it_had(tiny_config, tmp_path,
                                                                      monkeypatch):
    """Slurm through submitit: its USR2 handler requeues the job and exits; it runs once the
    run has checkpointed and recorded itself, not in the middle of a step."""
    calls = []

    def requeue(signum, frame):
        calls.append(signum)

    class SignalledBatches(Batches):
        def __call__(self, step):
            if step == 20:
                os.kill(os.getpid(), signal.SIGUSR2)
            return super().__call__(step)

    monkeypatch.setattr(pretrain_module, "Batches", SignalledBatches)
    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(Interrupted) as stop:
            pretrain(tiny_config(), tmp_path)
        assert signal.getsignal(signal.SIGUSR2) is requeue  # given back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [] and stop.value.then is requeue and stop.value.step == 21
    summary = read_summary(tmp_path)
    assert summary["status"] == "interrupted" and summary["interrupted_step"] == 21
    assert 21 in checkpoint_steps(tmp_path)
