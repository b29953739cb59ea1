"""Masked language modelling (BERT's objective) beside causal LM: stage=mlm.

The same Transformer with bidirectional attention (`model.causal=false`, which
conf/stage/mlm.yaml sets) reads windows of the corpus corrupted as BERT's pretraining does
(`scaling.masking`: `stage.mask_rate` of the positions chosen, 80 % of them [MASK], 10 % a
random token, 10 % unchanged; Devlin et al. 2019) and is trained to give back the original
tokens at the chosen positions only (the batch's weights). The corruption is a pure function
of (train.seed, step), so a resumed run reads the same batches; validation scores the same
held-out windows as a causal run of the corpus (`eval_windows`), each with a fixed corruption.

`tokens` (D) counts the tokens read, as for a causal run, so both objectives spend the same
compute per token of D; `tokens_predicted` counts the positions the loss read (B·k a step).
A run starts from a random initialisation, or from another masked LM (`stage.init_from`); from
a causal run only with `stage.allow_objective_change=true` (recorded), its embedding given a
[MASK] row where its padding had none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from scaling.config import Config, ConfigError, to_dict
from scaling.data import Batches, Dataset, eval_windows, load_dataset, transfer_windows
from scaling.flops import flops_per_token
from scaling.hooks import ExtraEval
from scaling.masking import (
    MASKED_POSITIONS,
    bert_corruption,
    eval_corruption,
    mask_token_id,
    masked_count,
    masked_positions_batch,
)
from scaling.model import GPTConfig, init_params, masked_token_loss
from scaling.stages.common import Prepared, log_corpus, model_config, model_record, prepare_models
from scaling.stages.parent import Parent, load_parent
from scaling.sweep import canonical_data
from scaling.train import Stage

log = logging.getLogger("scaling")


def mlm_stage(cfg: Config, dataset: Dataset, model_cfg: GPTConfig,
              init: Callable[[], Any] | None = None) -> Stage:
    """Masked-LM training on `dataset`'s windows of n_ctx tokens, from `init()` (default: a
    random initialisation from train.seed); `model_cfg` is bidirectional, its vocabulary the
    tokenizer's and [MASK]."""
    t, s, T = cfg.train, cfg.stage, model_cfg.n_ctx
    vocab = dataset.vocab_size
    batches = Batches(dataset.train, t.batch_size, T, t.seed)
    loss_fn = partial(masked_token_loss, model_cfg)
    steps = t.tokens // (t.batch_size * T)
    k = masked_count(T, s.mask_rate)

    def train_batch(step: int):
        # a window of n_ctx + 1 shares its last token with the next: read n_ctx, each once
        return bert_corruption(batches(step)[:, :T], s.mask_rate, vocab, t.seed, step)

    def fixed(windows):
        return eval_corruption(windows[..., :T], s.mask_rate, vocab)

    record = {
        **model_record(model_cfg, model_cfg.vocab_size),
        "tokenizer_vocab_size": vocab,
        "mask_id": mask_token_id(vocab),
        "causal": False,
        "mask_rate": s.mask_rate,
        "masked_per_window": k,
        "tokens_seen": steps * t.batch_size * T,
        "tokens_predicted": steps * t.batch_size * k,
        "corpus_train_tokens": int(dataset.train.size),
        "corpus_val_tokens": int(dataset.val.size),
        "epochs": batches.epochs(steps),
        "tokenizer_source": {"cache": dataset.cache_path.name, "data": to_dict(cfg.data)},
    }
    measurements = ()
    if dataset.transfer is not None:
        measurements = (ExtraEval("transfer", loss_fn, fixed(
            transfer_windows(dataset.transfer, t.batch_size, T, t.eval_batches))),)
        record |= {"transfer_corpus": cfg.data.transfer,
                   "transfer_tokens": int(dataset.transfer.size)}
    val_windows = eval_windows(dataset.val, t.batch_size, T, t.eval_batches)
    if t.eval_mask_rate is not None:  # the tokens a causal run of the corpus scores too
        scored = masked_positions_batch(val_windows, t.eval_mask_rate, vocab)
        measurements = (*measurements, ExtraEval(MASKED_POSITIONS, loss_fn, scored))
    return Stage(
        name="mlm",
        loss_fn=loss_fn,
        train_batch=train_batch,
        eval_data=fixed(val_windows),
        init_params=init or (lambda: init_params(model_cfg, t.seed)),
        tokens_per_step=t.batch_size * T,
        flops_per_token=flops_per_token(model_cfg),
        record=record,
        measurements=measurements,
        data_fingerprints={"corpus_cache": dataset.cache_path.name},
    )


def parent_init(cfg: Config, parent: Parent, model_cfg: GPTConfig) -> Callable[[], Any]:
    """The child's initialisation from `parent`: a masked LM's parameters as they are; a causal
    run's (stage.allow_objective_change) with its token embedding grown to the child's rows
    where [MASK] needs one, the new rows as a fresh initialisation from train.seed draws them.

    Raises ConfigError (one line) for a causal parent without stage.allow_objective_change."""
    causal = parent.summary["config"]["model"].get("causal", True)
    if causal and not cfg.stage.allow_objective_change:
        raise ConfigError(
            f"stage.init_from={cfg.stage.init_from} is a causal run "
            f"(stage={parent.summary['config'].get('stage', {}).get('kind', 'pretrain')}): a "
            "masked LM starts from it only with stage.allow_objective_change=true (recorded)")
    if not causal:
        return parent.init_params

    def init() -> Any:
        params = parent.init_params()
        wte = params["wte"]["embedding"]
        rows = model_cfg.vocab_padded - wte.shape[0]
        if rows > 0:
            fresh = init_params(model_cfg, cfg.train.seed)["wte"]["embedding"][wte.shape[0]:]
            params = {**params, "wte": {"embedding": jnp.concatenate([wte, fresh])}}
        return jax.tree_util.tree_map(jnp.asarray, params)

    return init


def prepare(cfg: Config) -> Prepared:
    """The corpus (in the parent's tokens where stage.init_from names one), the bidirectional
    model with the [MASK] row, and its stage (or each replica's)."""
    cfg = replace(cfg, data=canonical_data(cfg.data))
    parent = load_parent(cfg) if cfg.stage.init_from is not None else None
    dataset = load_dataset(cfg.data, tokenizer_from=parent.tokenizer_dataset() if parent
                           else None)
    log_corpus(dataset)
    model_cfg = model_config(cfg, mask_token_id(dataset.vocab_size) + 1)
    init = parent_init(cfg, parent, model_cfg) if parent else None
    log.info("masked LM: %d of each window's %d positions predicted (stage.mask_rate=%g), "
             "[MASK] id %d", masked_count(model_cfg.n_ctx, cfg.stage.mask_rate),
             model_cfg.n_ctx, cfg.stage.mask_rate, mask_token_id(dataset.vocab_size))

    def build(c: Config) -> Stage:
        stage = mlm_stage(c, dataset, model_cfg, init)
        if parent is None:
            return stage
        return replace(stage, record={
            **stage.record, **parent.record(),
            "objective_change": parent.summary["config"]["model"].get("causal", True)})

    return prepare_models(cfg, build)
