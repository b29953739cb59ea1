"""The training loop every stage shares: one jitted, donated step; log-spaced evaluation;
checkpoints on two clocks; resume; the run record.

A stage (pretrain now; fine-tune and RLHF later) is a `Stage`: a loss, a batch source and an
initialisation. Nothing in this module knows which stage it runs. The same step runs on one
device or many (`scaling.parallel`), over the whole batch or micro-batch by micro-batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.compilation_cache import compilation_cache

from scaling.checkpoint import Checkpointer
from scaling.config import TrainConfig
from scaling.flops import mfu
from scaling.parallel import Placement
from scaling.progress import TrainProgress
from scaling.record import read_summary, write_metrics, write_positions, write_summary
from scaling.sweep import identity

log = logging.getLogger("scaling")

Params = Any
LossFn = Callable[[Params, jax.Array], jax.Array]



class ResumeError(RuntimeError):
    """The run directory holds a checkpoint of a different run."""


@dataclass(frozen=True)
class Stage:
    """What a run trains; the loop is the same for every stage."""

    name: str
    loss_fn: LossFn  # (params, batch) -> mean loss
    train_batch: Callable[[int], np.ndarray]  # step -> batch, a pure function of the step
    eval_data: np.ndarray  # [k, ...]: k fixed validation batches
    init_params: Callable[[], Params]
    tokens_per_step: int
    flops_per_token: int
    record: dict[str, Any] = field(default_factory=dict)  # stage facts for summary.json
    # (params, batch) -> mean loss at each position [T], recorded once at the end when given,
    # over its own, larger set of validation batches (per-position means are noisy)
    position_loss_fn: Callable[[Params, jax.Array], jax.Array] | None = None
    position_data: np.ndarray | None = None  # [k, ...] batches for position_loss_fn


def use_compile_cache(directory: Path | None) -> None:
    """Keep compiled programs in `directory` across processes (None: off), small ones too."""
    jax.config.update("jax_enable_compilation_cache", directory is not None)
    if directory is None:
        return
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if str(directory) != jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(directory))
        compilation_cache.reset_cache()  # a process opens its cache once: reopen it here


def eval_steps(total_steps: int, count: int) -> list[int]:
    """`count` log-spaced steps in [1, total], always including the last."""
    steps = np.unique(np.round(np.geomspace(1, total_steps, count)).astype(int))
    return sorted({int(s) for s in steps} | {total_steps})


def _init_state(stage: Stage, tx: optax.GradientTransformation) -> dict:
    params = stage.init_params()
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

    def train_step(state: dict, batch: jax.Array) -> tuple[dict, dict]:
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        step = state["step"] + 1
        newly_bad = (state["bad_step"] == 0) & ~jnp.isfinite(loss)
        new_state = {
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


def accumulate_gradients(loss_fn: LossFn, micro_batches: int) -> LossFn:
    """`loss_fn` whose gradient is summed over `micro_batches` slices of the batch in turn.

    The loss and gradient are the whole batch's (the mean of equal slices' means), but only one
    slice's activations are ever in memory. Written as a custom VJP so that the step's
    `value_and_grad` stays as it is: the forward pass computes each slice's gradient as it
    goes, and the backward pass only scales their mean.
    """
    if micro_batches == 1:
        return loss_fn

    def slices(batch_BxS: jax.Array) -> jax.Array:
        # Slice j is rows j, j+k, j+2k, ...: under data parallelism each slice spans every
        # device's share of the batch, so no slice waits on one device.
        return batch_BxS.reshape(-1, micro_batches, *batch_BxS.shape[1:]).swapaxes(0, 1)

    def loss_and_grads(params: Params, batch: jax.Array) -> tuple[jax.Array, Params]:
        def add_slice(grad_sum, micro_batch):
            loss, grads = jax.value_and_grad(loss_fn)(params, micro_batch)
            return jax.tree_util.tree_map(jnp.add, grad_sum, grads), loss

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        grad_sum, losses = jax.lax.scan(add_slice, zeros, slices(batch))
        return jnp.mean(losses), jax.tree_util.tree_map(lambda g: g / micro_batches, grad_sum)

    @jax.custom_vjp
    def accumulated(params: Params, batch: jax.Array) -> jax.Array:
        return jnp.mean(jax.lax.map(lambda b: loss_fn(params, b), slices(batch)))

    def backward(grads: Params, g: jax.Array) -> tuple[Params, None]:
        return jax.tree_util.tree_map(lambda x: g * x, grads), None

    accumulated.defvjp(loss_and_grads, backward)
    return accumulated


def setup(
    stage: Stage, cfg: TrainConfig, tx: optax.GradientTransformation
) -> tuple[Placement, dict, Callable]:
    """The device placement, the initial (placed) state and the jitted step for `cfg`.

    `train` and `scaling-bench` both start here, so the benchmark times the trainer's own step.
    """
    placement = Placement.create(cfg.parallel, len(stage.train_batch(0)) // cfg.grad_accum)
    state = placement.state(_init_state(stage, tx))
    train_step = make_train_step(accumulate_gradients(stage.loss_fn, cfg.grad_accum), tx)
    return placement, state, placement.keep_state_sharding(train_step, state)


def make_eval(loss_fn: LossFn):
    """Mean loss over all validation batches, in one call."""

    def evaluate(params: Params, eval_data: jax.Array) -> jax.Array:
        return jnp.mean(jax.lax.map(lambda batch: loss_fn(params, batch), eval_data))

    return jax.jit(evaluate)


def _check_same_run(saved: dict, current: dict, run_dir: Path) -> None:
    saved_id, current_id = identity(saved), identity(current)
    changed = [
        f"{k}: {saved_id.get(k)!r} -> {current_id.get(k)!r}"
        for k in sorted(set(saved_id) | set(current_id))
        if saved_id.get(k) != current_id.get(k)
    ]
    if changed:
        raise ResumeError(
            f"{run_dir} holds a checkpoint of a run with a different config "
            f"({'; '.join(changed)}); use a fresh run directory or restore the config."
        )


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


class _Clock:
    """Wall time spent training, with compilation, evaluation and checkpointing taken out."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.excluded = 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    @contextmanager
    def paused(self):
        t0 = time.perf_counter()
        yield
        self.excluded += time.perf_counter() - t0


