"""train.replicas: K models in one vmapped step, each recorded as the run it would be alone."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from hydra_plugins.scaling_launcher.local_launcher import completed
from scaling import train as train_module
from scaling.bench import bench
from scaling.config import ConfigError, kaplan_lr, replica_configs, to_dict, validate
from scaling.data import Batches
from scaling.record import read_replicas, read_summary
from scaling.results import collect
from scaling.stages import pretrain as pretrain_module
from scaling.sweep import run_id
from scaling.train import Interrupted
from tests.runs import pretrain, pretrain_replicas

CURVE = ["step", "tokens", "train_loss", "val_loss", "grad_norm"]


@pytest.fixture
def group_config(tiny_config):
    """Two tiny replicas, 64 steps each."""

    def make(**train_overrides):
        return tiny_config(**{"tokens": 16_384, "replicas": 2, **train_overrides})

    return make


def run_dir(parent, config):
    """The config-pure directory of a run (or group) under `parent`, as Hydra's sweeps name it."""
    return parent / run_id(to_dict(config))


def test_replica_configs_are_the_standalone_runs_of_each_model(tiny_config):
    group = tiny_config(replicas=3, seed=5, lr=None, replica_lr_scales=[1.0, 0.5, 2.0])
    configs = replica_configs(group, peak_lr=1e-3)
    assert [c.train.seed for c in configs] == [5, 6, 7]
    assert [c.train.lr for c in configs] == [None, 5e-4, 2e-3]  # unscaled: still Kaplan's rule
    assert all(c.train.replicas == 1 and c.train.replica_lr_scales == [] for c in configs)
    assert to_dict(configs[0]) == to_dict(tiny_config(seed=5, lr=None))
    assert [c.train.lr for c in replica_configs(tiny_config(replicas=2), 3e-3)] == [3e-3, 3e-3]
    # the new keys at their defaults leave the ids of runs recorded before them as they were
    plain = to_dict(tiny_config())
    del plain["train"]["replicas"], plain["train"]["replica_lr_scales"]
    assert run_id(plain) == run_id(to_dict(tiny_config()))
    assert "-s0-x2-" in run_id(to_dict(tiny_config(replicas=2)))


