"""What every stage shares around its `Stage`: the model's shape and numerics, the optimizer
(and replica groups), the compile cache, and running it with its failures recorded.

A stage module only builds its `Stage` (data, loss, initialisation, measurements) from the
config; `prepare_models` and `run` do the rest the same way for all of them.
"""

from __future__ import annotations

import glob
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import jax

from scaling.batch import LmBatch
from scaling.branches import Branch, train_branches
from scaling.config import (
    Config,
    TrainConfig,
    branch_configs,
    branch_steps,
    is_replica_group,
    replica_configs,
    to_dict,
)
from scaling.data import DataError, Dataset, EpochOrder, describe, vocabulary_shortfall
from scaling.data.shards import cache_root
from scaling.flops import count_params
from scaling.model import (
    GPTConfig,
    init_params,
    model_shape,
    next_token_loss,
    resolve_attention,
    resolve_dtype,
)
from scaling.optim import (
    frozen_mask,
    lr_schedule,
    make_optimizer,
    make_replica_optimizer,
    peak_lr,
    warmup_steps,
)
from scaling.record import failure_recorded, record_name
from scaling.replicas import train_replicas
from scaling.train import Replica, Stage, train, use_compile_cache

log = logging.getLogger("scaling")


@dataclass(frozen=True)
class Prepared:
    """Everything `train` needs besides the run directory; `scaling-bench` times the same."""

    replicas: list[Replica]  # the model, or the train.replicas models trained at once
    steps: int
    config: dict  # the run's (or group's) config as recorded: paths canonical
    # a WSD trunk's cooldown branches (train.cooldowns); its one replica is then the trunk
    branches: list[Branch] = field(default_factory=list)


def model_config(cfg: Config, vocab_size: int) -> GPTConfig:
    """The model's shape (`model_shape`), with `auto` numerics resolved for this machine."""
    shape = model_shape(cfg.model, vocab_size)
    dtype = resolve_dtype(shape.dtype)
    return replace(shape, dtype=dtype, attention=resolve_attention(shape.attention, dtype))


