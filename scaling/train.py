"""The training loop every stage shares: a short loop of steps, and hooks for the rest.

A stage (pretrain, finetune, sft, ...) is a `Stage`: a loss, a batch source, validation data,
an initialisation and its own measurements. Nothing in this module knows which stage it runs.
`run_loop` only steps and calls hooks (`scaling.hooks`): evaluation, checkpoints on the step
and wall clocks, progress, divergence, the stage's measurements. `train_models` builds the
hooks, resumes from the latest readable checkpoint, and writes each model's record.

The loop trains K models at once: one for a plain run (`train`), or a group of replicas vmapped
in one step (`scaling.replicas`), each recorded as the run it would have been alone.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental.compilation_cache import compilation_cache

from scaling.batch import batch_rows, stack
from scaling.checkpoint import Checkpointer
from scaling.config import ConfigError, TrainConfig
from scaling.distributed import is_primary
from scaling.hooks import (
    Checkpointing,
    Clock,
    CompileTime,
    Evaluation,
    Hook,
    Interruption,
    LoopState,
    Measurement,
    Meter,
    Progress,
)
from scaling.progress import TrainProgress
from scaling.record import (
    ResumeError,
    check_same_run,
    completed_record,
    data_changed,
    record_failure,
    write_artifacts,
    write_metrics,
    write_summary,
)
from scaling.step import Batch, LossFn, Params, init_state, setup
from scaling.summary import ending, finish_summary, start_summary

log = logging.getLogger("scaling")
# Progress lines the logged tokens/s is averaged over: one interval swings with the host's
# hiccups (a save, a sync), a window of them shows the run's pace.
LOG_WINDOW = 10


class Interrupted(BaseException):
    """The run stopped early on a signal, checkpointed and recorded as `interrupted`.

    Like KeyboardInterrupt, not an Exception: no handler of errors records it as a failure,
    and a sweep in this process stops instead of going on to its next run.
    """

    def __init__(self, step: int, signal_name: str, run_dir: Path,
                 then: Callable[[int, Any], Any] | None = None) -> None:
        super().__init__(f"interrupted at step {step} ({signal_name}); "
                         "run the same command to resume")
        self.step, self.signal_name, self.run_dir = step, signal_name, run_dir
        self.then = then  # the signal's other handler, to run now (`Interruption.chained`)

    @property
    def signum(self) -> int:
        return int(signal.Signals[self.signal_name])

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process that the signal ended."""
        return 128 + self.signum


@dataclass(frozen=True)
class Stage:
    """What a run trains; the loop is the same for every stage."""

    name: str
    loss_fn: LossFn  # (params, batch) -> weighted mean loss
    # step -> batch, a pure function of the step; None where `source` makes the batches
    train_batch: Callable[[int], Batch] | None
    eval_data: Batch  # [k, B, ...]: k fixed validation batches
    init_params: Callable[[], Params]
    tokens_per_step: int  # tokens the model reads per step (inputs, weighted or not)
    flops_per_token: int
    record: dict[str, Any] = field(default_factory=dict)  # stage facts for summary.json
    # columns added to each evaluation row (extra corpora, the noise scale); each final value
    # of a `*_loss` column also goes into summary.json
    measurements: tuple[Measurement, ...] = ()
    hooks: tuple[Hook, ...] = ()  # the stage's own hooks (the per-position loss at the end)
    # summary key -> content hash of data the stage reads (pretraining: `corpus_cache`); a
    # record or checkpoint with other values was trained on other data
    data_fingerprints: dict[str, str] = field(default_factory=dict)
    # batches that depend on the training itself (PPO's rollouts, drawn from the current
    # parameters), instead of train_batch
    source: BatchSource | None = None


class BatchSource(Protocol):
    """Batches made from the loop as it stands (PPO's rollouts, drawn by the current policy).

    What it keeps between steps lives in the train state (`init` adds its entries, the step
    passes them through), so a checkpoint holds it and a resumed run reads the same batches
    without replaying the steps before. One model only (no replicas).
    """

    rows: int  # sequences per batch

    def init(self) -> dict[str, Any]:
        """The entries it adds to the train state, before the first batch (host arrays)."""

    def __call__(self, loop: LoopState, step: int) -> Batch:
        """The batch of step `step` (0-based), made from `loop.state` after `step` steps; may
        write its own entries of `loop.state`."""


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


