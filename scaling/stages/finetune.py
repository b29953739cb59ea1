"""Fine-tuning: next-token training on a new corpus from a parent run's parameters.

The corpus is tokenized with the parent's tokenizer (no new BPE), the optimizer is the run's
own (a fresh warmup + cosine, or `train.schedule=constant|wsd`; `stage.freeze` keeps parts as the
parent left them), and every evaluation also scores the parent's validation split
(`source_val_loss`), so forgetting shows beside the target loss (nanoGPT's `init_from`).
"""

from __future__ import annotations

from dataclasses import replace

from scaling.batch import LmBatch
from scaling.config import Config
from scaling.data import eval_windows, load_dataset
from scaling.hooks import ExtraEval
from scaling.stages.common import (
    Prepared,
    lm_loss,
    log_corpus,
    model_config,
    prepare_models,
)
from scaling.stages.parent import load_parent
from scaling.stages.pretrain import lm_stage
from scaling.sweep import canonical_data


def prepare(cfg: Config) -> Prepared:
    """The parent, the new corpus in the parent's tokens, and the model (or each replica)
    starting from the parent's parameters."""
    cfg = replace(cfg, data=canonical_data(cfg.data))
    parent = load_parent(cfg)
    dataset = load_dataset(cfg.data, tokenizer_from=parent.tokenizer_dataset())
    log_corpus(dataset)
    model_cfg = model_config(cfg, dataset.vocab_size)
    t = cfg.train
    source = parent.dataset()
    measurements = () if source is None else (ExtraEval("source_val", lm_loss(model_cfg),
        LmBatch.causal(eval_windows(source.val, t.batch_size, model_cfg.n_ctx, t.eval_batches))),)

    def build(c: Config):
        stage = lm_stage(c, dataset, model_cfg, name="finetune", init=parent.init_params,
                         measurements=measurements)
        return replace(stage, record={**stage.record, **parent.record()})

    return prepare_models(cfg, build)
