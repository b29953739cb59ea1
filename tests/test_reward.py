"""The reward model's scalar head and the Bradley–Terry loss."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.batch import ComparisonBatch
from scaling.model import (
    GPT,
    REWARD_HEAD,
    GPTConfig,
    init_params,
    pairwise_accuracy,
    pairwise_loss,
    reward_margins,
    rewards,
)

CFG = GPTConfig(vocab_size=64, n_layer=2, d_model=16, n_head=2, n_ctx=12, d_ff=32)


def _params_with_head(seed: int = 0) -> dict:
    head = jax.random.normal(jax.random.PRNGKey(seed + 1), (CFG.d_model, 1))
    return {**init_params(CFG, seed), REWARD_HEAD: {"kernel": head}}


def _batch(seed: int = 0, b: int = 5) -> ComparisonBatch:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (2, b, CFG.n_ctx)).astype(np.int32)
    last = rng.integers(3, CFG.n_ctx, (2, b)).astype(np.int32)
    return ComparisonBatch(tokens[0], tokens[1], last[0], last[1], np.ones(b, np.float32))


def test_the_loss_is_minus_log_sigmoid_of_the_reward_margin():
    params, batch = _params_with_head(), _batch()
    weights = np.array([1, 1, 0, 1, 1], np.float32)  # a filler row counts for nothing
    batch = replace(batch, weights=weights)
    r = {}
    for side in ("chosen", "rejected"):  # the head on the final LayerNorm's output, by hand
        x = GPT(CFG).apply({"params": {k: v for k, v in params.items() if k != REWARD_HEAD}},
                           getattr(batch, side), unembed=False)
        last = getattr(batch, f"{side}_last")
        r[side] = np.array([float(x[i, last[i]] @ params[REWARD_HEAD]["kernel"][:, 0])
                            for i in range(len(last))])
    margin = r["chosen"] - r["rejected"]
    assert np.abs(margin).max() > 0.1  # a head that tells the windows apart
    expected = np.sum(weights * -np.log(1 / (1 + np.exp(-margin)))) / weights.sum()
    assert float(pairwise_loss(CFG, params, batch)) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(reward_margins(CFG, params, batch), margin, rtol=1e-5,
                               atol=1e-6)
    accuracy = np.sum(weights * (margin > 0)) / weights.sum()
    assert float(pairwise_accuracy(CFG, params, batch)) == pytest.approx(accuracy)


def test_swapping_chosen_and_rejected_flips_the_sign_of_the_margin():
    params, batch = _params_with_head(), _batch(1, b=8)
    swapped = ComparisonBatch(batch.rejected, batch.chosen, batch.rejected_last,
                              batch.chosen_last, batch.weights)
    margin = np.asarray(reward_margins(CFG, params, batch))
    np.testing.assert_allclose(reward_margins(CFG, params, swapped), -margin, atol=1e-6)
    assert float(pairwise_accuracy(CFG, params, swapped)) == pytest.approx(
        1 - float(pairwise_accuracy(CFG, params, batch)))


def test_the_reward_reads_the_last_real_token_and_nothing_after_it():
    params, batch = _params_with_head(2), _batch(2)
    last = batch.chosen_last
    base = np.asarray(rewards(CFG, params, batch.chosen, last))
    padded = batch.chosen.copy()
    for i, t in enumerate(last):
        padded[i, t + 1:] = 0
    np.testing.assert_array_equal(rewards(CFG, params, padded, last), base)
    earlier = batch.chosen.copy()
    earlier[:, 1] = (earlier[:, 1] + 1) % CFG.vocab_size
    assert np.all(np.asarray(rewards(CFG, params, earlier, last)) != base)


def test_a_zero_head_gives_every_comparison_ln_2_and_chance_accuracy():
    params = {**init_params(CFG, 0), REWARD_HEAD: {"kernel": jnp.zeros((CFG.d_model, 1))}}
    batch = _batch(3)
    assert float(pairwise_loss(CFG, params, batch)) == pytest.approx(np.log(2), rel=1e-6)
    assert float(pairwise_accuracy(CFG, params, batch)) == 0.5