@dataclass(frozen=True)
class StartFrom:
    """Another run's checkpoint that a run starts from when it has none of its own: a WSD
    cooldown branch's trunk step (`scaling.branches`), the whole train state, optimizer
    included, with the evaluations recorded up to it."""

    directory: Path  # that run's checkpoints/
    step: int
    config: dict  # that run's config, which the checkpoint must hold


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


def models_batch(replicas: Sequence[Replica], step: int) -> Batch:
    """Batch `step` of each model: its own [B, ...] for one, stacked [K, B, ...] for K.
    Raises ConfigError for a stage whose batches come from its `source` (stage=rl's rollouts,
    drawn during training: no batch is a function of the step alone)."""
    if replicas[0].stage.train_batch is None:
        raise ConfigError(f"stage={replicas[0].stage.name} draws its batches during training "
                          "(a batch source): they cannot be made ahead of it")
    if len(replicas) == 1:
        return replicas[0].stage.train_batch(step)
    return stack([replica.stage.train_batch(step) for replica in replicas])


def setup_models(replicas: Sequence[Replica], cfg: TrainConfig):
    """`scaling.step.setup` for these models: (placement, placed state, jitted step)."""
    stage = replicas[0].stage
    states = [init_state(r.stage.init_params(), r.tx)  # each its own peak LR
              | (r.stage.source.init() if r.stage.source else {}) for r in replicas]
    rows = stage.source.rows if stage.source else batch_rows(stage.train_batch(0))
    return setup(states, replicas[0].tx, stage.loss_fn, cfg.parallel, rows // cfg.grad_accum,
                 cfg.grad_accum)


def training_steps(loop: LoopState, step_fn: Callable) -> Iterator[LoopState]:
    """Take the remaining steps one at a time, yielding the loop after each (levanter's
    `training_steps`); the batch of step s is `batch_at(s - 1)`, a pure function of s (or, for
    a stage with a `source`, of the state the checkpoints keep)."""
    for step in range(loop.step + 1, loop.total_steps + 1):
        batch = loop.placement.batch(loop.batch_at(step - 1))
        loop.state, loop.metrics = step_fn(loop.state, batch)
        loop.step = step
        yield loop


def run_loop(loop: LoopState, step_fn: Callable, hooks: Sequence[Hook]) -> LoopState:
    """Step until the last step or a hook says stop, calling every hook after each step, then
    each hook's `finish` unless the run was interrupted (it has not ended: it will resume).
    Returns the loop as it ended."""
    try:
        for _ in training_steps(loop, step_fn):
            for hook in hooks:
                hook(loop)
                if loop.stop:
                    break
            if loop.stop:
                break
        loop.see_divergence(loop.state["bad_step"])
        for hook in hooks if loop.interrupted is None else ():
            hook.finish(loop)
    finally:
        for hook in hooks:
            hook.close()
    return loop


def train(replica: Replica, cfg: TrainConfig, run_dir: Path, total_steps: int) -> dict[str, Any]:
    """Train one model for `total_steps`, resuming from `run_dir` if it holds a checkpoint.

    A finished record (completed or diverged) of the same config and data is returned as it
    is; an interrupted or failed one is trained again (from its latest checkpoint). Returns the
    summary, which is also written to `run_dir/summary.json`.
    """
    run_dir = Path(run_dir)
    previous = completed_record(run_dir, replica.config, replica.stage.data_fingerprints)
    if previous is not None:
        log.info("%s already holds a %s run; nothing to do", run_dir, previous["status"])
        return previous
    return train_models([replica], cfg, replica.config, run_dir, [run_dir], [None],
                        total_steps)[0]


