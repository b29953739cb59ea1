"""AdamW with linear warmup and cosine decay to a floor: Kaplan's recipe, as Optax pieces."""

from __future__ import annotations

import jax
import optax

from scaling.config import TrainConfig, kaplan_lr


def peak_lr(cfg: TrainConfig, n_nonembed: int) -> float:
    """The configured peak, or Kaplan's size rule when none is set."""
    return cfg.lr if cfg.lr is not None else kaplan_lr(n_nonembed)


def lr_schedule(cfg: TrainConfig, total_steps: int, peak: float) -> optax.Schedule:
    warmup = round(cfg.warmup_fraction * total_steps)
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


def make_optimizer(cfg: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    adamw = optax.adamw(
        schedule, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay, mask=_decay_mask
    )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def make_replica_optimizer(
    cfg: TrainConfig, total_steps: int, peak: float
) -> optax.GradientTransformation:
    """`make_optimizer` with the peak LR held in its state, for replicas trained in one step.

    The peak is an `inject_hyperparams` hyperparameter, so that one update vmapped over K
    replicas' states applies each replica's own. The schedule is the peak times the unit-peak
    schedule (the same values up to float rounding): optax's schedules take no traced peak.
    """
    unit = lr_schedule(cfg, total_steps, 1.0)

    def adamw(peak_lr):
        return make_optimizer(cfg, lambda count: peak_lr * unit(count))

    return optax.inject_hyperparams(adamw)(peak_lr=peak)
