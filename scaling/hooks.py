"""Everything the training loop does besides stepping, each on its own schedule.

The loop (`scaling.train.run_loop`) only steps and calls hooks; a hook sees the `LoopState` after
each step and may record, print, checkpoint or stop. Evaluation runs the stage's measurements
(`Measurement`: extra corpora, the gradient noise scale), each adding columns to the evaluation
row; a hook's `finish` runs once after the last step (the per-position loss). A new measurement
is a new hook or measurement, never a new branch in the loop (levanter's `add_hook`).

The loop trains K models at once (K = 1 for a plain run, `train.replicas` for a group): device
values carry a leading replica axis when K > 1, and `LoopState.per_model` splits them.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scaling.batch import stack
from scaling.checkpoint import Checkpointer
from scaling.distributed import max_over_processes
from scaling.parallel import Placement
from scaling.progress import TrainProgress
from scaling.step import (
    LossFn,
    make_eval,
    make_gradient_norms,
    noise_scale,
    noise_scale_micro_batches,
    over_replicas,
)

log = logging.getLogger("scaling")
# What asks a run to stop: Ctrl-C, what `kill`, Slurm (at its time limit) and most schedulers
# send first, and the signals sent ahead of a time limit (`--signal=USR1@SECONDS`; submitit's
# USR2, before it requeues a job).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Clock:
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


class Meter:
    """Tokens per second on the training clock, since the oldest of the last `window` marks
    (1: since the last mark; more: a rate smoothed over the marks of that window)."""

    def __init__(self, clock: Clock, tokens_per_step: int, step: int, window: int = 1) -> None:
        self.clock, self.tokens_per_step = clock, tokens_per_step
        self.marks: deque[tuple[int, float]] = deque(maxlen=window)
        self.mark(step)

    def mark(self, step: int) -> None:
        self.marks.append((step, self.clock.seconds()))

    def restart(self, step: int) -> None:
        """Forget the marks so far (taken before compilation ended) and mark `step`."""
        self.marks.clear()
        self.mark(step)

    def rate(self, step: int) -> float:
        first_step, first_time = self.marks[0]
        steps, seconds = step - first_step, self.clock.seconds() - first_time
        return steps * self.tokens_per_step / seconds if steps > 0 and seconds > 0 else math.nan


@dataclass
class LoopState:
    """What the hooks see after each step, and the per-model bookkeeping they keep."""

    state: dict  # the placed train state; [K, ...] leaves for K > 1 models
    step: int  # steps taken (the state's step)
    total_steps: int
    k: int  # models trained at once
    placement: Placement
    batch_at: Callable[[int], Any]  # step -> the models' batch (stacked [K, ...] for K > 1)
    clock: Clock
    rows: list[list[dict[str, Any]]]  # each model's evaluation rows (metrics.parquet)
    diverged: list[int]  # each model's first non-finite step, once seen; 0: none
    metrics: dict | None = None  # the last step's metrics, still on the device
    compile_s: float | None = None  # the first step's wall time, compilation included
    stop: bool = False  # set by a hook to end the loop after this step
    interrupted: str | None = None  # the signal that stopped the loop early (SIGINT, SIGTERM)
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # per model, from `finish`

    @contextmanager
    def paused(self):
        """Time taken out of the training clock (evaluation, checkpoints), once the steps
        already dispatched have finished: waiting for them is training."""
        jax.block_until_ready(self.state)
        with self.clock.paused():
            yield

    def per_model(self, x: Any) -> list[np.ndarray]:
        """Each model's entry of a device value (its K rows for K > 1)."""
        x = np.asarray(x)
        return [x] if self.k == 1 else list(x)

    def see_divergence(self, bad_step: Any) -> None:
        """Note each model's first non-finite step; stop the loop once every model diverged."""
        for i, bad in enumerate(self.per_model(bad_step)):
            self.diverged[i] = self.diverged[i] or int(bad)
        self.stop = self.stop or all(self.diverged)

    def mean_of_training(self, values: Sequence[Any]) -> float:
        """The mean over the models not known to have diverged (what the progress line shows)."""
        return float(np.mean([v for v, bad in zip(values, self.diverged, strict=True) if not bad]))


