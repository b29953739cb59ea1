"""The jitted functions the loop calls: the optimizer step, evaluation, gradient norms.

Each takes `(params, batch)` through the stage's `loss_fn` and never looks inside the batch:
batches are pytrees (`scaling.batch`), sliced, stacked and placed leaf by leaf. The same step
runs on one device or many (`scaling.parallel`), over the whole batch or micro-batch by
micro-batch, and vmapped over K replicas (`setup`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scaling.parallel import Placement

Params = Any
Batch = Any  # a pytree of arrays whose leaves share their leading (batch) axis
LossFn = Callable[[Params, Batch], jax.Array]


def init_state(params: Params, tx: optax.GradientTransformation) -> dict:
    """The train state of one model: parameters, optimizer, and the loop's device counters."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "loss_sum": jnp.zeros((), jnp.float32),  # train loss since the last evaluation
        "loss_count": jnp.zeros((), jnp.int32),
        "bad_step": jnp.zeros((), jnp.int32),  # first step whose loss was not finite; 0: none
    }


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
    """One optimizer update; the state is donated, so its buffers are reused in place."""

    def train_step(state: dict, batch: Batch) -> tuple[dict, dict]:
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        step = state["step"] + 1
        newly_bad = (state["bad_step"] == 0) & ~jnp.isfinite(loss)
        new_state = {
            **state,  # entries the step does not update (a batch source's) pass through
            "step": step,
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "loss_sum": state["loss_sum"] + loss,
            "loss_count": state["loss_count"] + 1,
            "bad_step": jnp.where(newly_bad, step, state["bad_step"]),
        }
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
                   "bad_step": new_state["bad_step"]}
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0)


def _weight(batch: Batch) -> jax.Array:
    """How much a batch counts in a mean over batches: its total loss weight where it has one
    (`LmBatch.weights`; SFT slices differ), else 1."""
    weights = getattr(batch, "weights", None)
    return jnp.ones(()) if weights is None else jnp.sum(weights)


def _relative(weights_K: jax.Array) -> jax.Array:
    """Weights over their mean: exactly 1 each where they are equal (pretraining), so that a
    weighted mean of equal batches is bit for bit the plain mean recorded before weights."""
    return weights_K / jnp.mean(weights_K)


def accumulate_gradients(loss_fn: LossFn, micro_batches: int) -> LossFn:
    """`loss_fn` whose gradient is summed over `micro_batches` slices of the batch in turn.

    The loss and gradient are the whole batch's (slices' means, weighted by each slice's total
    loss weight), but only one slice's activations are ever in memory. Written as a custom VJP
    so that the step's `value_and_grad` stays as it is: the forward pass computes each slice's
    gradient as it goes, and the backward pass only scales their mean.
    """
    if micro_batches == 1:
        return loss_fn

    def slices(batch: Batch) -> Batch:
        # Slice j is rows j, j+k, j+2k, ...: under data parallelism each slice spans every
        # device's share of the batch, so no slice waits on one device.
        return jax.tree_util.tree_map(
            lambda x: x.reshape(-1, micro_batches, *x.shape[1:]).swapaxes(0, 1), batch)

    def loss_and_grads(params: Params, batch: Batch) -> tuple[jax.Array, Params]:
        sliced = slices(batch)
        scales = _relative(jax.vmap(_weight)(sliced))

        def add_slice(grad_sum, slice_and_scale):
            micro_batch, scale = slice_and_scale
            loss, grads = jax.value_and_grad(loss_fn)(params, micro_batch)
            return jax.tree_util.tree_map(lambda s, g: s + scale * g, grad_sum, grads), loss

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        grad_sum, losses = jax.lax.scan(add_slice, zeros, (sliced, scales))
        return (jnp.mean(scales * losses),
                jax.tree_util.tree_map(lambda g: g / micro_batches, grad_sum))

    @jax.custom_vjp
    def accumulated(params: Params, batch: Batch) -> jax.Array:
        sliced = slices(batch)
        losses = jax.lax.map(lambda b: loss_fn(params, b), sliced)
        return jnp.mean(_relative(jax.vmap(_weight)(sliced)) * losses)

    def backward(grads: Params, g: jax.Array) -> tuple[Params, None]:
        return jax.tree_util.tree_map(lambda x: g * x, grads), None

    accumulated.defvjp(loss_and_grads, backward)
    return accumulated


