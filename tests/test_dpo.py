"""stage=dpo (Rafailov et al. 2023): the loss against a direct computation, its value at the
reference, the response-only weighting, an SFT policy learning easy comparisons on the shared
loop, and the inputs it refuses."""

import sys
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from scaling.batch import PreferenceBatch
from scaling.config import DataConfig, StageConfig
from scaling.model import (
    GPT,
    GPTConfig,
    chosen_kl,
    dpo_accuracy,
    dpo_loss,
    dpo_margins,
    dpo_mean_margin,
    init_params,
    sequence_logprobs,
)
from scaling.record import read_summary
from scaling.rlhf.windows import ComparisonWindows
from scaling.stages.dpo import reference_logprobs
from scaling.stages.parent import load_run
from tests.runs import pretrain
from tests.test_reward import _easy, _empty_field, refused, run_config

CFG = GPTConfig(vocab_size=64, n_layer=2, d_model=16, n_head=2, n_ctx=12, d_ff=32)
N_CTX = 128
BETA = 0.5
BIN = Path(sys.executable).parent


def _windows(seed: int = 0, m: int = 5) -> ComparisonWindows:
    """m random comparisons: prompts of 2-4 tokens after the eos, responses of 1-5 tokens."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, (2, m, CFG.n_ctx)).astype(np.int32)
    start = rng.integers(3, 6, m).astype(np.int32)
    last = (start + rng.integers(1, 6, (2, m))).astype(np.int32)
    return ComparisonWindows(tokens[0], tokens[1], last[0], last[1], start, dropped=0)


def _batch(windows: ComparisonWindows, ref_seed: int = 1) -> PreferenceBatch:
    chosen_w, rejected_w = windows.response_weights()
    ref = np.random.default_rng(ref_seed).normal(-20, 3, (2, len(windows))).astype(np.float32)
    return PreferenceBatch(windows.chosen, windows.rejected, chosen_w, rejected_w, ref[0], ref[1],
                           np.ones(len(windows), np.float32))


def _logprob_by_hand(params, ids, start, last) -> np.ndarray:
    """log π(window[start:last+1] | window[:start]) with numpy, token by token."""
    logits = np.asarray(GPT(CFG).apply({"params": params}, ids[:, :-1]), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.array([sum(logp[i, t - 1, ids[i, t]] for t in range(start[i], last[i] + 1))
                     for i in range(len(ids))])


def test_the_loss_matches_a_direct_computation():
    params, windows = init_params(CFG, 0), _windows()
    batch = _batch(windows)
    weights = np.array([1, 1, 0, 1, 1], np.float32)  # a filler row counts for nothing
    batch = replace(batch, weights=weights)
    lp_c = _logprob_by_hand(params, windows.chosen, windows.response_start, windows.chosen_last)
    lp_r = _logprob_by_hand(params, windows.rejected, windows.response_start,
                            windows.rejected_last)
    margin = BETA * ((lp_c - batch.ref_chosen) - (lp_r - batch.ref_rejected))
    assert np.abs(margin).min() > 0.01
    mean = lambda x: np.sum(weights * x) / weights.sum()  # noqa: E731
    np.testing.assert_allclose(dpo_margins(CFG, BETA, params, batch), margin, rtol=1e-4)
    assert float(dpo_loss(CFG, BETA, params, batch)) == pytest.approx(
        mean(np.log1p(np.exp(-margin))), rel=1e-5)
    assert float(dpo_accuracy(CFG, BETA, params, batch)) == pytest.approx(mean(margin > 0))
    assert float(dpo_mean_margin(CFG, BETA, params, batch)) == pytest.approx(mean(margin),
                                                                             rel=1e-4)
    assert float(chosen_kl(CFG, params, batch)) == pytest.approx(
        mean(lp_c - batch.ref_chosen), rel=1e-5)


def test_at_the_reference_the_loss_is_ln_2_and_the_margin_0():
    params = init_params(CFG, 3)
    # 7 comparisons in batches of 3: the last batch is filled from the first rows
    prefs = reference_logprobs(CFG, params, _windows(2, m=7), batch_size=3)
    batch = prefs.batch(np.arange(7))
    assert np.all(np.asarray(batch.ref_chosen) < -5)  # real log-probs, not zeros
    assert float(dpo_loss(CFG, BETA, params, batch)) == pytest.approx(np.log(2), abs=1e-6)
    np.testing.assert_allclose(dpo_margins(CFG, BETA, params, batch), 0, atol=1e-5)
    assert float(chosen_kl(CFG, params, batch)) == pytest.approx(0, abs=1e-5)
    # another policy moves away from it
    assert float(dpo_loss(CFG, BETA, init_params(CFG, 4), batch)) != pytest.approx(np.log(2))


def test_prompt_and_padding_tokens_carry_no_gradient():
    windows = _windows(5)
    chosen_w, _ = windows.response_weights()
    for i in range(len(windows)):  # weight 1 exactly on targets start..last (closing eos)
        expected = np.zeros(CFG.n_ctx - 1)
        expected[windows.response_start[i] - 1:windows.chosen_last[i]] = 1
        np.testing.assert_array_equal(chosen_w[i], expected)
    logits = jax.random.normal(jax.random.PRNGKey(0), (len(windows), CFG.n_ctx - 1, 64))
    grad = np.asarray(jax.grad(lambda x: sequence_logprobs(x, windows.chosen[:, 1:],
                                                           chosen_w).sum())(logits))
    per_target = np.abs(grad).sum(-1)
    assert np.all(per_target[chosen_w == 0] == 0)
    assert np.all(per_target[chosen_w == 1] > 0)
    # the policy's gradient ignores what the prompt's targets are: only the context matters
    params, batch = init_params(CFG, 0), _batch(windows)
    loss = lambda b: float(dpo_loss(CFG, BETA, params, b))  # noqa: E731
    last_token = windows.chosen.copy()
    for i, t in enumerate(windows.chosen_last):  # padding after the closing eos
        last_token[i, t + 1:] = (last_token[i, t + 1:] + 7) % CFG.vocab_size
    assert loss(replace(batch, chosen=last_token)) == loss(batch)


def test_swapping_chosen_and_rejected_flips_the_margin():
    params, batch = init_params(CFG, 1), _batch(_windows(6, m=8))
    swapped = PreferenceBatch(batch.rejected, batch.chosen, batch.rejected_weights,
                              batch.chosen_weights, batch.ref_rejected, batch.ref_chosen,
                              batch.weights)
    margin = np.asarray(dpo_margins(CFG, BETA, params, batch))
    np.testing.assert_allclose(dpo_margins(CFG, BETA, params, swapped), -margin, atol=1e-5)
    assert float(dpo_accuracy(CFG, BETA, params, swapped)) == pytest.approx(
        1 - float(dpo_accuracy(CFG, BETA, params, batch)))


# --- training on the shared loop --------------------------------------------------------

@pytest.fixture(scope="module")
def sft(sft_policy) -> Path:
    """The policy DPO starts from (and its reference)."""
    return sft_policy


def test_dpo_learns_easy_comparisons_and_moves_away_from_the_reference(tmp_path, cache_dir,
                                                                      sft):
    config = run_config(cache_dir, 40_960, data=DataConfig(
        source="comparisons", paths=[str(_easy(tmp_path / "easy.jsonl"))], tokenizer="bytes",
        val_fraction=0.2, cache_dir=str(cache_dir)),
        stage=StageConfig(kind="dpo", init_from=str(sft), gold_samples=4))
    summary = pretrain(config, tmp_path / "dpo")
    metrics = pd.read_parquet(tmp_path / "dpo" / "metrics.parquet")
    assert summary["status"] == "completed" and summary["stage"] == "dpo"
    # the first evaluation comes after one step at warmup's LR 0: still the reference
    first, final = metrics.iloc[0], metrics.iloc[-1]
    assert first["val_loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert first["val_margin"] == pytest.approx(0, abs=1e-4)
    assert first["val_kl_to_ref"] == pytest.approx(0, abs=1e-4)
    assert final["val_accuracy"] > 0.8 and final["train_accuracy"] > 0.8
    assert final["val_loss"] < first["val_loss"] and final["val_margin"] > 0
    assert final["val_kl_to_ref"] > 0.1
    # the policy's own samples of 4 held-out SFT prompts: KL 0 at the reference, then not
    assert first["kl_to_ref"] == pytest.approx(0, abs=1e-3)
    assert abs(final["kl_to_ref"]) > 0.1
    assert metrics["gold_reward"].between(0, 1).all()
    assert summary["gold_reward"] == final["gold_reward"]
    assert summary["val_accuracy"] == final["val_accuracy"]
    assert summary["beta"] == 0.1 and summary["parent_run"] == sft.name
    assert summary["n_params"] == read_summary(sft)["n_params"]  # the LM, no head
    assert summary["n_comparisons"] + summary["n_val_comparisons"] == 120
    assert set(load_run(tmp_path / "dpo").params) == set(load_run(sft).params)


@pytest.mark.parametrize(("change", "message"), [
    (lambda tmp: ["stage.beta=0", f"data.paths=[{_easy(tmp / 'c.jsonl')}]"],
     "stage.beta=0"),
    (lambda tmp: ["data.tokenizer=bpe", f"data.paths=[{_easy(tmp / 'c.jsonl')}]"],
     "data.tokenizer=bpe data.vocab_size=4096 differs from the parent's bytes 256"),
    (lambda tmp: [f"data.paths=[{_empty_field(tmp / 'c.jsonl')}]"],
     'c.jsonl:2: the "chosen" field is empty'),
])
def test_scaling_train_refuses_bad_dpo_inputs_in_one_line(tmp_path, cache_dir, sft, change,
                                                          message):
    result, summary = refused("dpo", sft, tmp_path, cache_dir, change(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert summary is None or summary["status"] == "failed"
