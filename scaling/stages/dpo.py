"""Direct preference optimisation (Rafailov et al. 2023): an SFT policy learns the comparisons
(`data=comparisons`, as `stage=reward` reads them) without a reward model or sampling.

The policy starts from the parent run (`stage.init_from`, an SFT run), which is also the
frozen reference π_ref. The loss per comparison is −log σ(β·[(log π − log π_ref)(y_chosen) −
(log π − log π_ref)(y_rejected)]), `stage.beta` = β, log-probs summed over the response tokens
and the closing eos (weight 0 on the prompt and padding, as SFT weighs them).

π_ref's log-probs are computed once, before the first step, for every train and held-out
comparison, and travel in the batches (`PreferenceBatch.ref_*`) as constants. The loss stays a
pure function of (params, batch) like every stage's: no second parameter tree in the step (not
trained, not in the optimizer state, not baked into the compiled step as a constant), no
second forward pass per step, the same numbers for every replica of a group. The price is one
forward pass over each comparison, paid once (`reference_flops`): what computing them per batch
costs in the first epoch, and less after it.

Each evaluation records on the held-out comparisons (split by prompt): `val_loss`,
`val_accuracy` (the implicit reward margin > 0), `val_margin` (its mean) and `val_kl_to_ref`
(log π − log π_ref summed over each chosen response, the mean over comparisons: the x axis of
an overoptimization curve), and `train_accuracy` on fixed training batches. With
`stage.gold_samples=N` each evaluation also samples N held-out SFT prompts of the parent and
records their mean `gold_reward` and `kl_to_ref`, the KL to the reference estimated on the
samples (`GoldSamples`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import partial

import jax
import numpy as np

from scaling.batch import PreferenceBatch
from scaling.config import Config
from scaling.data import DataError, eval_rows
from scaling.flops import flops_per_token
from scaling.hooks import ExtraEval, LoopState, Measurement
from scaling.model import (
    GPT,
    REWARD_HEAD,
    GPTConfig,
    chosen_kl,
    dpo_accuracy,
    dpo_loss,
    dpo_mean_margin,
    policy_logprobs,
    sequence_logprobs,
)
from scaling.rlhf.collect import PromptChoice, policy_prompts
from scaling.rlhf.gold import GoldReward, sft_body
from scaling.rlhf.policy_data import read_comparison_data
from scaling.rlhf.windows import (
    ComparisonSplit,
    ComparisonWindows,
    encode_comparisons,
    split_comparisons,
)
from scaling.sample import generate, pad_prompts
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


@dataclass(frozen=True)
class Preferences:
    """Encoded comparisons with their response weights and π_ref's log-probs, one per row."""

    batch_all: PreferenceBatch  # every row: leaves [M, ...]

    def __len__(self) -> int:
        return len(self.batch_all.chosen)

    def batch(self, rows: np.ndarray, real: np.ndarray | None = None) -> PreferenceBatch:
        """The comparisons of `rows` ([B], or [k, B]), weight 1 where `real` (default all)."""
        weights = np.ones(rows.shape, np.float32) if real is None else real.astype(np.float32)
        return replace(jax.tree_util.tree_map(lambda x: x[rows], self.batch_all),
                       weights=weights)

    def fixed_batches(self, batch_size: int, n_batches: int) -> PreferenceBatch:
        """Fixed batches [k, batch_size, ...], each row counted once (`eval_rows`)."""
        return self.batch(*eval_rows(len(self), batch_size, n_batches))


def reference_logprobs(model_cfg: GPTConfig, reference: dict, windows: ComparisonWindows,
                       batch_size: int) -> Preferences:
    """`windows` with log π_ref(response | prompt) of each side under the `reference`
    parameters (Rafailov et al. 2023's π_ref), computed in batches of `batch_size` rows."""
    chosen_w, rejected_w = windows.response_weights()
    m = len(windows)
    zeros, ones = np.zeros(m, np.float32), np.ones(m, np.float32)
    rows = Preferences(PreferenceBatch(windows.chosen, windows.rejected, chosen_w, rejected_w,
                                       zeros, zeros, ones))
    logprobs = jax.jit(partial(policy_logprobs, model_cfg))
    ref = np.zeros((2, m), np.float32)
    for i in range(0, m, batch_size):
        take = np.arange(i, i + batch_size) % m  # the last batch filled from the first rows
        logp_2B = np.asarray(logprobs(reference, rows.batch(take)))
        n = min(batch_size, m - i)
        ref[0, i:i + n], ref[1, i:i + n] = logp_2B[:n], logp_2B[batch_size:batch_size + n]
    return Preferences(replace(rows.batch_all, ref_chosen=ref[0], ref_rejected=ref[1]))