@pytest.mark.parametrize(("overrides", "field"), [
    ({"replicas": 0}, "train.replicas"),
    ({"replicas": 2, "replica_lr_scales": [1.0]}, "train.replica_lr_scales"),
    ({"replicas": 2, "replica_lr_scales": [1.0, 0.0]}, "train.replica_lr_scales"),
    ({"replicas": 2, "parallel": "dp"}, "train.replicas"),
])
def test_bad_replica_settings_are_named(tiny_config, overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(tiny_config(**overrides))


def test_each_replica_equals_its_own_run(group_config, tmp_path):
    config = group_config(replica_lr_scales=[1.0, 0.5])
    group = run_dir(tmp_path / "S", config)
    summaries = pretrain_replicas(config, group)

    for i, replica_config in enumerate(replica_configs(config, peak_lr=3e-3)):
        record = run_dir(tmp_path / "S", replica_config)
        alone = pretrain(replica_config, tmp_path / f"alone{i}")
        together = read_summary(record)
        assert together == summaries[i]
        assert together["config"] == to_dict(replica_config) == alone["config"]
        assert together["status"] == alone["status"] == "completed"
        assert together["seed"] == i and together["peak_lr"] == alone["peak_lr"]
        assert together["replicas"] == 2 and together["replica_group"] == group.name
        assert together["group_tokens_per_s"] == pytest.approx(2 * together["tokens_per_s"])
        for key in ("final_train_loss", "final_val_loss", "best_val_loss"):
            assert together[key] == pytest.approx(alone[key], rel=1e-5), key
        curves = [pd.read_parquet(d / "metrics.parquet") for d in (record, tmp_path / f"alone{i}")]
        assert list(curves[0].columns) == list(curves[1].columns)
        pd.testing.assert_frame_equal(curves[0][CURVE], curves[1][CURVE], rtol=1e-5)
        np.testing.assert_allclose(curves[0]["lr"], curves[1]["lr"], rtol=1e-6)
        positions = [pd.read_parquet(d / "positions.parquet") for d in (record,
                                                                        tmp_path / f"alone{i}")]
        np.testing.assert_allclose(positions[0]["loss"], positions[1]["loss"], rtol=1e-5)
    lrs = [pd.read_parquet(run_dir(tmp_path / "S", c) / "metrics.parquet")["lr"]
           for c in replica_configs(config, peak_lr=3e-3)]
    np.testing.assert_allclose(lrs[1], 0.5 * lrs[0], rtol=1e-6)


def test_a_group_leaves_one_ordinary_run_per_model(group_config, tmp_path, monkeypatch):
    config = group_config(replica_lr_scales=[1.0, 2.0])
    sweep = tmp_path / "S"
    group = run_dir(sweep, config)
    (group / ".hydra").mkdir(parents=True)  # as Hydra leaves it
    summaries = pretrain_replicas(config, group)
    ids = [run_id(to_dict(c)) for c in replica_configs(config, peak_lr=3e-3)]

    assert not (group / "summary.json").exists() and (group / "checkpoints").is_dir()
    record = read_replicas(group)
    assert record["status"] == "completed" and record["config"] == to_dict(config)
    assert record["replicas"] == [{"run_id": i, "status": "completed"} for i in ids]
    assert summaries[0]["final_val_loss"] != summaries[1]["final_val_loss"]
    collected = collect(sweep)
    assert collected.problems == []
    assert sorted(collected.results["run_id"]) == sorted(ids)
    assert list(collected.results.sort_values("seed")["train.lr"]) == [3e-3, 6e-3]
    assert set(collected.curves["run_id"]) == set(ids)
    assert completed(OmegaConf.structured(config), group)  # the local launcher skips it

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(train_module, "_train", no_training)
    assert pretrain_replicas(config, group) == summaries  # re-launching the group: a no-op
    replica = replica_configs(config, peak_lr=3e-3)[1]
    assert pretrain(replica, sweep / ids[1]) == summaries[1]  # so is the model's own run


def test_a_group_whose_models_all_ran_alone_trains_nothing(group_config, tmp_path, monkeypatch):
    config = group_config()
    sweep = tmp_path / "S"
    alone = [pretrain(c, run_dir(sweep, c)) for c in replica_configs(config, peak_lr=3e-3)]
    monkeypatch.setattr(train_module, "_train", lambda *a, **k: pytest.fail("trained again"))
    assert pretrain_replicas(config, run_dir(sweep, config)) == alone
    assert read_replicas(run_dir(sweep, config))["status"] == "completed"


def test_a_crashed_group_resumes_to_the_same_result(group_config, tmp_path, monkeypatch):
    reference_config = group_config()
    reference = pretrain_replicas(reference_config, run_dir(tmp_path / "R", reference_config))
    config = group_config(checkpoint_every_steps=20)
    group = run_dir(tmp_path / "S", config)

    class CrashingBatches(Batches):
        def __call__(self, step):
            if step == 49:
                raise RuntimeError("simulated crash")
            return super().__call__(step)

    monkeypatch.setattr(pretrain_module, "Batches", CrashingBatches)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain_replicas(config, group)
    crashed = read_replicas(group)
    assert crashed["status"] == "failed" and "simulated crash" in crashed["error"]
    assert [r["status"] for r in crashed["replicas"]] == ["failed", "failed"]

    monkeypatch.setattr(pretrain_module, "Batches", Batches)
    resumed = pretrain_replicas(config, group)
    for before, after in zip(reference, resumed, strict=True):
        assert after["resumed_from_step"] == 40
        assert after["final_val_loss"] == before["final_val_loss"]
    for c in replica_configs(config, peak_lr=3e-3):
        curves = [pd.read_parquet(run_dir(parent, c) / "metrics.parquet")[CURVE]
                  for parent in (tmp_path / "R", tmp_path / "S")]
        pd.testing.assert_frame_equal(*curves)


def test_a_diverging_replica_is_recorded_as_its_own_run_would_be(group_config, tmp_path):
    config = group_config(grad_clip=0.0, replica_lr_scales=[1.0, 1e33])
    summaries = pretrain_replicas(config, run_dir(tmp_path / "S", config))
    assert summaries[0]["status"] == "completed"
    assert summaries[1]["status"] == "diverged" and summaries[1]["final_val_loss"] is None

    diverging = replica_configs(config, peak_lr=3e-3)[1]
    alone = pretrain(diverging, tmp_path / "alone")
    assert alone["status"] == "diverged"
    assert summaries[1]["diverged_step"] == alone["diverged_step"]
    steps = [pd.read_parquet(d / "metrics.parquet")["step"].tolist()
             for d in (run_dir(tmp_path / "S", diverging), tmp_path / "alone")]
    assert steps[0] == steps[1]

    both = group_config(grad_clip=0.0, replica_lr_scales=[1e33, 1e33])
    assert [s["status"] for s in pretrain_replicas(both, run_dir(tmp_path / "B", both))] == [
        "diverged", "diverged"]


def test_one_scaled_replica_is_a_group_of_one(tiny_config, tmp_path):
    config = tiny_config(tokens=4096, replica_lr_scales=[0.5])
    (summary,) = pretrain_replicas(config, run_dir(tmp_path, config))
    (replica,) = replica_configs(config, peak_lr=3e-3)
    assert summary == read_summary(run_dir(tmp_path, replica))
    assert summary["status"] == "completed" and summary["config"]["train"]["lr"] == 1.5e-3


def test_bench_counts_every_replica(group_config):
    result = bench(group_config(replicas=3), warmup=1, steps=2)
    assert result["replicas"] == 3
    assert result["step_ms"] == pytest.approx(3 * 8 * 32 / result["tokens_per_s"] * 1e3)
    assert json.loads(json.dumps(result)) == result


def test_scaling_train_rejects_replicas_with_data_parallelism(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from scaling.cli import train; train()", "train.replicas=2",
         "train.parallel=dp", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "train.replicas" in result.stderr and "train.parallel=none" in result.stderr
    assert "Traceback" not in result.stderr


def test_replicas_scale_the_lr_of_kaplans_rule(group_config):
    config = group_config(lr=None, replica_lr_scales=[1.0, 0.5])
    replicas = pretrain_module.prepare(config).replicas
    peak = replicas[0].stage.record["peak_lr"]
    assert peak == kaplan_lr(replicas[0].stage.record["n_params_nonembed"])
    assert replicas[1].stage.record["peak_lr"] == 0.5 * peak
    assert [r.config["train"]["lr"] for r in replicas] == [None, 0.5 * peak]


def test_a_group_stopped_by_sigterm_is_recorded_interrupted_and_resumes(group_config, tmp_path,
                                                                        monkeypatch):
    reference_config = group_config()
    reference = pretrain_replicas(reference_config, run_dir(tmp_path / "R", reference_config))
    config = group_config()
    group = run_dir(tmp_path / "S", config)

    class TerminatedBatches(Batches):
        def __call__(self, step):
            if step == 30:  # batch 30 is read for step 31, as a scheduler's SIGTERM comes
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(step)

    monkeypatch.setattr(pretrain_module, "Batches", TerminatedBatches)
    with pytest.raises(Interrupted) as stop:
        pretrain_replicas(config, group)
    assert stop.value.step == 31 and stop.value.exit_status == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is given back
    stopped = read_replicas(group)
    assert stopped["status"] == "interrupted" and stopped["interrupted_step"] == 31
    assert [r["status"] for r in stopped["replicas"]] == ["interrupted", "interrupted"]

    monkeypatch.setattr(pretrain_module, "Batches", Batches)
    resumed = pretrain_replicas(config, group)
    for before, after in zip(reference, resumed, strict=True):
        assert after["status"] == "completed" and after["resumed_from_step"] == 31
        assert after["final_val_loss"] == before["final_val_loss"]