class Hook:
    """Called after every step; `finish` once after the last, `close` however the loop ends."""

    def __call__(self, loop: LoopState) -> None:
        pass

    def finish(self, loop: LoopState) -> None:
        pass

    def close(self) -> None:
        pass


class Measurement:
    """Columns of the evaluation row (`name -> one value per model`), at each evaluation;
    the final values of the columns in `summary` also go into summary.json."""

    summary: tuple[str, ...] = ()

    def __call__(self, loop: LoopState) -> dict[str, list[float]]:
        raise NotImplementedError


class CompileTime(Hook):
    """The first step compiles: time it, and keep it out of every throughput."""

    def __init__(self, meters: Sequence[Meter]) -> None:
        self.meters = meters

    def __call__(self, loop: LoopState) -> None:
        if loop.compile_s is not None:
            return
        jax.block_until_ready(loop.metrics)
        loop.compile_s = loop.clock.seconds()
        loop.clock.excluded += loop.compile_s
        for meter in self.meters:
            meter.restart(loop.step)


class Progress(Hook):
    """The train loss and throughput every `every` steps, and divergence seen on the way.

    A log point's metrics are fetched one step later, after the next step is dispatched, so
    that the host sync does not stall the device.
    """

    def __init__(self, progress: TrainProgress, meter: Meter, every: int) -> None:
        self.progress, self.meter, self.every = progress, meter, every
        self.pending: tuple[int, dict] | None = None

    def __call__(self, loop: LoopState) -> None:
        if self.pending is not None:
            step, metrics = self.pending
            self.pending = None
            self.progress.update(step, loop.mean_of_training(loop.per_model(metrics["loss"])),
                                 self.meter.rate(step))
            self.meter.mark(step)
            loop.see_divergence(metrics["bad_step"])
            if loop.stop:
                return
        if loop.step % self.every == 0:
            self.pending = (loop.step, loop.metrics)

    def close(self) -> None:
        self.progress.close()


class Evaluation(Hook):
    """At `at` steps: validation loss, the stage's measurements, one row per model."""

    def __init__(self, at: set[int], loss_fn: LossFn, eval_data: Any,
                 measurements: Sequence[Measurement], schedules: Sequence[Callable],
                 tokens_per_step: int, flops_per_token: int, progress: TrainProgress,
                 meter: Meter) -> None:
        self.at, self.measurements, self.schedules = at, measurements, schedules
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.progress, self.meter = progress, meter
        self.evaluate = make_eval(loss_fn, len(schedules))
        self.eval_data = eval_data

    def __call__(self, loop: LoopState) -> None:
        if loop.step not in self.at:
            return
        state, step = loop.state, loop.step
        with loop.paused():
            val_loss = loop.per_model(self.evaluate(state["params"], self.eval_data))
            extra = {}
            for measure in self.measurements:
                extra.update(measure(loop))
        train_loss = loop.per_model(state["loss_sum"] / state["loss_count"])
        grad_norm = loop.per_model(loop.metrics["grad_norm"])
        tokens_per_s = self.meter.rate(step)
        # before the rows: a model whose loss went non-finite by this step gets no row of NaNs
        loop.see_divergence(loop.metrics["bad_step"])
        for i, schedule in enumerate(self.schedules):
            if loop.diverged[i]:  # its own run would have stopped here
                continue
            loop.rows[i].append({
                "step": step,
                "tokens": step * self.tokens_per_step,
                "flops": step * self.tokens_per_step * self.flops_per_token,
                "train_loss": float(train_loss[i]),
                "val_loss": float(val_loss[i]),
                "lr": float(schedule(step - 1)),
                "grad_norm": float(grad_norm[i]),
                "tokens_per_s": tokens_per_s,
                **{column: float(values[i]) for column, values in extra.items()},
            })
        self.meter.mark(step)
        state["loss_sum"] = jnp.zeros_like(state["loss_sum"])  # placed as before
        state["loss_count"] = jnp.zeros_like(state["loss_count"])
        if not all(loop.diverged):
            self.progress.eval(step, loop.mean_of_training(val_loss))


