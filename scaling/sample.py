"""Autoregressive sampling with a KV cache: n continuations of each prompt, in one jitted loop.

The prompts are read once (`extend` over the padded batch), their cache is repeated n times, and
one token per sequence is drawn per step until every sequence has ended (its eos) or
`max_new_tokens` are drawn. A sequence is at most n_ctx tokens, prompt and new tokens together:
the model has learned positions below n_ctx only. Padding ids of the vocabulary (`vocab_padded`
beyond `vocab_size`) are never drawn.

What the RL stages need comes back with the tokens: each one's log-probability under the model
(temperature 1, before top-k/top-p), for PPO's ratios and the KL to a reference policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scaling.console import UsageError
from scaling.model import GPTConfig, extend, init_cache, unscanned


class Samples(NamedTuple):
    """n samples of each of B prompts; T = max_new_tokens. Device arrays."""

    tokens_BxNxT: jax.Array  # int32: the new tokens; eos_id after a sample's end
    lengths_BxN: jax.Array  # int32: new tokens of each sample, its eos included
    logprobs_BxNxT: jax.Array  # float32: ln p(token | prompt, tokens before) at temperature 1; 0
    # after the end


@dataclass(frozen=True)
class Policy:
    """How a token is drawn from the logits: temperature 0 is greedy (argmax); top_k 0 and
    top_p 1 keep every token."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Prompts of different lengths as one left-padded batch: ids [B, P] (int32, `pad_id` in
    the padding) and mask [B, P] (bool, True on the prompts' tokens), P the longest prompt."""
    width = max((len(p) for p in prompts), default=0)
    ids_BxP = np.full((len(prompts), width), pad_id, np.int32)
    mask_BxP = np.zeros((len(prompts), width), bool)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids_BxP[row, width - len(prompt):] = prompt
            mask_BxP[row, width - len(prompt):] = True
    return ids_BxP, mask_BxP


def generate(model_cfg: GPTConfig, params: Any, prompts_BxP: Any, prompt_mask_BxP: Any = None,
             *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, n: int = 1, eos_id: int | None = None,
             rng: jax.Array | None = None) -> Samples:
    """Draw `n` continuations of each prompt, up to `max_new_tokens` tokens each.

    prompts_BxP: token ids [B, P], int. prompt_mask_BxP: [B, P], true on the prompts' tokens
    (default: all of them); padding may be on either side or both (`pad_prompts` pads on the
    left), each prompt is its masked tokens in order. temperature: divides the logits; 0 is
    greedy. top_k: keep the k likeliest tokens (0: all). top_p: keep the likeliest tokens whose
    probabilities sum to top_p (nucleus; 1: all). Ties at either cut are kept. eos_id: a sample
    ends after drawing it (None: every sample runs to max_new_tokens). rng: a PRNG key, needed
    at temperature > 0; the same key gives the same samples.

    Returns `Samples`: tokens [B, n, max_new_tokens], lengths [B, n], log-probs
    [B, n, max_new_tokens]. Row b's n samples are independent draws.

    Raises UsageError (a ValueError, one line naming the value) for n < 1, max_new_tokens < 1,
    a negative temperature or top_k, top_p outside (0, 1], an empty prompt, an id outside the
    vocabulary, a prompt longer than n_ctx or one that leaves fewer than max_new_tokens
    positions, or no rng at temperature > 0.
    """
    ids_BxP = np.asarray(prompts_BxP)
    mask_BxP = (np.ones(ids_BxP.shape, bool) if prompt_mask_BxP is None
                else np.asarray(prompt_mask_BxP).astype(bool))
    policy = Policy(float(temperature), int(top_k), float(top_p))
    _check(model_cfg, ids_BxP, mask_BxP, max_new_tokens, policy, n, eos_id, rng)
    if policy.temperature == 0 or rng is None:
        rng = jax.random.PRNGKey(0)  # greedy: never used
    if policy.top_k >= model_cfg.vocab_size:
        policy = replace(policy, top_k=0)
    cfg = replace(model_cfg, remat="none")  # no backward pass to save memory for
    return _generate(cfg, params, jnp.asarray(np.where(mask_BxP, ids_BxP, 0), jnp.int32),
                     jnp.asarray(mask_BxP), rng, policy=policy, max_new_tokens=max_new_tokens,
                     n=n, eos_id=eos_id)


def check_options(policy: Policy, n: int, max_new_tokens: int | None) -> None:
    """Refuse settings `generate` cannot use whatever the model and prompts (None: not chosen
    yet): UsageError, one line naming the value."""
    if n < 1:
        raise UsageError(f"n={n}: expected at least 1 sample per prompt")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UsageError(f"max_new_tokens={max_new_tokens}: expected at least 1")
    if policy.temperature < 0:
        raise UsageError(f"temperature={policy.temperature}: expected 0 (greedy) or more")
    if policy.top_k < 0:
        raise UsageError(f"top_k={policy.top_k}: expected 0 (off) or more")
    if not 0 < policy.top_p <= 1:
        raise UsageError(f"top_p={policy.top_p}: expected a probability in (0, 1]")


def _check(cfg: GPTConfig, ids_BxP: np.ndarray, mask_BxP: np.ndarray, max_new_tokens: int,
           policy: Policy, n: int, eos_id: int | None, rng: jax.Array | None) -> None:
    """Refuse what `generate` cannot do, in one line naming the value."""
    if not cfg.causal:
        raise UsageError("model.causal=false: a masked LM (stage=mlm) reads both sides of every "
                         "position and cannot generate; sample a causal run")
    if ids_BxP.ndim != 2 or mask_BxP.shape != ids_BxP.shape:
        raise UsageError(f"prompts of shape {ids_BxP.shape} and mask of shape {mask_BxP.shape}: "
                         "expected both [batch, prompt length]")
    check_options(policy, n, max_new_tokens)
    if policy.temperature > 0 and rng is None:
        raise UsageError(f"temperature={policy.temperature} samples: pass rng, a PRNG key")
    if eos_id is not None and not 0 <= eos_id < cfg.vocab_size:
        raise UsageError(f"eos_id={eos_id} is not in the vocabulary [0, {cfg.vocab_size})")
    real = ids_BxP[mask_BxP]
    if real.size and (real.min() < 0 or real.max() >= cfg.vocab_size):
        bad = real[(real < 0) | (real >= cfg.vocab_size)][0]
        raise UsageError(f"prompt token {bad} is not in the vocabulary [0, {cfg.vocab_size})")
    lengths_B = mask_BxP.sum(axis=1)
    if lengths_B.size == 0 or lengths_B.min() == 0:
        raise UsageError("a prompt has no tokens: expected at least one (an eos, for none)")
    longest = int(lengths_B.max())
    if longest > cfg.n_ctx:
        raise UsageError(f"a prompt of {longest} tokens is longer than n_ctx={cfg.n_ctx}")
    if longest + max_new_tokens > cfg.n_ctx:
        raise UsageError(
            f"max_new_tokens={max_new_tokens} after a prompt of {longest} tokens exceeds "
            f"n_ctx={cfg.n_ctx}: at most {cfg.n_ctx - longest} new tokens")


def _sortable(x_NxV: jax.Array) -> jax.Array:
    """float32 as int32 of the same order (-inf lowest), for a search over the values."""
    bits_NxV = jax.lax.bitcast_convert_type(x_NxV, jnp.int32)
    return jnp.where(bits_NxV < 0, bits_NxV ^ 0x7FFFFFFF, bits_NxV)


def _largest(keys_NxV: jax.Array, holds: Any) -> jax.Array:
    """Per row [N, 1], the largest key t of the row's range for which holds(t) [N, 1] does,
    `holds` being true at the row's smallest key and false beyond some t: a bisection over the
    32-bit keys. On a CPU, `lax.top_k` and `sort` inside the decoding loop are a full sort of
    [N, V] each step (XLA keeps its fast TopK for code outside loops), 10x slower than this."""
    def halve(_, bounds):
        lo_Nx1, hi_Nx1 = bounds
        mid_Nx1 = (lo_Nx1 >> 1) + (hi_Nx1 >> 1) + (((lo_Nx1 & 1) + (hi_Nx1 & 1) + 1) >> 1)
        ok_Nx1 = holds(mid_Nx1)
        return jnp.where(ok_Nx1, mid_Nx1, lo_Nx1), jnp.where(ok_Nx1, hi_Nx1, mid_Nx1 - 1)

    bounds = (jnp.min(keys_NxV, axis=-1, keepdims=True), jnp.max(keys_NxV, axis=-1,
                                                                 keepdims=True))
    return jax.lax.fori_loop(0, 32, halve, bounds)[0]


def _filter(logits_NxV: jax.Array, policy: Policy) -> jax.Array:
    """The logits with every token outside top-k, then outside top-p, at -inf."""
    if policy.top_k:  # the k-th largest logit is the largest t with k logits >= t
        keys_NxV = _sortable(logits_NxV)
        cut_Nx1 = _largest(keys_NxV, lambda t: jnp.sum(keys_NxV >= t, axis=-1,
                                                        keepdims=True) >= policy.top_k)
        logits_NxV = jnp.where(keys_NxV >= cut_Nx1, logits_NxV, -jnp.inf)
    if policy.top_p < 1:  # the likeliest tokens whose probabilities reach top_p
        keys_NxV, probs_NxV = _sortable(logits_NxV), jax.nn.softmax(logits_NxV, axis=-1)
        cut_Nx1 = _largest(keys_NxV, lambda t: jnp.sum(
            jnp.where(keys_NxV >= t, probs_NxV, 0.0), axis=-1, keepdims=True) >= policy.top_p)
        logits_NxV = jnp.where(keys_NxV >= cut_Nx1, logits_NxV, -jnp.inf)
    return logits_NxV


def _categorical(key: jax.Array, logits_NxV: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits), by inverting the CDF with one uniform number per
    row: `jax.random.categorical`'s Gumbel trick draws one per token, which costs a small
    model's decoding step more on a CPU than the model does. A token of probability 0 (a
    logit at -inf) is never drawn."""
    probs_NxV = jax.nn.softmax(logits_NxV, axis=-1)
    cdf_NxV = jnp.cumsum(probs_NxV, axis=-1)
    u_Nx1 = jax.random.uniform(key, (logits_NxV.shape[0], 1)) * cdf_NxV[:, -1:]
    token_N = jnp.sum(cdf_NxV <= u_Nx1, axis=-1)  # the first token whose CDF exceeds u
    # u rounds up to the total at most: the last token that can be drawn
    last_N = logits_NxV.shape[-1] - 1 - jnp.argmax(probs_NxV[:, ::-1] > 0, axis=-1)
    return jnp.minimum(token_N, last_N)


def _draw(logits_NxV: jax.Array, key: jax.Array, policy: Policy,
          vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """One token per sequence from its logits (padding ids excluded), and its log-prob at
    temperature 1 over the real vocabulary; softmax in float32 whatever the compute dtype."""
    logits_NxV = logits_NxV.astype(jnp.float32)
    logits_NxV = jnp.where(jnp.arange(logits_NxV.shape[-1]) < vocab_size, logits_NxV, -jnp.inf)
    if policy.temperature == 0:
        token_N = jnp.argmax(logits_NxV, axis=-1)
    else:
        token_N = _categorical(key, _filter(logits_NxV / policy.temperature, policy))
    logprob_N = jnp.take_along_axis(jax.nn.log_softmax(logits_NxV), token_N[:, None], axis=-1)
    return token_N.astype(jnp.int32), logprob_N[:, 0]


@partial(jax.jit, static_argnames=("cfg", "policy", "max_new_tokens", "n", "eos_id"))
def _generate(cfg: GPTConfig, params: Any, ids_BxP: jax.Array, mask_BxP: jax.Array,
              rng: jax.Array, *, policy: Policy, max_new_tokens: int, n: int,
              eos_id: int | None) -> Samples:
    cfg, params = unscanned(cfg, params)  # once, not every step
    B, P = ids_BxP.shape
    N = B * n
    # the last token drawn is never read back: P + max_new_tokens - 1 slots
    cache = init_cache(cfg, B, P + max_new_tokens - 1)
    logits_BxPxV, cache = extend(cfg, params, cache, ids_BxP, mask_BxP)
    last_B = P - 1 - jnp.argmax(mask_BxP[:, ::-1], axis=1)  # each prompt's last token
    logits_NxV = jnp.repeat(logits_BxPxV[jnp.arange(B), last_B], n, axis=0)
    cache = cache.repeat(n)
    pad = 0 if eos_id is None else eos_id

    def draw(t, logits_NxV, tokens_NxT, logprobs_NxT, lengths_N, done_N):
        token_N, logprob_N = _draw(logits_NxV, jax.random.fold_in(rng, t), policy,
                                   cfg.vocab_size)
        tokens_NxT = tokens_NxT.at[:, t].set(jnp.where(done_N, pad, token_N))
        logprobs_NxT = logprobs_NxT.at[:, t].set(jnp.where(done_N, 0.0, logprob_N))
        lengths_N = lengths_N + ~done_N
        if eos_id is not None:
            done_N = done_N | (token_N == eos_id)
        return tokens_NxT, logprobs_NxT, lengths_N, done_N

    def step(state):
        t, cache, tokens_NxT, *rest = state
        logits_Nx1xV, cache = extend(cfg, params, cache, tokens_NxT[:, t - 1, None])
        return (t + 1, cache, *draw(t, logits_Nx1xV[:, 0], tokens_NxT, *rest))

    def going(state):
        t, *_, done_N = state
        return (t < max_new_tokens) & ~jnp.all(done_N)

    first = draw(0, logits_NxV, jnp.full((N, max_new_tokens), pad, jnp.int32),
                 jnp.zeros((N, max_new_tokens), jnp.float32), jnp.zeros(N, jnp.int32),
                 jnp.zeros(N, bool))
    _, _, tokens_NxT, logprobs_NxT, lengths_N, _ = jax.lax.while_loop(
        going, step, (jnp.ones((), jnp.int32), cache, *first))
    return Samples(tokens_NxT.reshape(B, n, max_new_tokens), lengths_N.reshape(B, n),
                   logprobs_NxT.reshape(B, n, max_new_tokens))
