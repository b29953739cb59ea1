"""AdamW with a learning-rate schedule (Kaplan's warmup + cosine, WSD, constant) as Optax pieces.

Every schedule starts with a linear warmup from 0 (`warmup_steps`: `train.warmup` as a fraction
of the steps, a token count, or a rule scaled with the model). After it: `cosine` decays to
train.min_lr_ratio of the peak over the rest of the run (Kaplan et al. 2020); `wsd` holds the
peak, then decays to the same floor over the last train.cooldown_fraction of the steps, linearly
or as 1 - sqrt (Hägele et al. 2024); `constant` holds the peak. A WSD run's values before its
cooldown are a constant run's, which is what lets cooldown branches start from a trunk's
checkpoint (`scaling.branches`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from scaling.config import (
    KAPLAN_WARMUP_TOKENS,
    TrainConfig,
    cooldown_start,
    kaplan_lr,
    parse_warmup,
)

log = logging.getLogger("scaling")


def peak_lr(cfg: TrainConfig, n_nonembed: int) -> float:
    """The configured peak, or Kaplan's size rule when none is set."""
    return cfg.lr if cfg.lr is not None else kaplan_lr(n_nonembed)


def warmup_steps(cfg: TrainConfig, total_steps: int, tokens_per_step: int, n_params: int) -> int:
    """Steps of linear warmup that `train.warmup` asks of a run of `total_steps` steps.

    A fraction f: round(f * total_steps). A token count W: round(W / tokens_per_step), the same
    for every model and run length. `kaplan`: KAPLAN_WARMUP_TOKENS tokens, so. `porian`: N
    tokens, `n_params` being N with the unembedding (Porian et al. 2024's count, the `standard`
    convention of analysis.counting), so that it scales with the model.
    """
    warmup = parse_warmup(cfg.warmup)
    tokens = {"tokens": warmup.value, "kaplan": KAPLAN_WARMUP_TOKENS, "porian": n_params}
    if warmup.kind == "fraction":
        return round(warmup.value * total_steps)
    return round(tokens[warmup.kind] / tokens_per_step)


def wsd_schedule(peak: float, warmup: int, start: int, total_steps: int, floor: float,
                 shape: str = "linear") -> optax.Schedule:
    """Warmup-stable-decay (Hägele et al. 2024): peak·min(ramp, decay) at update `count`, where
    ramp = count / warmup (0 -> 1 over the warmup) and decay is 1 until `start`, then falls to
    `floor` (a fraction of the peak) at `total_steps`: linearly, or as 1 - sqrt of the
    cooldown's elapsed fraction (`shape=sqrt`). A cooldown that overlaps the warmup takes the
    lower of the two, so the schedule stays continuous."""
    cool = max(total_steps - start, 1)

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        ramp = jnp.minimum(step / warmup, 1.0) if warmup > 0 else 1.0
        elapsed = jnp.clip((step - start) / cool, 0.0, 1.0)
        decayed = jnp.sqrt(elapsed) if shape == "sqrt" else elapsed
        return peak * jnp.minimum(ramp, 1.0 - (1.0 - floor) * decayed)

    return schedule


def lr_schedule(cfg: TrainConfig, total_steps: int, peak: float, warmup: int) -> optax.Schedule:
    """The learning rate at each update of a run of `total_steps` steps under train.schedule:
    a linear warmup from 0 over `warmup` steps (`warmup_steps`), then `cosine` (to
    train.min_lr_ratio of the peak at the last step), `wsd` (the peak, then the cooldown to the
    same floor, `wsd_schedule`) or `constant` (the peak).

    A cosine run's warmup is cut to leave one step of decay; `wsd` and `constant` runs may be
    all warmup (a long `kaplan` warmup on a short run)."""
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    if cfg.schedule == "wsd":
        start = cooldown_start(cfg.cooldown_fraction, total_steps)
        return wsd_schedule(peak, warmup, start, total_steps, floor, cfg.cooldown_shape)
    if warmup >= total_steps:
        log.warning("warmup of %d steps is not shorter than the run's %d: cut to %d, leaving "
                    "one step of cosine decay", warmup, total_steps, max(total_steps - 1, 0))
        warmup = max(total_steps - 1, 0)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=total_steps,
        end_value=peak * floor,
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
    cfg: TrainConfig, total_steps: int, peak: float, warmup: int,
    frozen: Callable[[dict], dict] | None = None,
) -> optax.GradientTransformation:
    """`make_optimizer` with the peak LR held in its state, for replicas trained in one step.

    The peak is an `inject_hyperparams` hyperparameter, so that one update vmapped over K
    replicas' states applies each replica's own. The schedule is the peak times the unit-peak
    schedule (the same values up to float rounding): optax's schedules take no traced peak.
    """
    unit = lr_schedule(cfg, total_steps, 1.0, warmup)

    def adamw(peak_lr):
        return make_optimizer(cfg, lambda count: peak_lr * unit(count), frozen)

    return optax.inject_hyperparams(adamw)(peak_lr=peak)
