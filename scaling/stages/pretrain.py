"""Pretraining: next-token prediction on a corpus, from a random initialisation.

`lm_stage` is next-token training on a tokenized corpus with every target counted; fine-tuning
(`scaling.stages.finetune`) is the same stage from a parent's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from scaling.batch import LmBatch
from scaling.config import Config, to_dict
from scaling.data import Batches, Dataset, eval_windows, load_dataset, transfer_windows
from scaling.flops import flops_per_token
from scaling.hooks import ExtraEval, Measurement, NoiseScale, PositionLoss
from scaling.masking import MASKED_POSITIONS, next_token_positions_batch
from scaling.model import GPTConfig, init_params, position_losses
from scaling.stages.common import (
    Prepared,
    causal_batches,
    lm_loss,
    log_corpus,
    model_config,
    model_record,
    prepare_models,
)
from scaling.sweep import canonical_data
from scaling.train import Stage

# Validation batches behind the per-position losses: ~1,000 windows at batch 16, where a
# position's mean over the 8 evaluation batches would be mostly noise.
POSITION_BATCHES = 64


def lm_stage(cfg: Config, dataset: Dataset, model_cfg: GPTConfig, name: str = "pretrain",
             init: Callable[[], Any] | None = None,
             measurements: tuple[Measurement, ...] = ()) -> Stage:
    """Next-token training on `dataset` with every target counted, from `init()` (default: a
    random initialisation from train.seed); records the per-position loss at the end and, as
    configured, the transfer corpus's loss, the gradient noise scale and the loss at a masked
    LM's held-out positions (train.eval_mask_rate) at each evaluation."""
    t = cfg.train
    batches = Batches(dataset.train, t.batch_size, model_cfg.n_ctx, t.seed)
    loss_fn = lm_loss(model_cfg)
    steps = t.tokens // (t.batch_size * model_cfg.n_ctx)
    record = {
        **model_record(model_cfg, dataset.vocab_size),
        "corpus_train_tokens": int(dataset.train.size),
        "corpus_val_tokens": int(dataset.val.size),
        "epochs": batches.epochs(steps),
        # where the tokenizer lives, for a run that starts from this one (stage.init_from)
        "tokenizer_source": {"cache": dataset.cache_path.name, "data": to_dict(cfg.data)},
    }
    if dataset.transfer is not None:
        measurements = (*measurements, ExtraEval("transfer", loss_fn, LmBatch.causal(
            transfer_windows(dataset.transfer, t.batch_size, model_cfg.n_ctx, t.eval_batches))))
        record |= {"transfer_corpus": cfg.data.transfer,
                   "transfer_tokens": int(dataset.transfer.size)}
    if t.noise_scale_batches:
        measurements = (*measurements, NoiseScale(loss_fn, t.noise_scale_batches))
    val_windows = eval_windows(dataset.val, t.batch_size, model_cfg.n_ctx, t.eval_batches)
    if t.eval_mask_rate is not None:  # the tokens a masked LM's validation would score
        measurements = (*measurements, ExtraEval(
            MASKED_POSITIONS, loss_fn, next_token_positions_batch(val_windows, t.eval_mask_rate)))
    position_data = eval_windows(dataset.val, t.batch_size, model_cfg.n_ctx, POSITION_BATCHES)
    return Stage(
        name=name,
        loss_fn=loss_fn,
        train_batch=causal_batches(batches),
        eval_data=LmBatch.causal(val_windows),
        init_params=init or (lambda: init_params(model_cfg, t.seed)),
        tokens_per_step=t.batch_size * model_cfg.n_ctx,
        flops_per_token=flops_per_token(model_cfg),
        record=record,
        measurements=measurements,
        hooks=(PositionLoss(partial(position_losses, model_cfg), LmBatch.causal(position_data)),),
        # the token cache's name: a hash of every document and the tokenizer settings
        data_fingerprints={"corpus_cache": dataset.cache_path.name},
    )


def prepare(cfg: Config) -> Prepared:
    """Prepare the corpus, build the model (or each replica) with its stage and optimizer.

    The corpus paths are made canonical first, so that every spelling of one corpus reads the
    same documents under the same names: the same data, as it is the same run (`run_id`).
    """
    cfg = replace(cfg, data=canonical_data(cfg.data))
    dataset = load_dataset(cfg.data)
    log_corpus(dataset)
    model_cfg = model_config(cfg, dataset.vocab_size)
    return prepare_models(cfg, lambda c: lm_stage(c, dataset, model_cfg))