def train_models(
    replicas: Sequence[Replica],
    cfg: TrainConfig,
    config_dict: dict,
    run_dir: Path,
    record_dirs: Sequence[Path],
    recorded: Sequence[dict | None],
    total_steps: int,
    group_name: str | None = None,
    keep_steps: Sequence[int] = (),
    start_from: StartFrom | None = None,
) -> list[dict[str, Any]]:
    """Train `replicas` for `total_steps`, checkpointing in `run_dir` (and resuming from its
    latest readable checkpoint), and record model i in record_dirs[i], unless recorded[i] is
    its completed record already (returned as it is).

    A model whose loss turns non-finite is recorded as diverged, with the evaluations its own
    run would have made, while the others train on; the loop stops early only when every
    model has diverged. `group_name` (a group's directory) goes into each model's summary.
    Any error but a refusal (ResumeError: the directory holds another run, or other data, whose
    record is not this run's to change) is recorded in each model's record as its failure.
    Raises Interrupted, each model recorded as interrupted, when a signal stopped the loop.
    `keep_steps` are checkpointed and kept whatever train.keep_checkpoints prunes (a WSD
    trunk's branch points); a run without a checkpoint of its own starts from `start_from`.
    """
    try:
        with closing(Checkpointer(run_dir / "checkpoints", keep=cfg.keep_checkpoints,
                                  keep_steps=keep_steps)) as ckpt:
            return _train(replicas, cfg, config_dict, run_dir, record_dirs, recorded,
                          total_steps, group_name, ckpt, keep_steps, start_from)
    except ResumeError:
        raise
    except Exception as error:
        for replica, record_dir, done in zip(replicas, record_dirs, recorded, strict=True):
            if done is None:
                record_failure(record_dir, error, replica.config)
        raise


def _loggers(cfg: TrainConfig, record_dirs: Sequence[Path], training: Sequence[int],
             loop: LoopState, config_dict: dict, flops_per_token: int) -> list[Hook]:
    """The live logs train.loggers asks for, of the models recorded here, by process 0 alone."""
    if not training or not is_primary():
        return []
    from scaling.sweep import flatten

    hooks: list[Hook] = []
    if "tensorboard" in cfg.loggers:
        from scaling.tensorboard import TensorBoardLog

        hooks.append(TensorBoardLog(record_dirs, training, loop, flatten(config_dict),
                                    flops_per_token, loop.placement.devices))
    if "wandb" in cfg.loggers:
        from scaling.wandb_log import WandbLog

        hooks.append(WandbLog(record_dirs, training, loop, flatten(config_dict)))
    return hooks


