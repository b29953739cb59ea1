import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from scaling import step as step_module
from scaling.record import METRIC_COLUMNS, ResumeError, read_summary
from scaling.train import eval_steps
from tests.runs import crash_at_step, pretrain

SUMMARY_KEYS = {
    "status", "n_params", "n_params_nonembed", "n_params_embed", "vocab_size", "tokens", "flops",
    "final_train_loss", "final_val_loss", "wall_s", "tokens_per_s", "seed", "resumed_from_step",
    "config",
}


def test_eval_steps_are_log_spaced_and_end_on_the_last_step():
    steps = eval_steps(1000, 10)
    assert steps[0] == 1 and steps[-1] == 1000
    assert steps == sorted(set(steps))
    gaps = np.diff(steps)
    assert gaps[-1] > gaps[0]  # denser early, where the curve bends
    assert eval_steps(7, 20) == list(range(1, 8))


def test_a_run_learns_and_leaves_a_complete_record(tiny_config, tmp_path):
    summary = pretrain(tiny_config(), tmp_path)
    assert set(summary) >= SUMMARY_KEYS
    assert summary == read_summary(tmp_path)
    assert summary["status"] == "completed"
    assert summary["resumed_from_step"] is None
    assert summary["tokens"] == summary["steps"] * 8 * 32
    assert summary["flops"] == summary["tokens"] * summary["flops_per_token"]
    assert summary["n_params"] == summary["n_params_nonembed"] + summary["n_params_embed"]
    assert summary["config"]["model"]["d_model"] == 32

    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert tuple(metrics.columns) == METRIC_COLUMNS
    assert metrics["step"].iloc[-1] == summary["steps"]
    assert metrics["val_loss"].iloc[-1] == summary["final_val_loss"]
    positions = pd.read_parquet(tmp_path / "positions.parquet")
    assert list(positions["position"]) == list(range(1, 33))
    # More context, lower loss: the first position sees one token, the last 32.
    assert positions["loss"].iloc[-8:].mean() < positions["loss"].iloc[0]
    initial = math.log(summary["vocab_size_padded"])
    assert metrics["val_loss"].iloc[0] > initial - 0.2
    assert summary["final_val_loss"] < initial - 1.0


def test_same_config_and_seed_give_identical_losses(tiny_config, tmp_path):
    a = pretrain(tiny_config(), tmp_path / "a")
    b = pretrain(tiny_config(), tmp_path / "b")
    c = pretrain(tiny_config(seed=1), tmp_path / "c")
    assert a["final_val_loss"] == b["final_val_loss"]
    curves = [pd.read_parquet(tmp_path / r / "metrics.parquet") for r in "abc"]
    cols = ["train_loss", "val_loss", "grad_norm"]
    pd.testing.assert_frame_equal(curves[0][cols], curves[1][cols])
    assert c["final_val_loss"] != a["final_val_loss"]


def test_a_crashed_run_resumes_to_the_same_result(tiny_config, tmp_path, monkeypatch):
    reference = pretrain(tiny_config(), tmp_path / "reference")
    config = tiny_config(checkpoint_every_steps=50)

    with monkeypatch.context() as patch:
        crash_at_step(patch, 120)
        with pytest.raises(RuntimeError, match="simulated crash"):
            pretrain(config, tmp_path / "run")
    crashed = read_summary(tmp_path / "run")
    assert crashed["status"] == "failed" and "simulated crash" in crashed["error"]

    resumed = pretrain(config, tmp_path / "run")
    assert resumed["resumed_from_step"] == 100
    assert resumed["final_val_loss"] == reference["final_val_loss"]
    ref_curve = pd.read_parquet(tmp_path / "reference" / "metrics.parquet")
    run_curve = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    pd.testing.assert_frame_equal(ref_curve[["step", "train_loss", "val_loss"]],
                                  run_curve[["step", "train_loss", "val_loss"]])


def test_a_finished_run_is_not_trained_again(tiny_config, tmp_path):
    first = pretrain(tiny_config(), tmp_path)
    again = pretrain(tiny_config(log_every_steps=3), tmp_path)  # bookkeeping may change
    assert again == first


def test_a_directory_of_another_run_is_refused(tiny_config, tmp_path):
    pretrain(tiny_config(), tmp_path)
    with pytest.raises(ResumeError, match=r"train.lr: 0.003 -> 0.001"):
        pretrain(tiny_config(lr=1e-3), tmp_path)


def test_a_diverging_run_ends_with_status_and_step(tiny_config, tmp_path):
    summary = pretrain(tiny_config(lr=1e30, grad_clip=0.0), tmp_path)
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_step"] < summary["steps"]
    assert summary["final_val_loss"] is None
    assert read_summary(tmp_path)["status"] == "diverged"


def test_a_transfer_corpus_is_scored_at_every_evaluation(tiny_config, tmp_path):
    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, transfer="prose"))
    summary = pretrain(cfg, tmp_path)
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert tuple(metrics.columns) == (*METRIC_COLUMNS, "transfer_loss")
    assert np.isfinite(metrics["transfer_loss"]).all() and (metrics["transfer_loss"] > 0).all()
    assert summary["transfer_loss"] == metrics["transfer_loss"].iloc[-1]
    assert metrics["transfer_loss"].iloc[-1] < metrics["transfer_loss"].iloc[0]
    assert summary["transfer_corpus"] == "prose" and summary["transfer_tokens"] > 10_000
    assert read_summary(tmp_path)["transfer_loss"] == summary["transfer_loss"]


def test_the_noise_scale_estimator_recovers_a_known_gradient_noise():
    # E|g_b|^2 = |G|^2 + tr(S)/b: with |G|^2 = 1 and tr(S) = 100 per row, B_simple = 100 rows
    small, big = 1 + 100 / 4, 1 + 100 / 16
    assert step_module.noise_scale(small, big, 4, 4, tokens_per_row=32) == pytest.approx(3200)
    assert math.isnan(step_module.noise_scale(1.0, 1.0, 4, 4, 32))  # no noise measured


def test_the_gradient_noise_scale_is_recorded_at_every_evaluation(tiny_config, tmp_path):
    summary = pretrain(tiny_config(noise_scale_batches=2), tmp_path)
    assert summary["status"] == "completed"
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert tuple(metrics.columns) == (*METRIC_COLUMNS, "noise_scale")
    measured = metrics["noise_scale"].dropna()
    assert len(measured) >= len(metrics) // 2 and (measured > 0).all()
    # a training batch is 256 tokens: the measured noise scale is of that order, not 0 or 1e9
    assert 1 < measured.median() < 1e6
