"""PPO's arithmetic for a language-model policy (stage=rl), as pure functions of arrays.

A rollout is B responses, each a run of response targets in a window of T-1 next-token
targets (`mask_BxT` 1 on them, 0 on the prompt and padding). The reward of a response is the
proxy reward model's score at its last token, minus a KL penalty to the reference at every
token (Ziegler et al. 2019, Stiennon et al. 2020, Ouyang et al. 2022: r_t = −β·(log π_old −
log π_ref)_t, plus the score at the end). Advantages are GAE (Schulman et al. 2015,
arXiv:1506.02438) over the response tokens, whitened over the rollout; the losses are PPO's
clipped surrogate and clipped value loss (Schulman et al. 2017, arXiv:1707.06347), as TRL's
PPOTrainer computes them. `ppo_loss` is the step's loss on a `RolloutBatch`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scaling.batch import RolloutBatch
from scaling.model import GPTConfig, logits_and_values, token_losses

WHITEN_EPS = 1e-8  # keeps whitening finite on a rollout of equal advantages


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ mask·x / Σ mask over every axis; 0 where the mask is all 0."""
    total = jnp.sum(mask)
    return jnp.sum(mask * x) / jnp.where(total > 0, total, 1.0)


def whiten(x_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """(x − mean) / std over the masked entries (population variance), 0 elsewhere: advantages
    of unit scale whatever the reward's, as TRL whitens them over a rollout."""
    mean = masked_mean(x_BxT, mask_BxT)
    var = masked_mean((x_BxT - mean) ** 2, mask_BxT)
    return mask_BxT * (x_BxT - mean) * jax.lax.rsqrt(var + WHITEN_EPS)


def kl_penalty(logprobs_BxT: jax.Array, ref_logprobs_BxT: jax.Array) -> jax.Array:
    """The per-token KL estimate log π(y_t) − log π_ref(y_t) of sampled tokens (Schulman's k1:
    unbiased for KL(π‖π_ref) summed over a response sampled from π; 0 where π = π_ref)."""
    return logprobs_BxT - ref_logprobs_BxT


def token_rewards(scores_B: jax.Array, logprobs_BxT: jax.Array, ref_logprobs_BxT: jax.Array,
                  mask_BxT: jax.Array, kl_coef: float) -> jax.Array:
    """Each response target's reward [B, T]: −kl_coef·(log π − log π_ref) at every response
    token, plus the response's score at its last one (Ziegler et al. 2019, eq. 2); 0 off the
    mask. Each row's response targets must be one contiguous run."""
    T = mask_BxT.shape[1]
    last_B = T - 1 - jnp.argmax(mask_BxT[:, ::-1], axis=1)  # each row's last response target
    at_end_BxT = (jnp.arange(T)[None] == last_B[:, None]) & (jnp.sum(mask_BxT, axis=1) > 0)[:, None]
    penalty_BxT = -kl_coef * kl_penalty(logprobs_BxT, ref_logprobs_BxT)
    return mask_BxT * (penalty_BxT + jnp.where(at_end_BxT, scores_B[:, None], 0.0))


def gae(rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array, gamma: float,
        lam: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimates and returns [B, T] (Schulman et al. 2015, eq. 16):
    δ_t = r_t + γ·V_{t+1} − V_t and A_t = δ_t + γλ·A_{t+1} over each row's response targets,
    V and A after the last one 0 (the episode ends there); returns = A + V. 0 off the mask."""
    mask_BxT = mask_BxT.astype(jnp.float32)
    next_mask_BxT = jnp.pad(mask_BxT[:, 1:], ((0, 0), (0, 1)))
    next_values_BxT = jnp.pad(values_BxT[:, 1:], ((0, 0), (0, 1))) * next_mask_BxT
    deltas_BxT = rewards_BxT + gamma * next_values_BxT - values_BxT

    def back(advantage_B, t_inputs):
        delta_B, next_mask_B = t_inputs
        advantage_B = delta_B + gamma * lam * next_mask_B * advantage_B
        return advantage_B, advantage_B

    _, advantages_TxB = jax.lax.scan(back, jnp.zeros(rewards_BxT.shape[0]),
                                     (deltas_BxT.T, next_mask_BxT.T), reverse=True)
    advantages_BxT = mask_BxT * advantages_TxB.T
    return advantages_BxT, mask_BxT * (advantages_BxT + values_BxT)


def policy_loss(logprobs_BxT: jax.Array, old_logprobs_BxT: jax.Array,
                advantages_BxT: jax.Array, mask_BxT: jax.Array,
                clip_range: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """PPO's clipped surrogate as a loss, −E[min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A)] with ρ =
    π/π_old per token (Schulman et al. 2017, eq. 7), the mean over response tokens; with the
    share of tokens where the clipped term is the one taken (the clip fraction) and the
    approximate KL ½·E[(log π − log π_old)²] (TRL's `approxkl`)."""
    log_ratio_BxT = logprobs_BxT - old_logprobs_BxT
    ratio_BxT = jnp.exp(log_ratio_BxT)
    unclipped_BxT = -advantages_BxT * ratio_BxT
    clipped_BxT = -advantages_BxT * jnp.clip(ratio_BxT, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(jnp.maximum(unclipped_BxT, clipped_BxT), mask_BxT)
    clip_fraction = masked_mean((clipped_BxT > unclipped_BxT).astype(jnp.float32), mask_BxT)
    return loss, clip_fraction, 0.5 * masked_mean(log_ratio_BxT ** 2, mask_BxT)


def value_loss(values_BxT: jax.Array, old_values_BxT: jax.Array, returns_BxT: jax.Array,
               mask_BxT: jax.Array, clip_range: float) -> tuple[jax.Array, jax.Array]:
    """PPO's clipped value loss ½·E[max((V − R)², (V_clip − R)²)], V_clip = V_old +
    clip(V − V_old, −ε, ε) (as TRL's and OpenAI's baselines), the mean over response tokens,
    with the share of tokens where the clipped term is the larger."""
    clipped_BxT = old_values_BxT + jnp.clip(values_BxT - old_values_BxT, -clip_range, clip_range)
    unclipped_sq_BxT = (values_BxT - returns_BxT) ** 2
    clipped_sq_BxT = (clipped_BxT - returns_BxT) ** 2
    loss = 0.5 * masked_mean(jnp.maximum(unclipped_sq_BxT, clipped_sq_BxT), mask_BxT)
    return loss, masked_mean((clipped_sq_BxT > unclipped_sq_BxT).astype(jnp.float32), mask_BxT)


def entropy(logits_BxTxV: jax.Array, vocab_size: int) -> jax.Array:
    """The policy's entropy in nats at every position [B, T], over the real vocabulary
    (padding ids excluded, as the sampler excludes them), softmax in float32."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    logits_BxTxV = jnp.where(jnp.arange(logits_BxTxV.shape[-1]) < vocab_size, logits_BxTxV,
                             -jnp.inf)
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
    return -jnp.sum(jnp.where(jnp.isfinite(logp_BxTxV), jnp.exp(logp_BxTxV) * logp_BxTxV, 0.0),
                    axis=-1)


def policy_outputs(cfg: GPTConfig, params: dict,
                   tokens_BxT: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Log-prob of every target tokens[:, 1:], the value before it, and the logits [B, T-1,
    V], from one forward pass of the policy (with its value head) over tokens[:, :-1]."""
    logits_BxTxV, values_BxT = logits_and_values(cfg, params, tokens_BxT[:, :-1])
    return -token_losses(logits_BxTxV, tokens_BxT[:, 1:]), values_BxT, logits_BxTxV


def ppo_statistics(cfg: GPTConfig, clip_range: float, params: dict,
                   batch: RolloutBatch) -> dict[str, jax.Array]:
    """The policy's loss terms on a rollout batch: `policy_loss`, `value_loss`,
    `clip_fraction`, `value_clip_fraction`, `approx_kl` (see the functions above) and
    `entropy` (nats per response token)."""
    logprobs_BxT, values_BxT, logits_BxTxV = policy_outputs(cfg, params, batch.tokens)
    mask_BxT = batch.weights
    pg_loss, clip_fraction, approx_kl = policy_loss(logprobs_BxT, batch.old_logprobs,
                                                    batch.advantages, mask_BxT, clip_range)
    vf_loss, vf_clip_fraction = value_loss(values_BxT, batch.old_values, batch.returns,
                                           mask_BxT, clip_range)
    return {"policy_loss": pg_loss, "value_loss": vf_loss, "clip_fraction": clip_fraction,
            "value_clip_fraction": vf_clip_fraction, "approx_kl": approx_kl,
            "entropy": masked_mean(entropy(logits_BxTxV, cfg.vocab_size), mask_BxT)}


def ppo_loss(cfg: GPTConfig, clip_range: float, vf_coef: float, params: dict,
             batch: RolloutBatch) -> jax.Array:
    """The step's loss on a rollout minibatch: the clipped surrogate + vf_coef · the clipped
    value loss (Schulman et al. 2017, eq. 9 without the entropy bonus, as TRL), means over the
    batch's response tokens."""
    logprobs_BxT, values_BxT, _ = policy_outputs(cfg, params, batch.tokens)
    pg_loss, _, _ = policy_loss(logprobs_BxT, batch.old_logprobs, batch.advantages,
                                batch.weights, clip_range)
    vf_loss, _ = value_loss(values_BxT, batch.old_values, batch.returns, batch.weights,
                            clip_range)
    return pg_loss + vf_coef * vf_loss
