"""Pretraining: next-token prediction on a corpus, from a random initialisation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import jax

from scaling.config import Config, is_replica_group, replica_configs, to_dict
from scaling.data import Batches, Dataset, eval_windows, load_dataset, transfer_windows
from scaling.data.shards import cache_root
from scaling.flops import count_params, flops_per_token
from scaling.model import (
    GPTConfig,
    init_params,
    next_token_loss,
    position_losses,
    resolve_attention,
    resolve_dtype,
)
from scaling.optim import lr_schedule, make_optimizer, make_replica_optimizer, peak_lr
from scaling.record import REPLICAS, failure_recorded
from scaling.sweep import canonical_data
from scaling.train import Replica, Stage, train, train_replicas, use_compile_cache

log = logging.getLogger("scaling")


def model_config(cfg: Config, vocab_size: int) -> GPTConfig:
    """The model's plain shape, with `auto` numerics resolved for this machine."""
    m = cfg.model
    dtype = resolve_dtype(m.dtype)
    return GPTConfig(
        vocab_size=vocab_size, n_layer=m.n_layer, d_model=m.d_model, n_head=m.n_head,
        n_ctx=m.n_ctx, d_ff=m.ff_dim, dtype=dtype, attention=resolve_attention(m.attention, dtype),
        remat=m.remat, scan_layers=m.scan_layers, loss_chunk=m.loss_chunk,
    )


# Validation batches behind the per-position losses: ~1,000 windows at batch 16, where a
# position's mean over the 8 evaluation batches would be mostly noise.
POSITION_BATCHES = 64


def pretrain_stage(cfg: Config, dataset: Dataset, model_cfg: GPTConfig) -> Stage:
    t = cfg.train
    batches = Batches(dataset.train, t.batch_size, model_cfg.n_ctx, t.seed)

    def loss_fn(params, batch_BxT1):
        return next_token_loss(model_cfg, params, batch_BxT1)

    counts = count_params(jax.eval_shape(lambda: init_params(model_cfg, t.seed)))
    tokens_per_step = t.batch_size * model_cfg.n_ctx
    steps = t.tokens // tokens_per_step
    record = {
        "n_params": counts.total,
        "n_params_nonembed": counts.nonembedding,
        "n_params_embed": counts.embedding,
        "vocab_size": dataset.vocab_size,
        "vocab_size_padded": model_cfg.vocab_padded,
        "dtype": model_cfg.dtype,
        "attention": model_cfg.attention,
        "corpus_train_tokens": int(dataset.train.size),
        "corpus_val_tokens": int(dataset.val.size),
        "epochs": batches.epochs(steps),
    }
    extra_eval = {}
    if dataset.transfer is not None:
        extra_eval["transfer"] = transfer_windows(
            dataset.transfer, t.batch_size, model_cfg.n_ctx, t.eval_batches)
        record |= {"transfer_corpus": cfg.data.transfer,
                   "transfer_tokens": int(dataset.transfer.size)}
    return Stage(
        name="pretrain",
        loss_fn=loss_fn,
        position_loss_fn=partial(position_losses, model_cfg),
        position_data=eval_windows(dataset.val, t.batch_size, model_cfg.n_ctx, POSITION_BATCHES),
        train_batch=batches,
        eval_data=eval_windows(dataset.val, t.batch_size, model_cfg.n_ctx, t.eval_batches),
        init_params=lambda: init_params(model_cfg, t.seed),
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_per_token(model_cfg),
        record=record,
        extra_eval=extra_eval,
        # the token cache's name: a hash of every document and the tokenizer settings
        data_fingerprints={"corpus_cache": dataset.cache_path.name},
    )


@dataclass(frozen=True)
class Pretraining:
    """Everything `train` needs besides the run directory; `scaling-bench` times the same."""

    replicas: list[Replica]  # the model, or the train.replicas models trained at once
    steps: int
    config: dict  # the run's (or group's) config as recorded: corpus paths canonical


def compile_cache_dir(cfg: Config) -> Path | None:
    """`train.compile_cache_dir`, else `jax/` under the data cache root; None when turned off."""
    if not cfg.train.compile_cache:
        return None
    return Path(cfg.train.compile_cache_dir or cache_root(cfg.data.cache_dir) / "jax")


def _replica(cfg: Config, stage: Stage, steps: int, peak: float, lr_in_state: bool) -> Replica:
    """The model of the standalone config `cfg`, at peak LR `peak`; `lr_in_state` for groups."""
    schedule = lr_schedule(cfg.train, steps, peak)
    tx = (make_replica_optimizer(cfg.train, steps, peak) if lr_in_state
          else make_optimizer(cfg.train, schedule))
    stage = replace(stage, record={**stage.record, "peak_lr": peak})
    return Replica(stage, tx, schedule, to_dict(cfg), cfg.train.seed)


def prepare(cfg: Config) -> Pretraining:
    """Prepare the corpus, build the model (or each replica) with its stage and optimizer.

    The corpus paths are made canonical first, so that every spelling of one corpus reads the
    same documents under the same names: the same data, as it is the same run (`run_id`).
    """
    cfg = replace(cfg, data=canonical_data(cfg.data))
    use_compile_cache(compile_cache_dir(cfg))
    dataset = load_dataset(cfg.data)
    model_cfg = model_config(cfg, dataset.vocab_size)
    stage = pretrain_stage(cfg, dataset, model_cfg)
    steps = cfg.train.tokens // stage.tokens_per_step
    n_nonembed = stage.record["n_params_nonembed"]
    peak = peak_lr(cfg.train, n_nonembed)
    log.info(
        "pretrain: N=%d non-embedding params (%d total), %d steps of %d tokens, peak lr %.2e, "
        "%s on %s", n_nonembed, stage.record["n_params"], steps,
        stage.tokens_per_step, peak, model_cfg.dtype, jax.devices()[0].device_kind,
    )
    if not is_replica_group(cfg.train):
        return Pretraining([_replica(cfg, stage, steps, peak, lr_in_state=False)], steps,
                           to_dict(cfg))
    configs = replica_configs(cfg, peak)
    replicas = [
        _replica(c, pretrain_stage(c, dataset, model_cfg), steps, peak_lr(c.train, n_nonembed),
                 lr_in_state=len(configs) > 1)
        for c in configs
    ]
    log.info("%d replicas in one step: seeds %s, peak lrs %s", len(replicas),
             [r.seed for r in replicas], [f"{r.stage.record['peak_lr']:.2e}" for r in replicas])
    return Pretraining(replicas, steps, to_dict(cfg))


def pretrain(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Pretrain one model as `cfg` says; returns the run summary. A failure to prepare it (the
    data, the model) is recorded in `run_dir` as the run's, as one while training is."""
    if is_replica_group(cfg.train):
        raise ValueError("train.replicas trains a group of models: use pretrain_replicas")
    with failure_recorded(run_dir, to_dict(cfg)):
        run = prepare(cfg)
    return train(run.replicas[0], cfg.train, run_dir, run.steps)


def pretrain_replicas(cfg: Config, group_dir: Path) -> list[dict[str, Any]]:
    """Pretrain the `train.replicas` models of `cfg` at once, each recorded as its own run
    beside `group_dir` (`scaling.train.train_replicas`); returns their summaries. A failure to
    prepare them is recorded as the group's, in its `replicas.json`."""
    with failure_recorded(group_dir, to_dict(cfg), record=REPLICAS):
        run = prepare(cfg)
    return train_replicas(run.replicas, cfg.train, run.config, group_dir, run.steps)