def _train(replicas: Sequence[Replica], cfg: TrainConfig, config_dict: dict, run_dir: Path,
           record_dirs: Sequence[Path], recorded: Sequence[dict | None], total_steps: int,
           group_name: str | None, checkpointer: Checkpointer, keep_steps: Sequence[int] = (),
           start_from: StartFrom | None = None) -> list[dict[str, Any]]:
    """`train_models` without its failure records: set up, resume, loop, record."""
    k, stage = len(replicas), replicas[0].stage  # the shape, loss, data of every model
    started = time.time()
    placement, state, step_fn = setup_models(replicas, cfg)
    summaries = [start_summary(r, i, k, total_steps, len(placement.devices), group_name)
                 for i, r in enumerate(replicas)]
    training = [i for i in range(k) if recorded[i] is None]  # the models recorded here
    source = stage.source
    loop = LoopState(state=state, step=0, total_steps=total_steps, k=k, placement=placement,
                     batch_at=lambda step: (models_batch(replicas, step) if source is None
                                            else source(loop, step)), clock=Clock(),
                     rows=[[] for _ in replicas], diverged=[0] * k,
                     artifacts=[{} for _ in replicas])
    wall_before = _resume(loop, checkpointer, config_dict, stage.data_fingerprints, run_dir,
                          start_from)
    if loop.step and (start_from is None or loop.step != start_from.step):  # its own checkpoint
        for summary in summaries:
            summary["resumed_from_step"] = loop.step
    for i in training:
        write_summary(record_dirs[i], summaries[i])

    def meta(loop: LoopState) -> dict:
        saved = {"rows": loop.rows if k > 1 else loop.rows[0],
                 "wall_s": wall_before + time.time() - started, "config": config_dict,
                 "data_fingerprints": stage.data_fingerprints}
        return saved | ({"diverged": loop.diverged} if k > 1 else {})

    progress = TrainProgress(total_steps, loop.step, tty=None if is_primary() else False)
    eval_meter = Meter(loop.clock, stage.tokens_per_step, loop.step)  # each model's rate
    # the group's, over the last LOG_WINDOW progress lines
    log_meter = Meter(loop.clock, k * stage.tokens_per_step, loop.step, LOG_WINDOW)
    eval_data = jax.tree_util.tree_map(jnp.asarray, placement.batch(stage.eval_data, axis=1))
    start_step = loop.step
    checkpointing = Checkpointing(checkpointer, cfg.checkpoint_every_steps,
                                  cfg.checkpoint_every_seconds, meta, at=keep_steps)
    interruption = Interruption(checkpointing)
    run_loop(loop, step_fn, [
        CompileTime([eval_meter, log_meter]),
        Progress(progress, log_meter, cfg.log_every_steps),
        Evaluation(set(eval_steps(total_steps, cfg.eval_count)), stage.loss_fn, eval_data,
                   stage.measurements, [r.schedule for r in replicas], stage.tokens_per_step,
                   stage.flops_per_token, progress, eval_meter),
        checkpointing,
        *stage.hooks,
        *_loggers(cfg, record_dirs, training, loop, config_dict, stage.flops_per_token),
        interruption,
    ])
    # A record that says completed (a parent's latest checkpoint is its last step) or
    # interrupted (resumes from this step) is written once that checkpoint is committed
    checkpointer.wait()
    if loop.interrupted is not None:
        wall_s = wall_before + time.time() - started
        for i in training:
            summaries[i].update(status="interrupted", interrupted_step=loop.step, wall_s=wall_s)
            write_metrics(record_dirs[i], loop.rows[i])
            write_summary(record_dirs[i], summaries[i])
        raise Interrupted(loop.step, loop.interrupted, run_dir, interruption.chained)
    timed_steps = int(np.max(loop.state["step"])) - start_step - 1
    tokens_per_s = (
        timed_steps * stage.tokens_per_step / loop.clock.seconds() if timed_steps > 0 else None
    )
    wall_s = wall_before + time.time() - started
    for i in training:
        finish_summary(summaries[i], loop, i, stage, tokens_per_s, wall_s, group_name)
        write_metrics(record_dirs[i], loop.rows[i])
        if not loop.diverged[i]:
            write_artifacts(record_dirs[i], loop.artifacts[i])
        else:
            log.warning("loss became non-finite at step %d: %s diverged", loop.diverged[i],
                        record_dirs[i].name)
        write_summary(record_dirs[i], summaries[i])
        log.info("%s", ending(summaries[i], record_dirs[i]))
    return [recorded[i] or summaries[i] for i in range(k)]


def _resume(loop: LoopState, checkpointer: Checkpointer, config_dict: dict,
            fingerprints: dict[str, str], run_dir: Path,
            start_from: StartFrom | None = None) -> float:
    """Restore the loop from the newest readable checkpoint of this run and data, if any, else
    from `start_from`; returns the wall time already spent (0 for a fresh start, and for a
    start from another run's checkpoint: that time was its)."""
    restored = checkpointer.restore_latest(
        loop.state, check=lambda meta: check_same_run(meta["config"], config_dict, run_dir))
    if restored is not None and data_changed(restored[2].get("data_fingerprints", {}),
                                             fingerprints, run_dir):
        checkpointer.discard()
        restored = None
    if restored is None and start_from is not None:
        origin = start_from.directory.parent

        def check(meta: dict) -> None:
            check_same_run(meta["config"], start_from.config, origin)
            if data_changed(meta.get("data_fingerprints", {}), fingerprints, origin):
                raise ResumeError(f"{origin} was trained on other data; train it again first")

        with closing(Checkpointer(start_from.directory, keep=1, create=False)) as other:
            state, meta = other.restore(start_from.step, loop.state, check)
        loop.step, loop.state = start_from.step, state
        loop.rows = meta["rows"] if loop.k > 1 else [meta["rows"]]
        log.info("%s: starting from step %d of %s", run_dir, loop.step, origin)
        return 0.0
    if restored is None:
        log.info("%s: no checkpoint to resume from; training from step 0", run_dir)
        return 0.0
    loop.step, loop.state, meta = restored
    loop.rows = meta["rows"] if loop.k > 1 else [meta["rows"]]  # one model's: as before groups
    loop.diverged = meta.get("diverged", loop.diverged)
    log.info("resuming %s from step %d", run_dir, loop.step)
    return meta["wall_s"]
