"""Reward modelling: a parent's Transformer with a scalar head learns which of two responses
the gold reward preferred, from comparisons (`scaling-compare`, `data=comparisons`; or
`data=policy_comparisons`, which the run collects from a policy once: `scaling.rlhf.policy_data`).

The model is the parent run's (pretrained or SFT) with `reward_head`, a zero-initialised
d_model -> 1 projection, read at the last real token of each window (eos, prompt, response,
eos): `scaling.model.rewards`. The loss is Bradley–Terry's −log σ(r_chosen − r_rejected),
on the same loop and optimizer as every stage. Each evaluation records the held-out loss
(`val_loss`: comparisons of prompts held out, see `scaling.rlhf.windows`), the held-out
pairwise accuracy (`val_accuracy`) and the accuracy on fixed training batches
(`train_accuracy`). `train.tokens` counts both windows of each comparison read:
steps = tokens / (2 · batch_size · n_ctx).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import partial

import numpy as np

from scaling.config import Config
from scaling.flops import flops_per_token
from scaling.hooks import ExtraEval
from scaling.model import (
    REWARD_HEAD,
    GPTConfig,
    init_params,
    init_reward_head,
    pairwise_accuracy,
    pairwise_loss,
)
from scaling.rlhf.policy_data import ComparisonSource, read_comparison_data
from scaling.rlhf.windows import (
    ComparisonSplit,
    ComparisonWindows,
    encode_comparisons,
    split_comparisons,
)
from scaling.stages.common import (
    Prepared,
    comparison_schedule,
    model_config,
    model_record,
    prepare_models,
)
from scaling.stages.parent import Parent, load_parent
from scaling.sweep import canonical_data
from scaling.train import Stage


def reward_stage(cfg: Config, parent: Parent, model_cfg: GPTConfig, split: ComparisonSplit,
                 train: ComparisonWindows, val: ComparisonWindows,
                 source: ComparisonSource | None = None) -> Stage:
    """Bradley–Terry training on encoded train comparisons, evaluated on the held-out ones;
    `source` says where they came from (a policy's collection: its record and fingerprint)."""
    source = source or ComparisonSource([])
    t = cfg.train
    order, tokens_per_step, steps = comparison_schedule(len(train), t, model_cfg.n_ctx)
    accuracy = partial(pairwise_accuracy, model_cfg)
    eval_data = val.fixed_batches(t.batch_size, t.eval_batches)
    digest = hashlib.sha256()
    for array in (train.chosen, train.rejected, val.chosen, val.rejected):
        digest.update(np.ascontiguousarray(array).tobytes())
    prompts, val_prompts = split.prompts()

    def init():
        params = parent.init_params()
        if REWARD_HEAD in params:  # a reward model's own head, trained on
            return params
        return {**params, REWARD_HEAD: init_reward_head(model_cfg)}

    record = {
        **model_record(model_cfg, parent.summary["vocab_size"], init=lambda: {
            **init_params(model_cfg, 0), REWARD_HEAD: init_reward_head(model_cfg)}),
        **parent.record(),
        "n_comparisons": len(train),  # train comparisons that fit: what the model learns from
        "n_val_comparisons": len(val),
        # what each evaluation scores: all of them, or train.eval_batches batches of them
        "val_comparisons_scored": int(eval_data.weights.sum()),
        "comparisons_dropped": train.dropped + val.dropped,  # a window longer than n_ctx
        "n_prompts": prompts,
        "n_val_prompts": val_prompts,
        "comparisons_split": "by_prompt",
        "comparisons_seen": steps * t.batch_size,
        "epochs": order.epochs(steps),
        "tokenizer_source": parent.summary.get("tokenizer_source"),
        **source.record,
    }
    return Stage(
        name="reward",
        loss_fn=partial(pairwise_loss, model_cfg),
        train_batch=lambda step: train.batch(order(step)),
        eval_data=eval_data,
        init_params=init,
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_per_token(model_cfg, unembed=False),
        record=record,
        measurements=(
            ExtraEval("val", accuracy, eval_data, metric="accuracy"),
            ExtraEval("train", accuracy, train.fixed_batches(t.batch_size, t.eval_batches),
                      metric="accuracy"),
        ),
        # the comparisons as the parent's tokenizer encodes them
        data_fingerprints={"comparisons_cache": f"comparisons-{digest.hexdigest()[:16]}",
                           **source.fingerprints},
    )


def prepare(cfg: Config) -> Prepared:
    """The parent, the comparisons in its tokens (split by prompt), and the reward model (or
    each replica) starting from the parent's parameters and a new head."""
    cfg = replace(cfg, data=canonical_data(cfg.data))
    parent = load_parent(cfg)
    tokenizer = parent.tokenizer_dataset().tokenizer
    source = read_comparison_data(cfg.data)
    split = split_comparisons(source.comparisons, cfg.data.val_fraction)
    model_cfg = model_config(cfg, parent.summary["vocab_size"])
    train = encode_comparisons(tokenizer, split.train, model_cfg.n_ctx)
    val = encode_comparisons(tokenizer, split.val, model_cfg.n_ctx)
    return prepare_models(cfg, lambda c: reward_stage(c, parent, model_cfg, split, train, val,
                                                      source))
