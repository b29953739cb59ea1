"""The training loop every stage shares: one jitted, donated step; log-spaced evaluation;
checkpoints on two clocks; resume; the run record.

A stage (pretrain now; fine-tune and RLHF later) is a `Stage`: a loss, a batch source and an
initialisation. Nothing in this module knows which stage it runs. The same step runs on one
device or many (`scaling.parallel`), over the whole batch or micro-batch by micro-batch.

A run may train K same-shape models at once (`train.replicas`, each a `Replica`): the same
step, vmapped over a leading replica axis of the state and of the batch, and the same loop;
each model is recorded as the run it would have been alone (`train_replicas`).

A run is resumed, or kept as completed, only on the data it was trained on: the stage's data
fingerprints (`Stage.data_fingerprints`) go into the record and every checkpoint, and a change
is refused (DataChangedError), unless RESTART_ENV asks to train such a run again from the start.
Any other failure is recorded (`status: failed`, `error`), so a re-launch retries the run.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing, contextmanager
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
from scaling.record import (
    read_replicas,
    read_summary,
    record_failure,
    write_metrics,
    write_positions,
    write_replicas,
    write_summary,
)
from scaling.sweep import exclusive_run, identity, run_id

log = logging.getLogger("scaling")

Params = Any
LossFn = Callable[[Params, jax.Array], jax.Array]

# Set to 1 to train again from the start a run whose data changed since it was recorded or
# checkpointed (its checkpoints are deleted and its record replaced). Scoped to a data change,
# so that leaving it set never throws away a checkpoint that is still good.
RESTART_ENV = "SCALING_RESTART_ON_DATA_CHANGE"
# The packages whose versions a run record states (with Python's).
RECORDED_VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


class ResumeError(RuntimeError):
    """The run directory holds a checkpoint or record of a different run."""


class DataChangedError(ResumeError):
    """The run directory holds a checkpoint or record of this run trained on other data."""


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
    # name -> [k, ...] fixed batches of another corpus, scored with loss_fn at every
    # evaluation as `<name>_loss` (metrics.parquet, and the final value in summary.json)
    extra_eval: dict[str, np.ndarray] = field(default_factory=dict)
    # summary key -> content hash of data the stage reads (pretraining: `corpus_cache`); a
    # record or checkpoint with other values was trained on other data
    data_fingerprints: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Replica:
    """One of the models a run trains: one for a plain run, K with `train.replicas=K`.

    Replicas share a shape, a loss and the validation data; each has its own stage (its
    seed's initialisation and batches), optimizer and schedule. One update, the first
    replica's, steps them all, so their optimizers may differ only in hyperparameters held in
    the optimizer state (`scaling.optim.make_replica_optimizer`).
    """

    stage: Stage
    tx: optax.GradientTransformation
    schedule: optax.Schedule  # its learning rate, as recorded in metrics.parquet
    config: dict  # its standalone config, as recorded in summary.json
    seed: int


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
    replicas: Sequence[Replica], cfg: TrainConfig
) -> tuple[Placement, dict, Callable]:
    """The device placement, the initial (placed) state and the jitted step for `cfg`.

    One replica trains with the plain step. K > 1 replicas stack their states along a new
    leading axis and train with the same step vmapped over it, on batches [K, B, ...]
    (`replica_batch`). `train` and `scaling-bench` both start here, so the benchmark times the
    trainer's own step.
    """
    stage = replicas[0].stage
    placement = Placement.create(cfg.parallel, len(stage.train_batch(0)) // cfg.grad_accum)
    states = [_init_state(replica.stage, replica.tx) for replica in replicas]
    state = placement.state(states[0] if len(states) == 1 else _stacked(states))
    train_step = make_train_step(accumulate_gradients(stage.loss_fn, cfg.grad_accum),
                                 replicas[0].tx)
    if len(replicas) > 1:
        train_step = jax.jit(jax.vmap(train_step), donate_argnums=0)
    return placement, state, placement.keep_state_sharding(train_step, state)


def _stacked(trees: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def replica_batch(replicas: Sequence[Replica], step: int) -> np.ndarray:
    """Batch `step` of each replica: its own [B, ...] for one, stacked [K, B, ...] for K."""
    if len(replicas) == 1:
        return replicas[0].stage.train_batch(step)
    return np.stack([replica.stage.train_batch(step) for replica in replicas])


def _over_replicas(fn: Callable, replicas: int) -> Callable:
    """(params, data) -> x as (params [K, ...], data) -> x [K, ...] for K > 1 replicas."""
    return jax.vmap(fn, in_axes=(0, None)) if replicas > 1 else fn


def _per_replica(x: Any, replicas: int) -> list[np.ndarray]:
    """Each replica's entry of a state or metrics value (its K rows for K > 1 replicas)."""
    x = np.asarray(x)
    return [x] if replicas == 1 else list(x)


def make_eval(loss_fn: LossFn, replicas: int = 1):
    """Mean loss over all validation batches, in one call; [K] losses for K > 1 replicas,
    on the same batches."""

    def evaluate(params: Params, eval_data: jax.Array) -> jax.Array:
        return jnp.mean(jax.lax.map(lambda batch: loss_fn(params, batch), eval_data))

    return jax.jit(_over_replicas(evaluate, replicas))


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

    def norms(params: Params, batches: jax.Array) -> jax.Array:
        def one(batch: jax.Array) -> jax.Array:
            slices = batch.reshape(micro_batches, -1, *batch.shape[1:])

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


def _noise_scales(gradient_norms: Callable, params: Params, replicas: Sequence[Replica],
                  placement: Placement, step: int, n_batches: int,
                  micro_batches: int) -> list[float]:
    """Each replica's noise scale at `step`, from its next `n_batches` training batches."""
    batches = np.stack([replica_batch(replicas, step + j) for j in range(n_batches)])
    if len(replicas) > 1:
        batches = batches.swapaxes(0, 1)  # [K, n, B, ...]
    norms = _per_replica(gradient_norms(params, placement.batch(batches, axis=batches.ndim - 2)),
                         len(replicas))
    rows, tokens_per_row = batches.shape[-2], batches.shape[-1] - 1
    return [noise_scale(float(s), float(b), rows // micro_batches, micro_batches, tokens_per_row)
            for s, b in norms]


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


def _data_changed(saved: dict, current: dict[str, str], where: Path) -> bool:
    """Whether the data fingerprints in `saved` (a record, or a checkpoint's bookkeeping) differ
    from `current`, the data's now: raise DataChangedError naming both unless RESTART_ENV asks
    to start over. A fingerprint `saved` lacks (recorded before it was) is taken as unchanged."""
    changed = [f"{key} {saved[key]} -> {value}" for key, value in current.items()
               if saved.get(key, value) != value]
    if not changed:
        return False
    message = (f"{where} was trained on other data than its config names now "
               f"({'; '.join(changed)}): the corpus changed on disk")
    if os.environ.get(RESTART_ENV) != "1":
        raise DataChangedError(
            f"{message}. Restore the old corpus, or use another run directory, or set "
            f"{RESTART_ENV}=1 to train this run again from the start on the new data.")
    log.warning("%s; training it again from the start (%s=1)", message, RESTART_ENV)
    return True


def versions() -> dict[str, str]:
    """Python's version and those of RECORDED_VERSIONS, as a run record states them."""
    return {"python": platform.python_version(),
            **{name: importlib.metadata.version(name) for name in RECORDED_VERSIONS}}


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


def train(replica: Replica, cfg: TrainConfig, run_dir: Path, total_steps: int) -> dict[str, Any]:
    """Train one model for `total_steps`, resuming from `run_dir` if it holds a checkpoint.

    A completed record of the same config and data is returned as it is; a failed one is
    trained again (from its latest checkpoint). Returns the summary, which is also written to
    `run_dir/summary.json`.
    """
    run_dir = Path(run_dir)
    previous = read_summary(run_dir)
    if previous is not None and previous.get("status") == "completed":
        _check_same_run(previous["config"], replica.config, run_dir)
        if not _data_changed(previous, replica.stage.data_fingerprints, run_dir):
            log.info("%s already holds a completed run; nothing to do", run_dir)
            return previous
    return _train([replica], cfg, replica.config, run_dir, [run_dir], [None], total_steps)[0]


def replica_dirs(replicas: Sequence[Replica], group_dir: Path) -> list[Path]:
    """Where each replica of the group in `group_dir` is recorded: beside it, in the directory
    its own run would have (the `run_id` of its config)."""
    return [Path(group_dir).parent / run_id(replica.config) for replica in replicas]


def train_replicas(
    replicas: Sequence[Replica], cfg: TrainConfig, config_dict: dict, group_dir: Path,
    total_steps: int,
) -> list[dict[str, Any]]:
    """Train the replicas at once and record each as the run it would have been alone.

    `group_dir` holds the group's checkpoints (a killed group resumes like one run) and
    `replicas.json`: the group's status, config and data fingerprints and each replica's run id
    and status; each replica's record goes to its own directory (`replica_dirs`), locked while
    the group trains. A completed group trains nothing again, nor does one whose replicas all
    hold completed records already (of the same data); a replica recorded as completed before
    keeps its record. When another process holds a replica's directory, the group is skipped.
    Returns the replicas' summaries ([] when skipped).
    """
    group_dir = Path(group_dir)
    dirs = replica_dirs(replicas, group_dir)
    fingerprints = replicas[0].stage.data_fingerprints  # the replicas share their data
    group = read_replicas(group_dir)
    if group is not None:
        # Checked whatever the group's status: its record is rewritten as running, with the
        # data of now, before the loop reads its checkpoints.
        _check_same_run(group["config"], config_dict, group_dir)
        changed = _data_changed(group, fingerprints, group_dir)
        if group["status"] == "completed" and not changed:
            log.info("%s already holds a completed group of replicas; nothing to do", group_dir)
            return [read_summary(d) for d in dirs]
    with ExitStack() as locks:
        busy = [d.name for d in dirs if not locks.enter_context(exclusive_run(d))]
        if busy:
            log.warning("%s: replicas %s are being trained by another process; skipped",
                        group_dir, ", ".join(busy))
            return []
        recorded = [read_summary(d) for d in dirs]
        recorded = [s if s is not None and s.get("status") == "completed" else None
                    for s in recorded]
        for i, (replica, d, summary) in enumerate(zip(replicas, dirs, recorded, strict=True)):
            if summary is not None:
                _check_same_run(summary["config"], replica.config, d)
                if _data_changed(summary, fingerprints, d):
                    recorded[i] = None
        summaries = list(recorded)
        if not all(recorded):
            _record_group(group_dir, "running", config_dict, dirs,
                          [s["status"] if s else "running" for s in recorded], fingerprints)
            try:
                summaries = _train(replicas, cfg, config_dict, group_dir, dirs, recorded,
                                   total_steps, group_name=group_dir.name)
            except Exception as error:
                _record_group(group_dir, "failed", config_dict, dirs,
                              [(read_summary(d) or {"status": "failed"})["status"] for d in dirs],
                              fingerprints, error=f"{type(error).__name__}: {error}")
                raise
        _record_group(group_dir, "completed", config_dict, dirs, [s["status"] for s in summaries],
                      fingerprints)
        return summaries


def _record_group(group_dir: Path, status: str, config_dict: dict, dirs: Sequence[Path],
                  statuses: Sequence[str], fingerprints: dict[str, str], **extra: Any) -> None:
    write_replicas(group_dir, {
        "status": status, **extra,
        "replicas": [{"run_id": d.name, "status": s} for d, s in zip(dirs, statuses, strict=True)],
        **fingerprints,
        "config": config_dict,
    })


def _see_divergence(diverged: list[int], bad_step: Any) -> None:
    """Note each replica's first non-finite step (bad_step) the loop had not seen yet."""
    for i, bad in enumerate(_per_replica(bad_step, len(diverged))):
        diverged[i] = diverged[i] or int(bad)


def _mean_of_training(values: Sequence[Any], diverged: Sequence[int]) -> float:
    """The mean over the replicas not known to have diverged (what the progress line shows)."""
    return float(np.mean([v for v, bad in zip(values, diverged, strict=True) if not bad]))


def _train(
    replicas: Sequence[Replica],
    cfg: TrainConfig,
    config_dict: dict,
    run_dir: Path,
    record_dirs: Sequence[Path],
    recorded: Sequence[dict | None],
    total_steps: int,
    group_name: str | None = None,
) -> list[dict[str, Any]]:
    """Train `replicas` for `total_steps`, checkpointing in `run_dir` (and resuming from its
    latest readable checkpoint), and record replica i in record_dirs[i], unless recorded[i] is
    its completed record already (returned as it is).

    A replica whose loss turns non-finite is recorded as diverged, with the evaluations its
    own run would have made, while the others train on; the loop stops early only when every
    replica has diverged. `group_name` (a group's directory) goes into each replica's summary.
    Any error but a refusal (ResumeError: the directory holds another run, or other data, whose
    record is not this run's to change) is recorded in each replica's record as its failure.
    """
    try:
        with closing(Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints)) as ckpt:
            return _loop(replicas, cfg, config_dict, run_dir, record_dirs, recorded, total_steps,
                         group_name, ckpt)
    except ResumeError:
        raise
    except Exception as error:
        for replica, record_dir, done in zip(replicas, record_dirs, recorded, strict=True):
            if done is None:
                record_failure(record_dir, error, replica.config)
        raise


def _loop(
    replicas: Sequence[Replica],
    cfg: TrainConfig,
    config_dict: dict,
    run_dir: Path,
    record_dirs: Sequence[Path],
    recorded: Sequence[dict | None],
    total_steps: int,
    group_name: str | None,
    checkpointer: Checkpointer,
) -> list[dict[str, Any]]:
    """`_train` without its failure records."""
    k = len(replicas)
    stage = replicas[0].stage  # the shape, loss and validation data of every replica
    started = time.time()
    placement, state, train_step = setup(replicas, cfg)
    summaries: list[dict[str, Any]] = [{
        "status": "running",
        "stage": stage.name,
        **replica.stage.record,
        "steps": total_steps,
        "tokens": total_steps * stage.tokens_per_step,
        "tokens_per_step": stage.tokens_per_step,
        "flops_per_token": stage.flops_per_token,
        "flops": total_steps * stage.tokens_per_step * stage.flops_per_token,
        "seed": replica.seed,
        "device": jax.devices()[0].device_kind,
        "n_devices": len(placement.devices),
        "replicas": k,
        **({"replica": i, "replica_group": group_name} if group_name else {}),
        "resumed_from_step": None,
        **stage.data_fingerprints,
        "versions": versions(),
        "config": replica.config,
    } for i, replica in enumerate(replicas)]
    training = [i for i in range(k) if recorded[i] is None]  # the replicas recorded here

    rows: list[list[dict[str, Any]]] = [[] for _ in replicas]
    diverged = [0] * k  # each replica's first non-finite step, once the loop has seen it
    wall_before = 0.0
    restored = checkpointer.restore_latest(
        state, check=lambda meta: _check_same_run(meta["config"], config_dict, run_dir))
    if restored is not None and _data_changed(restored[2].get("data_fingerprints", {}),
                                              stage.data_fingerprints, run_dir):
        checkpointer.discard()
        restored = None
    if restored is not None:
        latest, state, meta = restored
        rows = meta["rows"] if k > 1 else [meta["rows"]]  # one model's: as before replicas
        diverged, wall_before = meta.get("diverged", diverged), meta["wall_s"]
        for summary in summaries:
            summary["resumed_from_step"] = latest
        log.info("resuming %s from step %d", run_dir, latest)
    for i in training:
        write_summary(record_dirs[i], summaries[i])

    evaluate = make_eval(stage.loss_fn, k)
    eval_data = jnp.asarray(placement.batch(stage.eval_data, axis=1))
    extra_eval = {f"{name}_loss": jnp.asarray(placement.batch(data, axis=1))
                  for name, data in stage.extra_eval.items()}
    eval_at = set(eval_steps(total_steps, cfg.eval_count))
    micro_batches = noise_scale_micro_batches(len(stage.train_batch(0)))
    gradient_norms = make_gradient_norms(stage.loss_fn, micro_batches, k)
    start_step = int(np.max(state["step"]))
    progress = TrainProgress(total_steps, start_step)
    clock = _Clock()
    eval_meter = _Meter(clock, stage.tokens_per_step, start_step)  # each replica's rate
    log_meter = _Meter(clock, k * stage.tokens_per_step, start_step)  # the group's
    compile_s = None
    last_checkpoint = time.monotonic()
    pending_log = None
    try:
        for step in range(start_step + 1, total_steps + 1):
            state, metrics = train_step(state, placement.batch(replica_batch(replicas, step - 1)))
            if compile_s is None:  # the first step compiles: keep it out of throughput
                jax.block_until_ready(metrics)
                compile_s = clock.seconds()
                clock.excluded += compile_s
                eval_meter.mark(step)
                log_meter.mark(step)
            if pending_log is not None:  # fetch the last log point only after dispatching
                logged_step, logged = pending_log
                pending_log = None
                progress.update(logged_step,
                                _mean_of_training(_per_replica(logged["loss"], k), diverged),
                                log_meter.rate(logged_step))
                log_meter.mark(logged_step)
                _see_divergence(diverged, logged["bad_step"])
                if all(diverged):
                    break
            if step % cfg.log_every_steps == 0:
                pending_log = (step, metrics)

            if step in eval_at:
                with clock.paused():
                    val_loss = _per_replica(evaluate(state["params"], eval_data), k)
                    extra = {column: _per_replica(evaluate(state["params"], data), k)
                             for column, data in extra_eval.items()}
                    if cfg.noise_scale_batches:
                        extra["noise_scale"] = _noise_scales(
                            gradient_norms, state["params"], replicas, placement, step,
                            cfg.noise_scale_batches, micro_batches)
                train_loss = _per_replica(state["loss_sum"] / state["loss_count"], k)
                grad_norm = _per_replica(metrics["grad_norm"], k)
                tokens_per_s = eval_meter.rate(step)
                for i, replica in enumerate(replicas):
                    if diverged[i]:  # its own run would have stopped here
                        continue
                    rows[i].append({
                        "step": step,
                        "tokens": step * stage.tokens_per_step,
                        "flops": step * stage.tokens_per_step * stage.flops_per_token,
                        "train_loss": float(train_loss[i]),
                        "val_loss": float(val_loss[i]),
                        "lr": float(replica.schedule(step - 1)),
                        "grad_norm": float(grad_norm[i]),
                        "tokens_per_s": tokens_per_s,
                        **{column: float(values[i]) for column, values in extra.items()},
                    })
                eval_meter.mark(step)
                state["loss_sum"] = jnp.zeros_like(state["loss_sum"])  # placed as before
                state["loss_count"] = jnp.zeros_like(state["loss_count"])
                progress.eval(step, _mean_of_training(val_loss, diverged))
                _see_divergence(diverged, metrics["bad_step"])
                if all(diverged):
                    break
            if (
                step % cfg.checkpoint_every_steps == 0
                or time.monotonic() - last_checkpoint >= cfg.checkpoint_every_seconds
                or step == total_steps
            ):
                with clock.paused():
                    meta = {"rows": rows if k > 1 else rows[0],
                            "wall_s": wall_before + time.time() - started, "config": config_dict,
                            "data_fingerprints": stage.data_fingerprints}
                    if k > 1:
                        meta["diverged"] = diverged
                    checkpointer.save(step, state, meta)
                last_checkpoint = time.monotonic()
        else:
            _see_divergence(diverged, state["bad_step"])
    finally:
        progress.close()

    timed_steps = int(np.max(state["step"])) - start_step - 1
    tokens_per_s = (
        timed_steps * stage.tokens_per_step / clock.seconds() if timed_steps > 0 else None
    )
    wall_s = wall_before + time.time() - started
    positions = None
    if stage.position_loss_fn is not None and not all(diverged):
        per_batch = jax.jit(_over_replicas(lambda p, data: jax.lax.map(
            lambda batch: stage.position_loss_fn(p, batch), data), k))
        position_data = jnp.asarray(placement.batch(stage.position_data, axis=1))
        positions = _per_replica(np.mean(per_batch(state["params"], position_data), axis=-2), k)
    for i in training:
        summary, record_dir, replica_rows = summaries[i], record_dirs[i], rows[i]
        summary.update(
            wall_s=wall_s,
            compile_s=compile_s,
            tokens_per_s=tokens_per_s,
            mfu=mfu(tokens_per_s, stage.flops_per_token, placement.devices)
            if tokens_per_s else None,
        )
        if group_name:  # the whole group's rate, all replicas together
            summary.update(
                group_tokens_per_s=k * tokens_per_s if tokens_per_s else None,
                group_mfu=mfu(k * tokens_per_s, stage.flops_per_token, placement.devices)
                if tokens_per_s else None,
            )
        write_metrics(record_dir, replica_rows)
        if diverged[i]:
            summary.update(status="diverged", diverged_step=diverged[i],
                           final_train_loss=None, final_val_loss=None,
                           **dict.fromkeys(extra_eval))
            log.warning("loss became non-finite at step %d: %s diverged", diverged[i],
                        record_dir.name)
        else:
            if positions is not None:
                write_positions(record_dir, positions[i])
            final = replica_rows[-1]
            best = min(replica_rows, key=lambda r: r["val_loss"])
            summary.update(
                status="completed",
                final_train_loss=_finite_or_none(final["train_loss"]),
                final_val_loss=_finite_or_none(final["val_loss"]),
                best_val_loss=_finite_or_none(best["val_loss"]),
                best_val_step=best["step"],
                **{column: _finite_or_none(final[column]) for column in extra_eval},
            )
        write_summary(record_dir, summary)
    return [recorded[i] or summaries[i] for i in range(k)]
