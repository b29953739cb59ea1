"""Pretraining: next-token prediction on a corpus, from a random initialisation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import jax
import optax

from scaling.config import Config, to_dict
from scaling.data import Batches, Dataset, eval_windows, load_dataset
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
from scaling.optim import lr_schedule, make_optimizer, peak_lr
from scaling.train import Stage, train, use_compile_cache

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
        "corpus_cache": dataset.cache_path.name,
        "epochs": batches.epochs(steps),
    }
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
    )


@dataclass(frozen=True)
class Pretraining:
    """Everything `train` needs besides the run directory; `scaling-bench` times the same."""

    stage: Stage
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    steps: int


def compile_cache_dir(cfg: Config) -> Path | None:
    """`train.compile_cache_dir`, else `jax/` under the data cache root; None when turned off."""
    if not cfg.train.compile_cache:
        return None
    return Path(cfg.train.compile_cache_dir or cache_root(cfg.data.cache_dir) / "jax")


def prepare(cfg: Config) -> Pretraining:
    """Prepare the corpus, build the model and its stage, and the optimizer."""
    use_compile_cache(compile_cache_dir(cfg))
    dataset = load_dataset(cfg.data)
    model_cfg = model_config(cfg, dataset.vocab_size)
    stage = pretrain_stage(cfg, dataset, model_cfg)
    steps = cfg.train.tokens // stage.tokens_per_step
    peak = peak_lr(cfg.train, stage.record["n_params_nonembed"])
    schedule = lr_schedule(cfg.train, steps, peak)
    log.info(
        "pretrain: N=%d non-embedding params (%d total), %d steps of %d tokens, peak lr %.2e, "
        "%s on %s", stage.record["n_params_nonembed"], stage.record["n_params"], steps,
        stage.tokens_per_step, peak, model_cfg.dtype, jax.devices()[0].device_kind,
    )
    stage = replace(stage, record={**stage.record, "peak_lr": peak})
    return Pretraining(stage, make_optimizer(cfg.train, schedule), schedule, steps)


def pretrain(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Pretrain as `cfg` says; returns the run summary."""
    run = prepare(cfg)
    return train(run.stage, cfg.train, to_dict(cfg), run_dir, run.tx, run.schedule, run.steps,
                 cfg.train.seed)