def model_record(model_cfg: GPTConfig, vocab_size: int,
                 init: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The model facts every run records: Kaplan's N (non-embedding), the embedding and total
    parameter counts, the vocabulary and the numerics. The counts are of the tree `init()`
    makes (shapes only; default: the language model's), a reward model's head included."""
    counts = count_params(jax.eval_shape(init or (lambda: init_params(model_cfg, 0))))
    return {
        "n_params": counts.total,
        "n_params_nonembed": counts.nonembedding,
        "n_params_embed": counts.embedding,
        "vocab_size": vocab_size,
        "vocab_size_padded": model_cfg.vocab_padded,
        "dtype": model_cfg.dtype,
        "attention": model_cfg.attention,
    }


def lm_loss(model_cfg: GPTConfig) -> Callable:
    """(params, LmBatch) -> the weighted next-token loss of this model."""
    return partial(next_token_loss, model_cfg)


def causal_batches(windows: Callable[[int], Any]) -> Callable[[int], LmBatch]:
    """A step -> token windows [B, T+1] source as step -> LmBatch with every target counted."""
    return lambda step: LmBatch.causal(windows(step))


def compile_cache_dir(cfg: Config) -> Path | None:
    """`train.compile_cache_dir`, else `jax/` under the data cache root; None when turned off."""
    if not cfg.train.compile_cache:
        return None
    return Path(cfg.train.compile_cache_dir or cache_root(cfg.data.cache_dir) / "jax")


def log_corpus(dataset: Dataset) -> None:
    """Name the corpus a run trains on (`scaling.data.describe`), and warn where its BPE
    learned fewer tokens than asked."""
    log.info("corpus %s", describe(dataset))
    shortfall = vocabulary_shortfall(dataset)
    if shortfall is not None:
        log.warning("the BPE learned %d tokens, fewer than data.vocab_size=%d: the train split "
                    "is too small for more merges (the run's vocab_size is %d)",
                    shortfall[0], shortfall[1], shortfall[0])


def visible_gpus() -> list[str]:
    """NVIDIA GPUs this machine shows, whatever JAX found: device files, or nvidia-smi."""
    return sorted(glob.glob("/dev/nvidia[0-9]*")) or (
        ["nvidia-smi"] if shutil.which("nvidia-smi") else [])


def _warn_about(cfg: Config, stage: Stage, steps: int) -> None:
    """Warn about a run whose numbers will mislead: more than one epoch of its train split,
    evaluations on fewer batches than asked, GPUs that JAX does not use."""
    t = cfg.train
    epochs = stage.record.get("epochs", 0)
    if epochs > 1:
        log.warning("%d steps are %.1f epochs of the train split: the model sees its data "
                    "again and its validation loss may turn up (best_val_loss keeps the lowest; "
                    "a larger corpus or fewer train.tokens avoid it)", steps, epochs)
    k = jax.tree_util.tree_leaves(stage.eval_data)[0].shape[0]
    if k < t.eval_batches:
        log.warning("the validation split fills %d of train.eval_batches=%d batches: every "
                    "evaluation scores the same %d batch(es), a noisy val_loss (raise "
                    "data.val_fraction or use a larger corpus)", k, t.eval_batches, k)
    gpus = visible_gpus()
    if gpus and jax.default_backend() == "cpu":
        log.warning("this machine has NVIDIA GPUs (%s) but JAX runs on the CPU: install the "
                    "CUDA build of JAX (pip install -e '.[cuda]') to use them",
                    ", ".join(gpus[:4]))


def _warmup(cfg: Config, stage: Stage, steps: int) -> int:
    """Warmup steps of a run of `steps` steps (`scaling.optim.warmup_steps`), N for the
    `porian` rule counted with the unembedding (vocab·d_model), as Porian et al. count it."""
    n_params = stage.record["n_params_nonembed"] + stage.record["vocab_size"] * cfg.model.d_model
    return warmup_steps(cfg.train, steps, stage.tokens_per_step, n_params)


def _replica(cfg: Config, stage: Stage, steps: int, peak: float, warmup: int,
             lr_in_state: bool) -> Replica:
    """The model of the standalone config `cfg`, at peak LR `peak` after `warmup` steps;
    `lr_in_state` for groups."""
    s = cfg.stage
    schedule = lr_schedule(cfg.train, steps, peak, warmup)
    frozen = (partial(frozen_mask, embeddings=s.freeze.embeddings, blocks=s.freeze.blocks)
              if s.freeze.embeddings or s.freeze.blocks else None)
    tx = (make_replica_optimizer(cfg.train, steps, peak, warmup, frozen) if lr_in_state
          else make_optimizer(cfg.train, schedule, frozen))
    stage = replace(stage, record={**stage.record, "peak_lr": peak})
    return Replica(stage, tx, schedule, to_dict(cfg), cfg.train.seed)


def prepare_models(cfg: Config, build: Callable[[Config], Stage]) -> Prepared:
    """The model of `cfg` (or each of its train.replicas models) as `build` makes its stage,
    with its optimizer and schedule; the compile cache set up first."""
    use_compile_cache(compile_cache_dir(cfg))
    stage = build(cfg)
    steps = cfg.train.tokens // stage.tokens_per_step
    n_nonembed = stage.record["n_params_nonembed"]
    peak = peak_lr(cfg.train, n_nonembed)
    log.info(
        "%s: N=%d non-embedding params (%d total), %d steps of %d tokens, peak lr %.2e, "
        "%s on %s: %d %s device(s), train.parallel=%s", stage.name, n_nonembed,
        stage.record["n_params"], steps, stage.tokens_per_step, peak, stage.record["dtype"],
        jax.default_backend(), jax.device_count(), jax.devices()[0].device_kind,
        cfg.train.parallel,
    )
    _warn_about(cfg, stage, steps)
    if cfg.train.cooldowns:
        return _prepare_branches(cfg, stage, build, peak)
    warmup = _warmup(cfg, stage, steps)
    log.info("schedule %s, warmup %d steps (train.warmup=%s)", cfg.train.schedule, warmup,
             cfg.train.warmup)
    if not is_replica_group(cfg.train):
        return Prepared([_replica(cfg, stage, steps, peak, warmup, lr_in_state=False)], steps,
                        to_dict(cfg))
    configs = replica_configs(cfg, peak)
    replicas = [
        _replica(c, build(c), steps, peak_lr(c.train, n_nonembed), warmup,
                 lr_in_state=len(configs) > 1)
        for c in configs
    ]
    log.info("%d replicas in one step: seeds %s, peak lrs %s", len(replicas),
             [r.seed for r in replicas], [f"{r.stage.record['peak_lr']:.2e}" for r in replicas])
    return Prepared(replicas, steps, to_dict(cfg))


def _prepare_branches(cfg: Config, stage: Stage, build: Callable[[Config], Stage],
                      peak: float) -> Prepared:
    """A WSD trunk (`train.cooldowns`): the constant-LR model trained to the last branch point,
    and each cooldown branch as the standalone `wsd` run it is (`branch_configs`). The warmup
    is the longest branch's, in tokens, for all of them: their schedules agree up to each
    branch point, where the branch takes the trunk's state."""
    t, tokens_per_step = cfg.train, stage.tokens_per_step
    trunk_steps, spans = branch_steps(t.cooldowns, tokens_per_step, t.cooldown_fraction)
    warmup = _warmup(cfg, stage, spans[-1][1])
    constant = replace(cfg, train=replace(t, schedule="constant"))  # wsd before any cooldown
    trunk = replace(_replica(constant, stage, trunk_steps, peak, warmup, lr_in_state=False),
                    config=to_dict(cfg))
    branches = [Branch(_replica(c, build(c), end, peak, warmup, lr_in_state=False), start, end)
                for c, (start, end) in zip(branch_configs(cfg, warmup * tokens_per_step), spans,
                                           strict=True)]
    log.info("WSD trunk of %d steps (warmup %d), cooldown branches at steps %s", trunk_steps,
             warmup, ", ".join(f"{start}->{end}" for start, end in spans))
    return Prepared([trunk], trunk_steps, to_dict(cfg), branches)


def run(cfg: Config, run_dir: Path, prepare: Callable[[Config], Prepared]) -> list[dict]:
    """Prepare and train `cfg` in `run_dir`: one model (its summary, in a list), a group of
    replicas or a WSD trunk's cooldown branches, each recorded beside `run_dir`. A failure to
    prepare (the data, the parent run, the model) is recorded as the run's (or the group's, in
    its `replicas.json`, or the trunk's, in its `branches.json`)."""
    group = is_replica_group(cfg.train)
    with failure_recorded(run_dir, to_dict(cfg), record=record_name(cfg.train)):
        prepared = prepare(cfg)
    if prepared.branches:
        return train_branches(prepared.replicas[0], prepared.steps, prepared.branches,
                              cfg.train, prepared.config, run_dir)
    if group:
        return train_replicas(prepared.replicas, cfg.train, prepared.config, run_dir,
                              prepared.steps)
    return [train(prepared.replicas[0], cfg.train, run_dir, prepared.steps)]


def comparison_schedule(n_train: int, t: TrainConfig, n_ctx: int) -> tuple[EpochOrder, int, int]:
    """The data order, tokens per step and steps of a stage trained on comparisons (reward,
    dpo): each row is a chosen and a rejected window of `n_ctx` tokens, `t.tokens` counts both.
    Raises DataError when the `n_train` comparisons that fit the context are fewer than one
    batch."""
    if n_train < t.batch_size:
        raise DataError(f"the train split has {n_train} comparisons that fit the context, "
                        f"too few for one batch of train.batch_size={t.batch_size}")
    tokens_per_step = 2 * t.batch_size * n_ctx
    return EpochOrder(n_train, t.batch_size, t.seed), tokens_per_step, t.tokens // tokens_per_step
