"""PPO's arithmetic (scaling.rlhf.ppo) against NumPy loops and hand-computed values: GAE,
the token rewards with the KL penalty, whitening, the clipped policy and value losses, the
entropy, and the policy's log-probs and values from one forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.batch import RolloutBatch
from scaling.model import GPT, VALUE_HEAD, GPTConfig, init_params, logits_and_values
from scaling.rlhf.ppo import (
    entropy,
    gae,
    kl_penalty,
    policy_loss,
    policy_outputs,
    ppo_loss,
    ppo_statistics,
    token_rewards,
    value_loss,
    whiten,
)

CFG = GPTConfig(vocab_size=60, n_layer=2, d_model=16, n_head=2, n_ctx=12, d_ff=32)


def _responses(seed: int, b: int = 4, t: int = 10) -> np.ndarray:
    """Masks [b, t] of one contiguous run of response targets per row, at varied offsets."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, t), np.float32)
    for row in range(b):
        start = rng.integers(0, t - 1)
        mask[row, start:rng.integers(start + 1, t + 1)] = 1
    return mask


def _gae_loop(rewards, values, mask, gamma, lam):
    """GAE row by row over the response tokens only, as Schulman et al. 2015 write it."""
    advantages = np.zeros_like(rewards, dtype=np.float64)
    for row in range(len(rewards)):
        positions = np.flatnonzero(mask[row])
        a = 0.0
        for i in reversed(range(len(positions))):
            t = positions[i]
            next_value = values[row, positions[i + 1]] if i + 1 < len(positions) else 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            a = delta + gamma * lam * a
            advantages[row, t] = a
    return advantages, (advantages + values) * mask


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_loop_over_each_response(gamma, lam):
    mask = _responses(0)
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=mask.shape).astype(np.float32) * mask
    values = rng.normal(size=mask.shape).astype(np.float32) * mask
    advantages, returns = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                              gamma, lam)
    expected_a, expected_r = _gae_loop(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(advantages, expected_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected_r, rtol=1e-5, atol=1e-5)


def test_gae_with_no_value_and_no_discount_is_the_reward_to_go():
    mask = np.array([[0, 0, 1, 1, 1, 0]], np.float32)
    rewards = np.array([[0, 0, 1, 2, 3, 0]], np.float32)
    advantages, returns = gae(rewards, np.zeros_like(rewards), mask, 1.0, 1.0)
    np.testing.assert_allclose(advantages, [[0, 0, 6, 5, 3, 0]])
    np.testing.assert_allclose(returns, advantages)


def test_token_rewards_are_the_kl_penalty_plus_the_score_at_the_last_response_token():
    mask = np.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.float32)
    logp = np.array([[-9, -1, -2, -3, -9], [-1, -1, -9, -9, -9]], np.float32)
    ref = np.array([[-5, -2, -2, -1, -5], [-1, -3, -5, -5, -5]], np.float32)
    scores = np.array([0.5, -2.0], np.float32)
    got = token_rewards(scores, logp, ref, mask, kl_coef=0.1)
    expected = [[0, -0.1, 0, 0.2 + 0.5, 0], [0, -0.2 - 2.0, 0, 0, 0]]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(token_rewards(scores, logp, ref, mask, 0.0),
                               [[0, 0, 0, 0.5, 0], [0, -2, 0, 0, 0]])


def test_whitening_gives_zero_mean_unit_variance_on_the_mask_and_zero_off_it():
    mask = _responses(2)
    x = np.random.default_rng(3).normal(5, 3, mask.shape).astype(np.float32)
    white = np.asarray(whiten(x, mask))
    on = white[mask == 1]
    assert on.mean() == pytest.approx(0, abs=1e-5) and on.std() == pytest.approx(1, abs=1e-4)
    assert np.all(white[mask == 0] == 0)


def test_the_clipped_policy_loss_its_clip_fraction_and_approx_kl():
    mask = np.array([[1, 1, 1, 1, 0]], np.float32)
    old = np.log(np.full((1, 5), 0.5, np.float32))
    advantages = np.array([[1.0, 1.0, -1.0, -1.0, 7.0]], np.float32)
    # at the sampling policy: ratio 1, the loss is -mean(A), nothing clipped, no KL
    loss, clip_fraction, approx_kl = policy_loss(old, old, advantages, mask, 0.2)
    assert float(loss) == pytest.approx(0.0) and float(clip_fraction) == 0
    assert float(approx_kl) == 0
    # ratios 1.5, 1.1, 0.5, 1.1: clipped where the ratio left [0.8, 1.2] in A's favour
    ratio = np.array([[1.5, 1.1, 0.5, 1.1, 3.0]], np.float32)
    logp = old + np.log(ratio)
    loss, clip_fraction, approx_kl = policy_loss(logp, old, advantages, mask, 0.2)
    # token 0: min(1.5, 1.2)·1 = 1.2; token 1: 1.1; token 2: min(-0.5, -0.8) = -0.8;
    # token 3: min(-1.1, -1.1) = -1.1; loss = -mean
    assert float(loss) == pytest.approx(-(1.2 + 1.1 - 0.8 - 1.1) / 4, rel=1e-5)
    assert float(clip_fraction) == pytest.approx(0.5)  # tokens 0 and 2
    assert float(approx_kl) == pytest.approx(0.5 * np.mean(np.log(ratio[0, :4]) ** 2), rel=1e-5)
    # a clipped token carries no gradient, an unclipped one does
    grad = np.asarray(jax.grad(lambda lp: policy_loss(lp, old, advantages, mask, 0.2)[0])(logp))
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[0, 4] == 0
    assert grad[0, 1] != 0 and grad[0, 3] != 0