class Checkpointing(Hook):
    """A checkpoint every `every_steps` steps or `every_seconds` of wall time, at each step of
    `at` (a WSD trunk's branch points) and at the end; `meta(loop)` is the JSON bookkeeping
    saved beside the state.

    Across processes the save is a collective, so every process must save at the same step:
    the wall-time interval runs out on each process's clock at its own moment, and they agree
    (`max_over_processes`) to save at the first step after which any clock ran out. (Saving
    alone, a process took its next collective for the others' training step: gloo aborted
    both.) A one-process run reads its clock alone.
    """

    def __init__(self, checkpointer: Checkpointer, every_steps: int, every_seconds: float,
                 meta: Callable[[LoopState], dict], at: Collection[int] = ()) -> None:
        self.checkpointer, self.every_steps, self.every_seconds = (
            checkpointer, every_steps, every_seconds)
        self.meta, self.at = meta, frozenset(at)
        self.last = time.monotonic()
        self.saved = -1  # the step of the last checkpoint saved here
        self.joined = jax.process_count() > 1

    def __call__(self, loop: LoopState) -> None:
        if (loop.step % self.every_steps == 0 or loop.step in self.at
                or loop.step == loop.total_steps or self._clock_ran_out()):
            self.save(loop)

    def _clock_ran_out(self) -> bool:
        """Whether `every_seconds` have passed since the last save, on any process's clock."""
        ran_out = time.monotonic() - self.last >= self.every_seconds
        return bool(max_over_processes([ran_out])[0]) if self.joined else ran_out

    def save(self, loop: LoopState) -> None:
        """Checkpoint this step, unless it is saved already."""
        if loop.step == self.saved:
            return
        with loop.paused():
            self.checkpointer.save(loop.step, loop.state, self.meta(loop))
        self.last, self.saved = time.monotonic(), loop.step


