"""Supervised fine-tuning: prompt -> response pairs from a parent run, loss on responses only.

Each example is one window (eos, prompt, response, eos, padding) of the parent's tokens, with
loss weight 1 on the response tokens and the final eos and 0 elsewhere (levanter's
`LmExample.from_prompt_and_completion`): the pretraining loss and loop, unchanged, learn the
response given the prompt and never the prompt. `tokens` in the summary counts the response
tokens trained on; `tokens_seen` every token the model read.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from scaling.batch import LmBatch
from scaling.config import Config
from scaling.data import PairBatches, encode_examples, eval_pairs, read_pairs, split_pairs
from scaling.flops import flops_per_token
from scaling.model import GPTConfig
from scaling.stages.common import Prepared, lm_loss, model_config, model_record, prepare_models
from scaling.stages.parent import Parent, load_parent
from scaling.sweep import canonical_data
from scaling.train import Stage


def sft_stage(cfg: Config, parent: Parent, model_cfg: GPTConfig, train_windows,
              val_windows, rule: str) -> Stage:
    """SFT on encoded windows (`PairWindows`) of the train and validation examples."""
    t = cfg.train
    batches = PairBatches(train_windows.tokens, train_windows.weights, t.batch_size, t.seed)
    steps = t.tokens // (t.batch_size * model_cfg.n_ctx)
    response_per_row = train_windows.weights.sum(axis=1)
    tokens_seen = steps * t.batch_size * model_cfg.n_ctx
    trained = sum(float(response_per_row[batches.rows(step)].sum()) for step in range(steps))
    digest = hashlib.sha256()
    for array in (train_windows.tokens, train_windows.weights, val_windows.tokens):
        digest.update(np.ascontiguousarray(array).tobytes())
    counts = train_windows.counts()
    record = {
        **model_record(model_cfg, parent.summary["vocab_size"]),
        **parent.record(),
        "tokens": int(trained),  # response tokens trained on (D of an SFT run)
        "tokens_seen": tokens_seen,
        "flops": tokens_seen * flops_per_token(model_cfg),
        "sft_examples": counts["examples"], "sft_examples_dropped": counts["dropped"],
        "sft_val_examples": len(val_windows.tokens), "sft_split": rule,
        "sft_response_tokens": counts["response_tokens"],
        "epochs": batches.epochs(steps),
        "tokenizer_source": parent.summary.get("tokenizer_source"),
    }
    return Stage(
        name="sft",
        loss_fn=lm_loss(model_cfg),
        train_batch=lambda step: LmBatch(*batches(step)),
        eval_data=LmBatch(*eval_pairs(val_windows.tokens, val_windows.weights, t.batch_size,
                                      t.eval_batches)),
        init_params=parent.init_params,
        tokens_per_step=t.batch_size * model_cfg.n_ctx,
        flops_per_token=flops_per_token(model_cfg),
        record=record,
        # the examples as the parent's tokenizer encodes them: another corpus or tokenizer
        # gives another hash
        data_fingerprints={"pairs_cache": f"{cfg.data.source}-{digest.hexdigest()[:16]}"},
    )


def prepare(cfg: Config) -> Prepared:
    """The parent, the examples in its tokens (split by module for sft_stdlib, by example for
    JSONL), and the model (or each replica) starting from the parent's parameters."""
    cfg = replace(cfg, data=canonical_data(cfg.data))
    parent = load_parent(cfg)
    tokenizer = parent.tokenizer_dataset().tokenizer
    split = split_pairs(read_pairs(cfg.data.source, cfg.data.paths), cfg.data.val_fraction,
                        by="file" if cfg.data.source == "sft_stdlib" else "example")
    model_cfg = model_config(cfg, parent.summary["vocab_size"])
    train_windows = encode_examples(tokenizer, split.train, model_cfg.n_ctx)
    val_windows = encode_examples(tokenizer, split.val, model_cfg.n_ctx)
    return prepare_models(cfg, lambda c: sft_stage(c, parent, model_cfg, train_windows,
                                                   val_windows, split.rule))
