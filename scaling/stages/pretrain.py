"""Pretraining: next-token prediction on a corpus, from a random initialisation."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import jax

from scaling.config import Config, to_dict
from scaling.data import Batches, Dataset, eval_windows, load_dataset
from scaling.flops import count_params, flops_per_token
from scaling.model import (
    GPT,
    GPTConfig,
    cross_entropy,
    init_params,
    resolve_attention,
    resolve_dtype,
)
from scaling.optim import lr_schedule, make_optimizer, peak_lr
from scaling.train import Stage, train

log = logging.getLogger("scaling")


def model_config(cfg: Config, vocab_size: int) -> GPTConfig:
    """The model's plain shape, with `auto` numerics resolved for this machine."""
    m = cfg.model
    dtype = resolve_dtype(m.dtype)
    return GPTConfig(
        vocab_size=vocab_size, n_layer=m.n_layer, d_model=m.d_model, n_head=m.n_head,
        n_ctx=m.n_ctx, d_ff=m.ff_dim, dtype=dtype, attention=resolve_attention(m.attention, dtype),
    )


def pretrain_stage(cfg: Config, dataset: Dataset, model_cfg: GPTConfig) -> Stage:
    t = cfg.train
    model = GPT(model_cfg)
    batches = Batches(dataset.train, t.batch_size, model_cfg.n_ctx, t.seed)

    def loss_fn(params, batch_BxT1):
        logits_BxTxV = model.apply({"params": params}, batch_BxT1[:, :-1])
        return cross_entropy(logits_BxTxV, batch_BxT1[:, 1:])

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
        train_batch=batches,
        eval_data=eval_windows(dataset.val, t.batch_size, model_cfg.n_ctx, t.eval_batches),
        init_params=lambda: init_params(model_cfg, t.seed),
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_per_token(model_cfg),
        record=record,
    )


def pretrain(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Prepare the corpus, build the model and train it; returns the run summary."""
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
    return train(
        stage, cfg.train, to_dict(cfg), run_dir, make_optimizer(cfg.train, schedule), schedule,
        steps, cfg.train.seed,
    )