class Interruption(Hook):
    """On SIGINT or SIGTERM, finish the step under way, checkpoint it and stop the loop, with
    `loop.interrupted` set: the run resumes from that step when launched again.

    The handlers are this hook's from its creation to its `close`. After the first signal a
    Ctrl-C acts as it would without them (twice: KeyboardInterrupt, at once), while a repeated
    SIGTERM (a scheduler's, sent to every process of the job) does not cut the checkpoint
    short. A Python handler that the signal had before (submitit's, which requeues a Slurm job)
    is kept as `chained`, for the caller to run once the run is recorded. A signal during the
    last step changes nothing, the run completes. Off the main thread, where Python cannot take
    signals, it does nothing.

    Across processes (`scaling.distributed`) each process gets its own signals at its own
    moment (Slurm signals the tasks of a job one by one; a user may kill one), but all must
    stop at the same step: the checkpoint is a collective, and a process that steps on alone
    meets the others' checkpoint with its next step's collectives (gloo aborts both; NCCL may
    wait forever). So after each step they agree (`max_over_processes`) and all stop at the
    first step after which any of them had a signal, each with its own signal or, having none,
    the highest-numbered one another process got. A one-process run does not agree with anyone
    and pays nothing for it.
    """

    def __init__(self, checkpointing: Checkpointing,
                 signals: Sequence[signal.Signals] = STOP_SIGNALS) -> None:
        self.checkpointing = checkpointing
        self.received: signal.Signals | None = None
        self.chained: Callable[[int, Any], Any] | None = None
        self.previous: dict[signal.Signals, Any] = {}
        self.joined = jax.process_count() > 1
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._receive) for s in signals}

    def _receive(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            return
        self.received = signal.Signals(signum)
        previous = self.previous.get(self.received)
        if callable(previous) and previous is not signal.default_int_handler:
            self.chained = previous
        if signal.SIGINT in self.previous:  # a second Ctrl-C is not ours to soften
            signal.signal(signal.SIGINT, self.previous.pop(signal.SIGINT))
        log.warning("%s received: stopping after this step, with a checkpoint",
                    self.received.name)

    def _agreed(self) -> signal.Signals | None:
        """This process's signal, or where it has none, the one the others agree on."""
        if not self.joined:
            return self.received
        agreed = int(max_over_processes([self.received or 0])[0])
        if self.received is None and agreed:
            log.warning("%s received by another process: stopping after this step, with a "
                        "checkpoint", signal.Signals(agreed).name)
        return self.received or (signal.Signals(agreed) if agreed else None)

    def __call__(self, loop: LoopState) -> None:
        if loop.step == loop.total_steps:
            return
        stop = self._agreed()
        if stop is None:
            return
        self.checkpointing.save(loop)
        loop.interrupted, loop.stop = stop.name, True

    def _restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def close(self) -> None:
        self._restore()


class ExtraEval(Measurement):
    """`<name>_loss`: the loss on fixed batches [k, B, ...] of another corpus (a transfer
    corpus, the parent's validation split); `<name>_<metric>` for another per-batch mean
    `loss_fn` (a reward model's pairwise accuracy), each batch weighted as the loss is."""

    def __init__(self, name: str, loss_fn: LossFn, data: Any, metric: str = "loss") -> None:
        self.column, self.loss_fn, self.data = f"{name}_{metric}", loss_fn, data
        self.summary = (self.column,)
        self.evaluate: Callable | None = None

    def __call__(self, loop: LoopState) -> dict[str, list[float]]:
        if self.evaluate is None:  # compiled, and the data placed, on first use
            self.evaluate = make_eval(self.loss_fn, loop.k)
            self.data = jax.tree_util.tree_map(
                jnp.asarray, loop.placement.batch(self.data, axis=1))
        return {self.column: loop.per_model(self.evaluate(loop.state["params"], self.data))}


class NoiseScale(Measurement):
    """`noise_scale`: each model's gradient noise scale B_simple in tokens (McCandlish et al.
    2018), from its next `n_batches` training batches (`LmBatch`es), each cut into slices."""

    def __init__(self, loss_fn: LossFn, n_batches: int) -> None:
        self.loss_fn, self.n_batches = loss_fn, n_batches
        self.gradient_norms: Callable | None = None

    def __call__(self, loop: LoopState) -> dict[str, list[float]]:
        batches = stack([loop.batch_at(loop.step + j) for j in range(self.n_batches)])
        if loop.k > 1:  # [n, K, B, ...] -> [K, n, B, ...]
            batches = jax.tree_util.tree_map(lambda x: x.swapaxes(0, 1), batches)
        tokens = batches.tokens
        rows, tokens_per_row = tokens.shape[-2], tokens.shape[-1] - 1
        micro_batches = noise_scale_micro_batches(rows)
        if self.gradient_norms is None:  # compiled on first use, for the loop's K models
            self.gradient_norms = make_gradient_norms(self.loss_fn, micro_batches, loop.k)
        placed = loop.placement.batch(batches, axis=tokens.ndim - 2)  # the batch axis
        norms = loop.per_model(self.gradient_norms(loop.state["params"], placed))
        return {"noise_scale": [
            noise_scale(float(s), float(b), rows // micro_batches, micro_batches, tokens_per_row)
            for s, b in norms]}


class PositionLoss(Hook):
    """Once, after the last step: each model's loss at every context position [T] over fixed
    batches [k, B, ...], as `artifacts[i]["positions"]` (in-context learning)."""

    def __init__(self, position_loss_fn: Callable, data: Any) -> None:
        self.position_loss_fn, self.data = position_loss_fn, data

    def finish(self, loop: LoopState) -> None:
        if all(loop.diverged):
            return
        per_batch = jax.jit(over_replicas(lambda p, data: jax.lax.map(
            lambda batch: self.position_loss_fn(p, batch), data), loop.k))
        data = jax.tree_util.tree_map(jnp.asarray, loop.placement.batch(self.data, axis=1))
        positions = loop.per_model(np.mean(per_batch(loop.state["params"], data), axis=-2))
        for artifacts, losses in zip(loop.artifacts, positions, strict=True):
            artifacts["positions"] = losses
