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
