"""The batch every stage trains on: a small typed pytree, not a bare token array.

`LmBatch` is tokens [B, T+1] and a loss weight per target [B, T] (1 = counts, 0 = ignored), as
levanter's `LmExample.loss_mask` and nanodo's `weights_BxL`. Pretraining's weights are all ones;
SFT's are 1 on response tokens only. Being a pytree, it passes through jit, vmap (replicas),
scan (gradient accumulation) and device placement leaf by leaf, so none of them knows which
stage it serves. `ComparisonBatch` (a reward model's chosen/rejected windows) is another
pytree of the same kind, `MaskedBatch` (a masked LM's corrupted windows), `PreferenceBatch`
(DPO's, with the reference policy's log-probs) and `RolloutBatch` (PPO's rollouts) too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LmBatch:
    """Next-token training data: inputs tokens[:, :-1], targets tokens[:, 1:], weighted.

    Leaves may carry leading axes (k evaluation batches, K replicas): [..., B, T+1] and
    [..., B, T].
    """

    tokens: Any  # [B, T+1] int32
    weights: Any  # [B, T] float32; the loss is sum(weights * nll) / sum(weights)

    @classmethod
    def causal(cls, tokens_BxT1: np.ndarray) -> LmBatch:
        """Every target counts: pretraining and fine-tuning on plain text."""
        tokens_BxT1 = np.asarray(tokens_BxT1)
        weights = np.ones((*tokens_BxT1.shape[:-1], tokens_BxT1.shape[-1] - 1), np.float32)
        return cls(tokens_BxT1, weights)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MaskedBatch:
    """Masked-LM training data (stage=mlm, BERT's objective): corrupted windows, the original
    tokens, and a weight per position: 1 where the corruption chose the position (its loss
    counts), 0 elsewhere (`scaling.masking.bert_corruption` makes them).

    Leaves may carry leading axes (k evaluation batches, K replicas): [..., B, T].
    """

    inputs: Any  # [B, T] int32: the window with chosen positions replaced ([MASK], random, kept)
    targets: Any  # [B, T] int32: the window as the corpus has it
    weights: Any  # [B, T] float32: 1 at the chosen positions


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ComparisonBatch:
    """Reward-model training data: B comparisons, each a chosen and a rejected window of T
    tokens (eos, prompt, response, eos, padding), and where each window's last real token is.

    `weights` [B] says how much each comparison counts (1; 0 for the filler rows of the last
    validation batch), so the step's batch weighting and `weighted_mean` treat it as they treat
    an `LmBatch`'s targets. Leaves may carry leading axes ([k, B, ...], [K, B, ...]).
    """

    chosen: Any  # [B, T] int32
    rejected: Any  # [B, T] int32
    chosen_last: Any  # [B] int32: the position of the chosen window's last real token
    rejected_last: Any  # [B] int32
    weights: Any  # [B] float32



@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class PreferenceBatch:
    """DPO training data (Rafailov et al. 2023): B comparisons, each a chosen and a rejected
    window of T tokens (eos, prompt, response, eos, padding) read as next-token targets
    [:, 1:], a weight per target (1 on the response and its closing eos, 0 on the prompt and
    padding, as SFT's), and the reference policy's log-probability of each response.

    `weights` [B] is each comparison's weight (0 for filler rows), as `ComparisonBatch`'s.
    Leaves may carry leading axes ([k, B, ...], [K, B, ...]).
    """

    chosen: Any  # [B, T] int32
    rejected: Any  # [B, T] int32
    chosen_weights: Any  # [B, T-1] float32: 1 where the target is a response token
    rejected_weights: Any  # [B, T-1] float32
    ref_chosen: Any  # [B] float32: log π_ref(chosen | prompt), summed over response tokens
    ref_rejected: Any  # [B] float32
    weights: Any  # [B] float32

@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class RolloutBatch:
    """PPO training data (stage=rl): B responses sampled by the policy, each in a window of T
    tokens (eos, prompt, response, eos padding) read as next-token targets [:, 1:], and what
    the rollout measured of each response target: the sampling policy's and the reference's
    log-probs, the values, GAE's advantages (whitened) and returns. Every per-target leaf is 0
    where `weights` is (the prompt, the padding, a filler row).

    Leaves may carry leading axes ([k, B, ...] fixed validation batches).
    """

    tokens: Any  # [B, T] int32
    weights: Any  # [B, T-1] float32: 1 where the target is a response token (its eos too)
    old_logprobs: Any  # [B, T-1] float32: log π_old(target), π_old the policy that sampled
    ref_logprobs: Any  # [B, T-1] float32: log π_ref(target), the frozen reference (SFT)
    old_values: Any  # [B, T-1] float32: V_old before each target is drawn
    advantages: Any  # [B, T-1] float32: GAE, whitened over the rollout's response targets
    returns: Any  # [B, T-1] float32: GAE's returns, advantages (before whitening) + values
    scores: Any  # [B] float32: the proxy reward model's score of each response


def stack(batches: list[Any]) -> Any:
    """Batches (any pytree of arrays) stacked along a new leading axis, on the host."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)


def batch_rows(batch: Any) -> int:
    """B, the number of sequences in an unstacked batch (the first axis of its leaves)."""
    return len(jax.tree_util.tree_leaves(batch)[0])