class GoldSamples(Measurement):
    """`gold_reward` and `kl_to_ref` of the policy's own samples, at each evaluation: one
    response (temperature 1, up to n_ctx // 2 new tokens) to each of up to `n` held-out SFT
    prompts of the parent, scored by `gold` against the prompt's reference body, and
    KL(π‖π_ref) ≈ the mean over samples of Σ (log π − log π_ref) over the new tokens (Gao et
    al. 2022's KL; a sample's log π comes from `generate`, its log π_ref from the reference)."""

    summary = ("gold_reward", "kl_to_ref")

    def __init__(self, model_cfg: GPTConfig, parent: Parent, reference: dict, n: int,
                 gold: GoldReward = sft_body, seed: int = 0) -> None:
        tokenizer = parent.tokenizer_dataset().tokenizer
        self.model_cfg, self.reference, self.gold, self.seed = model_cfg, reference, gold, seed
        self.eos, self.decode = tokenizer.eos_id, tokenizer.decode
        self.max_new = model_cfg.n_ctx // 2
        examples = policy_prompts(parent, PromptChoice("val"))
        encoded = [[self.eos, *tokenizer.encode(e.prompt)] for e in examples]
        fitting = [i for i, ids in enumerate(encoded) if len(ids) + self.max_new < model_cfg.n_ctx]
        if not fitting:
            raise DataError(f"stage.gold_samples={n}: no held-out SFT prompt of the parent leaves "
                            f"room for {self.max_new} new tokens within n_ctx={model_cfg.n_ctx}")
        picked = [fitting[j] for j in np.arange(min(n, len(fitting))) * len(fitting)
                  // min(n, len(fitting))]
        self.examples = [examples[i] for i in picked]
        self.prompts = [encoded[i] for i in picked]
        self.ids, self.mask = pad_prompts(self.prompts, self.eos)
        self.ref_logprobs = jax.jit(lambda params, ids, w: sequence_logprobs(
            GPT(model_cfg).apply({"params": params}, ids[:, :-1]), ids[:, 1:], w))

    def __call__(self, loop: LoopState) -> dict[str, list[float]]:
        params = loop.state["params"]
        rows = [self._score(params if loop.k == 1 else jax.tree_util.tree_map(
            lambda x, i=i: x[i], params), jax.random.PRNGKey(self.seed + loop.step))
            for i in range(loop.k)]
        return {"gold_reward": [g for g, _ in rows], "kl_to_ref": [kl for _, kl in rows]}

    def _score(self, params: dict, key: jax.Array) -> tuple[float, float]:
        """The mean gold reward and sampled KL to the reference of one model's samples."""
        samples = generate(self.model_cfg, params, self.ids, self.mask,
                           max_new_tokens=self.max_new, eos_id=self.eos, rng=key)
        tokens = np.asarray(samples.tokens_BxNxT)[:, 0]
        lengths = np.asarray(samples.lengths_BxN)[:, 0]
        logp = np.asarray(samples.logprobs_BxNxT)[:, 0].sum(axis=-1)
        n_ctx = self.model_cfg.n_ctx
        windows = np.full((len(tokens), n_ctx), self.eos, np.int32)
        weights = np.zeros((len(tokens), n_ctx - 1), np.float32)
        golds = []
        for r, (prompt, e) in enumerate(zip(self.prompts, self.examples, strict=True)):
            new = tokens[r, :lengths[r]].tolist()
            windows[r, :len(prompt) + len(new)] = prompt + new
            weights[r, len(prompt) - 1:len(prompt) - 1 + len(new)] = 1
            ended = bool(new) and new[-1] == self.eos
            golds.append(self.gold(e.prompt, self.decode(new[:len(new) - ended]), e.response).total)
        ref = np.asarray(self.ref_logprobs(self.reference, windows, weights))
        return float(np.mean(golds)), float(np.mean(logp - ref))


def dpo_stage(cfg: Config, parent: Parent, model_cfg: GPTConfig, split: ComparisonSplit,
              train: Preferences, val: Preferences, dropped: int,
              gold: Measurement | None = None) -> Stage:
    """DPO with β = stage.beta on the train comparisons, evaluated on the held-out ones."""
    t, beta = cfg.train, cfg.stage.beta
    order, tokens_per_step, steps = comparison_schedule(len(train), t, model_cfg.n_ctx)
    eval_data = val.fixed_batches(t.batch_size, t.eval_batches)
    digest = hashlib.sha256()
    for data in (train, val):
        for array in jax.tree_util.tree_leaves(data.batch_all):
            digest.update(np.ascontiguousarray(array).tobytes())
    prompts, val_prompts = split.prompts()
    per_token = flops_per_token(model_cfg)
    record = {
        **model_record(model_cfg, parent.summary["vocab_size"]),
        **parent.record(),
        "beta": beta,
        "reference": "parent",  # π_ref: the parent's parameters, its log-probs precomputed
        # one forward pass (a third of a training step's FLOPs per token) over both windows
        # of every comparison, before the first step
        "reference_flops": 2 * (len(train) + len(val)) * model_cfg.n_ctx * per_token // 3,
        "n_comparisons": len(train),
        "n_val_comparisons": len(val),
        "val_comparisons_scored": int(eval_data.weights.sum()),
        "comparisons_dropped": dropped,  # a window longer than n_ctx
        "n_prompts": prompts,
        "n_val_prompts": val_prompts,
        "comparisons_split": "by_prompt",
        "comparisons_seen": steps * t.batch_size,
        "epochs": order.epochs(steps),
        "tokenizer_source": parent.summary.get("tokenizer_source"),
    }

    def init():
        return {k: v for k, v in parent.init_params().items() if k != REWARD_HEAD}

    accuracy = partial(dpo_accuracy, model_cfg, beta)
    return Stage(
        name="dpo",
        loss_fn=partial(dpo_loss, model_cfg, beta),
        train_batch=lambda step: train.batch(order(step)),
        eval_data=eval_data,
        init_params=init,
        tokens_per_step=tokens_per_step,
        flops_per_token=per_token,
        record=record,
        measurements=(
            ExtraEval("val", accuracy, eval_data, metric="accuracy"),
            ExtraEval("val", partial(dpo_mean_margin, model_cfg, beta), eval_data,
                      metric="margin"),
            ExtraEval("val", partial(chosen_kl, model_cfg), eval_data, metric="kl_to_ref"),
            ExtraEval("train", accuracy, train.fixed_batches(t.batch_size, t.eval_batches),
                      metric="accuracy"),
            *([gold] if gold is not None else []),
        ),
        # the comparisons in the parent's tokens and the parent's log-probs of them
        data_fingerprints={"comparisons_cache": f"preferences-{digest.hexdigest()[:16]}"},
    )


def prepare(cfg: Config) -> Prepared:
    """The parent (policy start and reference), the comparisons in its tokens (split by prompt)
    with the reference's log-probs, and the policy (or each replica)."""
    cfg = replace(cfg, data=canonical_data(cfg.data))
    parent = load_parent(cfg)
    tokenizer = parent.tokenizer_dataset().tokenizer
    source = read_comparison_data(cfg.data)  # files, or a policy's collection (cached)
    split = split_comparisons(source.comparisons, cfg.data.val_fraction)
    model_cfg = model_config(cfg, parent.summary["vocab_size"])
    reference = {k: v for k, v in parent.init_params().items() if k != REWARD_HEAD}
    windows = [encode_comparisons(tokenizer, part, model_cfg.n_ctx)
               for part in (split.train, split.val)]
    train, val = (reference_logprobs(model_cfg, reference, w, cfg.train.batch_size)
                  for w in windows)
    dropped = sum(w.dropped for w in windows)
    n = cfg.stage.gold_samples
    gold = GoldSamples(model_cfg, parent, reference, n, seed=cfg.train.seed) if n else None
    def build(c: Config) -> Stage:
        stage = dpo_stage(c, parent, model_cfg, split, train, val, dropped, gold)
        return replace(stage, record={**stage.record, **source.record},
                       data_fingerprints={**stage.data_fingerprints, **source.fingerprints})

    return prepare_models(cfg, build)
