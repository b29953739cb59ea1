"""AdamW with linear warmup and cosine decay to a floor: Kaplan's recipe, as Optax pieces."""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from scaling.config import TrainConfig, kaplan_lr


def peak_lr(cfg: TrainConfig, n_nonembed: int) -> float:
    """The configured peak, or Kaplan's size rule when none is set."""
    return cfg.lr if cfg.lr is not None else kaplan_lr(n_nonembed)


def lr_schedule(cfg: TrainConfig, total_steps: int, peak: float,
                kind: str = "cosine") -> optax.Schedule:
    """Linear warmup from 0 over train.warmup_fraction of the steps, then a cosine decay to
    train.min_lr_ratio of the peak (`cosine`, Kaplan's), or the peak held (`constant`)."""
    warmup = round(cfg.warmup_fraction * total_steps)
    if kind == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=total_steps,
        end_value=peak * cfg.min_lr_ratio,
    )


def _decay_mask(params):
    """Weight decay on matrices and embeddings only, never on biases or LayerNorm scales."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def frozen_mask(params: dict, embeddings: bool, blocks: int) -> dict:
    """True for each parameter a fine-tuning stage keeps as its parent trained it: the
    embeddings (`wte`, also the tied output head, and `wpe`) and blocks `h_0` .. `h_{k-1}`."""
    frozen = ({"wte", "wpe"} if embeddings else set()) | {f"h_{i}" for i in range(blocks)}
    return {name: jax.tree_util.tree_map(lambda _, f=name in frozen: f, subtree)
            for name, subtree in params.items()}


def make_optimizer(cfg: TrainConfig, schedule: optax.Schedule,
                   frozen: Callable[[dict], dict] | None = None) -> optax.GradientTransformation:
    """AdamW on `schedule` with global-norm clipping; `frozen(params)` (a `frozen_mask`) marks
    parameters whose updates are zeroed, weight decay included."""
    adamw = optax.adamw(
        schedule, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay, mask=_decay_mask
    )
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(adamw)
    if frozen is not None:
        parts.append(optax.masked(optax.set_to_zero(), frozen))
    return optax.chain(*parts) if len(parts) > 1 else adamw


def make_replica_optimizer(
    cfg: TrainConfig, total_steps: int, peak: float, kind: str = "cosine",
    frozen: Callable[[dict], dict] | None = None,
) -> optax.GradientTransformation:
    """`make_optimizer` with the peak LR held in its state, for replicas trained in one step.

    The peak is an `inject_hyperparams` hyperparameter, so that one update vmapped over K
    replicas' states applies each replica's own. The schedule is the peak times the unit-peak
    schedule (the same values up to float rounding): optax's schedules take no traced peak.
    """
    unit = lr_schedule(cfg, total_steps, 1.0, kind)

    def adamw(peak_lr):
        return make_optimizer(cfg, lambda count: peak_lr * unit(count), frozen)

    return optax.inject_hyperparams(adamw)(peak_lr=peak)