class _Meter:
    """Tokens per second since the last mark, on the training clock."""

    def __init__(self, clock: _Clock, tokens_per_step: int, step: int) -> None:
        self.clock, self.tokens_per_step = clock, tokens_per_step
        self.mark(step)

    def mark(self, step: int) -> None:
        self.step, self.time = step, self.clock.seconds()

    def rate(self, step: int) -> float:
        steps, seconds = step - self.step, self.clock.seconds() - self.time
        return steps * self.tokens_per_step / seconds if steps > 0 and seconds > 0 else math.nan


def train(
    stage: Stage,
    cfg: TrainConfig,
    config_dict: dict,
    run_dir: Path,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    total_steps: int,
    seed: int,
) -> dict[str, Any]:
    """Train `stage` for `total_steps`, resuming from `run_dir` if it holds a checkpoint.

    Returns the summary, which is also written to `run_dir/summary.json`.
    """
    run_dir = Path(run_dir)
    previous = read_summary(run_dir)
    if previous is not None and previous.get("status") == "completed":
        _check_same_run(previous["config"], config_dict, run_dir)
        log.info("%s already holds a completed run; nothing to do", run_dir)
        return previous

    started = time.time()
    placement, state, train_step = setup(stage, cfg, tx)
    summary: dict[str, Any] = {
        "status": "running",
        "stage": stage.name,
        **stage.record,
        "steps": total_steps,
        "tokens": total_steps * stage.tokens_per_step,
        "tokens_per_step": stage.tokens_per_step,
        "flops_per_token": stage.flops_per_token,
        "flops": total_steps * stage.tokens_per_step * stage.flops_per_token,
        "seed": seed,
        "device": jax.devices()[0].device_kind,
        "n_devices": len(placement.devices),
        "resumed_from_step": None,
        "config": config_dict,
    }

    checkpointer = Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints)
    rows: list[dict[str, Any]] = []
    wall_before = 0.0
    latest = checkpointer.latest_step()
    if latest is not None:
        state, meta = checkpointer.restore(latest, like=state)
        _check_same_run(meta["config"], config_dict, run_dir)
        rows, wall_before = meta["rows"], meta["wall_s"]
        summary["resumed_from_step"] = latest
        log.info("resuming %s from step %d", run_dir, latest)
    write_summary(run_dir, summary)

    evaluate = make_eval(stage.loss_fn)
    eval_data = jnp.asarray(placement.batch(stage.eval_data, axis=1))
    eval_at = set(eval_steps(total_steps, cfg.eval_count))
    start_step = int(state["step"])
    progress = TrainProgress(total_steps, start_step)
    clock = _Clock()
    eval_meter = _Meter(clock, stage.tokens_per_step, start_step)
    log_meter = _Meter(clock, stage.tokens_per_step, start_step)
    compile_s = None
    last_checkpoint = time.monotonic()
    pending_log = None
    diverged_step = 0
    try:
        for step in range(start_step + 1, total_steps + 1):
            state, metrics = train_step(state, placement.batch(stage.train_batch(step - 1)))
            if compile_s is None:  # the first step compiles: keep it out of throughput
                jax.block_until_ready(metrics)
                compile_s = clock.seconds()
                clock.excluded += compile_s
                eval_meter.mark(step)
                log_meter.mark(step)
            if pending_log is not None:  # fetch the last log point only after dispatching
                logged_step, logged = pending_log
                pending_log = None
                progress.update(logged_step, float(logged["loss"]), log_meter.rate(logged_step))
                log_meter.mark(logged_step)
                diverged_step = int(logged["bad_step"])
                if diverged_step:
                    break
            if step % cfg.log_every_steps == 0:
                pending_log = (step, metrics)

            if step in eval_at:
                with clock.paused():
                    val_loss = float(evaluate(state["params"], eval_data))
                rows.append({
                    "step": step,
                    "tokens": step * stage.tokens_per_step,
                    "flops": step * stage.tokens_per_step * stage.flops_per_token,
                    "train_loss": float(state["loss_sum"] / state["loss_count"]),
                    "val_loss": val_loss,
                    "lr": float(schedule(step - 1)),
                    "grad_norm": float(metrics["grad_norm"]),
                    "tokens_per_s": eval_meter.rate(step),
                })
                eval_meter.mark(step)
                state["loss_sum"] = jnp.zeros_like(state["loss_sum"])  # placed as before
                state["loss_count"] = jnp.zeros_like(state["loss_count"])
                progress.eval(step, val_loss)
                diverged_step = int(metrics["bad_step"])
                if diverged_step:
                    break
            if (
                step % cfg.checkpoint_every_steps == 0
                or time.monotonic() - last_checkpoint >= cfg.checkpoint_every_seconds
                or step == total_steps
            ):
                with clock.paused():
                    meta = {"rows": rows, "wall_s": wall_before + time.time() - started,
                            "config": config_dict}
                    checkpointer.save(step, state, meta)
                last_checkpoint = time.monotonic()
        else:
            diverged_step = int(state["bad_step"])
    except Exception as error:
        summary.update(status="failed", error=f"{type(error).__name__}: {error}",
                       wall_s=wall_before + time.time() - started)
        write_summary(run_dir, summary)
        raise
    finally:
        progress.close()
        checkpointer.close()

    timed_steps = int(state["step"]) - start_step - 1
    tokens_per_s = (
        timed_steps * stage.tokens_per_step / clock.seconds() if timed_steps > 0 else None
    )
    summary.update(
        wall_s=wall_before + time.time() - started,
        compile_s=compile_s,
        tokens_per_s=tokens_per_s,
        mfu=mfu(tokens_per_s, stage.flops_per_token, placement.devices) if tokens_per_s else None,
    )
    write_metrics(run_dir, rows)
    if diverged_step:
        summary.update(status="diverged", diverged_step=diverged_step,
                       final_train_loss=None, final_val_loss=None)
        log.warning("loss became non-finite at step %d: run diverged", diverged_step)
    else:
        if stage.position_loss_fn is not None:
            per_batch = jax.jit(lambda p, data: jax.lax.map(
                lambda batch: stage.position_loss_fn(p, batch), data))
            position_data = jnp.asarray(placement.batch(stage.position_data, axis=1))
            write_positions(run_dir, np.mean(per_batch(state["params"], position_data), axis=0))
        final = rows[-1]
        best = min(rows, key=lambda r: r["val_loss"])
        summary.update(
            status="completed",
            final_train_loss=_finite_or_none(final["train_loss"]),
            final_val_loss=_finite_or_none(final["val_loss"]),
            best_val_loss=_finite_or_none(best["val_loss"]),
            best_val_step=best["step"],
        )
    write_summary(run_dir, summary)
    return summary