def test_the_clipped_value_loss_matches_numpy():
    mask = _responses(4)
    rng = np.random.default_rng(5)
    values, old, returns = (rng.normal(size=mask.shape).astype(np.float32) for _ in range(3))
    loss, fraction = value_loss(values, old, returns, mask, 0.2)
    clipped = old + np.clip(values - old, -0.2, 0.2)
    terms = np.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    assert float(loss) == pytest.approx(0.5 * terms[mask == 1].mean(), rel=1e-5)
    larger = ((clipped - returns) ** 2 > (values - returns) ** 2)[mask == 1]
    assert float(fraction) == pytest.approx(larger.mean())
    assert float(value_loss(old, old, old, mask, 0.2)[0]) == 0


def test_entropy_leaves_the_padding_ids_out():
    logits = np.zeros((1, 2, 64), np.float32)  # uniform over the 64 ids, 60 of them real
    np.testing.assert_allclose(entropy(logits, 60), np.log(60), rtol=1e-6)
    peaked = logits.copy()
    peaked[0, 1, 3] = 100.0
    assert float(entropy(peaked, 60)[0, 1]) == pytest.approx(0, abs=1e-6)


def _policy(seed: int = 0) -> dict:
    head = jax.random.normal(jax.random.PRNGKey(seed + 1), (CFG.d_model, 1))
    return {**init_params(CFG, seed), VALUE_HEAD: {"kernel": head}}


def _rollout(params: dict, seed: int = 0, b: int = 4) -> RolloutBatch:
    """A rollout batch of random windows whose old log-probs and values are the policy's."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (b, CFG.n_ctx)).astype(np.int32)
    mask = np.zeros((b, CFG.n_ctx - 1), np.float32)
    mask[:, 4:9] = 1
    logp, values, _ = policy_outputs(CFG, params, tokens)
    advantages = whiten(rng.normal(size=mask.shape).astype(np.float32), mask)
    return RolloutBatch(tokens, mask, mask * logp, mask * logp, mask * values, advantages,
                        mask * (values + 1.0), np.zeros(b, np.float32))


def test_one_forward_pass_gives_the_language_models_logits_and_the_values():
    params = _policy()
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, (3, CFG.n_ctx))
    logits, values = logits_and_values(CFG, params, tokens)
    lm = {k: v for k, v in params.items() if k != VALUE_HEAD}
    np.testing.assert_array_equal(logits, GPT(CFG).apply({"params": lm}, tokens))
    x = GPT(CFG).apply({"params": lm}, tokens, unembed=False)
    np.testing.assert_allclose(values, (x @ params[VALUE_HEAD]["kernel"])[..., 0], rtol=1e-5,
                               atol=1e-6)


def test_at_the_sampling_policy_kl_and_clipping_are_zero():
    params = _policy()
    batch = _rollout(params)
    logp, _, _ = policy_outputs(CFG, params, batch.tokens)
    assert float(jnp.max(jnp.abs(kl_penalty(batch.weights * logp, batch.ref_logprobs)))) == 0
    stats = ppo_statistics(CFG, 0.2, params, batch)
    assert float(stats["clip_fraction"]) == 0 and float(stats["approx_kl"]) == 0
    # returns are values + 1 on the mask: value loss ½·1
    assert float(stats["value_loss"]) == pytest.approx(0.5, rel=1e-5)
    assert float(stats["policy_loss"]) == pytest.approx(0, abs=1e-5)  # -mean of whitened A
    assert float(ppo_loss(CFG, 0.2, 0.1, params, batch)) == pytest.approx(0.05, abs=1e-5)
    # another policy has moved: positive approximate KL, some tokens clipped
    moved = ppo_statistics(CFG, 0.01, _policy(7), batch)
    assert float(moved["approx_kl"]) > 0 and float(moved["clip_fraction"]) > 0