def stacked(trees: Sequence[Any]) -> Any:
    """Pytrees stacked along a new leading axis, on the device."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def setup(states: Sequence[dict], tx: optax.GradientTransformation, loss_fn: LossFn,
          parallel: str, micro_batch_rows: int,
          grad_accum: int) -> tuple[Placement, dict, Callable]:
    """The device placement, the initial (placed) state and the jitted step.

    One model (one entry of `states`, each from `init_state`) trains with the plain step. K > 1
    replicas stack their states along a new leading axis and train with the same step (`tx`
    the first one's) vmapped over it, on batches [K, B, ...]. The trainer and `scaling-bench`
    both start here, so the benchmark times the trainer's own step.
    """
    placement = Placement.create(parallel, micro_batch_rows)
    state = placement.state(states[0] if len(states) == 1 else stacked(states))
    train_step = make_train_step(accumulate_gradients(loss_fn, grad_accum), tx)
    if len(states) > 1:
        train_step = jax.jit(jax.vmap(train_step), donate_argnums=0)
    return placement, state, placement.keep_state_sharding(train_step, state)


def over_replicas(fn: Callable, replicas: int) -> Callable:
    """(params, data) -> x as (params [K, ...], data) -> x [K, ...] for K > 1 replicas."""
    return jax.vmap(fn, in_axes=(0, None)) if replicas > 1 else fn


@functools.cache  # one compiled evaluation per loss, for the validation and extra corpora
def make_eval(loss_fn: LossFn, replicas: int = 1):
    """Mean loss over all validation batches [k, B, ...], in one call; [K] losses for K > 1
    replicas, on the same batches. Each batch counts by its total loss weight."""

    def evaluate(params: Params, eval_data: Batch) -> jax.Array:
        losses = jax.lax.map(lambda b: loss_fn(params, b), eval_data)
        return jnp.mean(_relative(jax.vmap(_weight)(eval_data)) * losses)

    return jax.jit(over_replicas(evaluate, replicas))


def noise_scale_micro_batches(batch_size: int) -> int:
    """Slices of a batch behind the noise scale: 4 where the batch divides, else 2."""
    return 4 if batch_size % 4 == 0 else 2


def make_gradient_norms(loss_fn: LossFn, micro_batches: int, replicas: int = 1):
    """(params, batches [n, B, ...]) -> [mean |g_slice|², mean |g_batch|²] over the n batches.

    Each batch is cut into `micro_batches` slices of B/micro_batches rows; g_slice is one
    slice's gradient, g_batch their mean (the batch's). The two numbers give the gradient noise
    scale (`noise_scale`). With K > 1 replicas: [K, 2], each replica on its own batches.
    """

    def square(tree: Params) -> jax.Array:
        return sum(jnp.vdot(x, x).real for x in jax.tree_util.tree_leaves(tree))

    def norms(params: Params, batches: Batch) -> jax.Array:
        def one(batch: Batch) -> jax.Array:
            slices = jax.tree_util.tree_map(
                lambda x: x.reshape(micro_batches, -1, *x.shape[1:]), batch)

            def add(carry, micro_batch):
                grad_sum, slice_squares = carry
                grads = jax.grad(loss_fn)(params, micro_batch)
                return (jax.tree_util.tree_map(jnp.add, grad_sum, grads),
                        slice_squares + square(grads)), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            (grad_sum, slice_squares), _ = jax.lax.scan(add, (zeros, 0.0), slices)
            mean = jax.tree_util.tree_map(lambda g: g / micro_batches, grad_sum)
            return jnp.stack([slice_squares / micro_batches, square(mean)])

        return jnp.mean(jax.lax.map(one, batches), axis=0)

    return jax.jit(jax.vmap(norms) if replicas > 1 else norms)


def noise_scale(slice_square: float, batch_square: float, slice_rows: int, micro_batches: int,
                tokens_per_row: int) -> float:
    """The simple gradient noise scale B_simple = tr(Σ) / |G|², in tokens (McCandlish et al.
    2018, App. A): unbiased |G|² and tr(Σ) from the squared gradient norms at two batch sizes.
    Kaplan et al. 2020 (§5.1) take it as the critical batch size. NaN where the estimates are
    not positive (too few batches for the noise)."""
    small, big = slice_rows, slice_rows * micro_batches
    true_square = (big * batch_square - small * slice_square) / (big - small)
    trace = (slice_square - batch_square) / (1 / small - 1 / big)
    if true_square <= 0 or trace <= 0:
        return math.nan
    return trace / true_square * tokens_per_row
