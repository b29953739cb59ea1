"""PPO against a proxy reward model (stage=rl): InstructGPT's third step (Ouyang et al. 2022),
the policy optimised in Gao et al. 2022's overoptimization study, on the shared loop.

The policy starts from an SFT run (`stage.init_from`), which is also the frozen reference
π_ref; `stage.reward_from` is a `stage=reward` run, the proxy. Every PPO iteration draws one
response (temperature 1, up to `stage.max_new_tokens`) to each of `stage.rollout_prompts` of
the parent's SFT train prompts (a pure function of (seed, iteration)), scores it with the
proxy at its window's closing eos (as `stage=reward` read it), and turns it into a
`RolloutBatch` (`rollout`): per-token rewards with the KL penalty, values, GAE, whitened
advantages. The loop then takes `stage.ppo_epochs` × `stage.minibatches` steps of PPO's loss
(`scaling.rlhf.ppo.ppo_loss`) on shuffled minibatches of it. `Rollouts` is the loop's batch
source (`scaling.train.BatchSource`): it draws the next rollout from the parameters as they are
when an iteration's first batch is asked for.

Resume: the current rollout lives in the train state (`state["rollout"]`), so every checkpoint
holds it with the parameters it is trained on. A run resumed mid-iteration trains on the same
rollout without drawing it again; drawing it again would need the parameters of the
iteration's start, which a mid-iteration checkpoint no longer has (and would double its size
rather than add a few arrays of B × n_ctx).

The value head is a second head on the policy's Transformer (`scaling.model.VALUE_HEAD`,
zero at the start), not a second model as in InstructGPT and TRL's newer PPOTrainer: one
forward pass gives a minibatch's log-probs and values, and the policy stays one parameter
tree, so the step, optimizer and checkpoints are every stage's. The price: the value loss's
gradient reaches the shared Transformer (weighted by `stage.vf_coef`, 0.1 as TRL's).

`train.tokens` counts the tokens the steps read, as every stage: a step reads
rollout_prompts / minibatches windows of n_ctx tokens, so steps = train.tokens / (that ×
n_ctx), and a rollout's windows are read ppo_epochs times. `train.batch_size` ×
`train.eval_batches` held-out prompts (the parent's SFT validation split) are what each
evaluation samples.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scaling.batch import RolloutBatch
from scaling.config import Config, ConfigError
from scaling.data import DataError, Example, eval_rows
from scaling.flops import flops_per_token
from scaling.hooks import LoopState, Measurement
from scaling.model import (
    GPT,
    REWARD_HEAD,
    VALUE_HEAD,
    GPTConfig,
    init_params,
    init_reward_head,
    rewards,
    token_losses,
)
from scaling.rlhf.collect import PromptChoice, policy_model, policy_prompts
from scaling.rlhf.gold import GoldReward, gold_reward
from scaling.rlhf.ppo import (
    entropy,
    gae,
    masked_mean,
    policy_outputs,
    ppo_loss,
    ppo_statistics,
    token_rewards,
    whiten,
)
from scaling.sample import generate, pad_prompts
from scaling.stages.common import Prepared, model_config, model_record, prepare_models
from scaling.stages.parent import Parent, load_parent, load_run
from scaling.sweep import canonical_data
from scaling.train import Stage

log = logging.getLogger("scaling")


@dataclass(frozen=True)
class Prompts:
    """Prompts with room for a response: their examples and their ids (eos, prompt)."""

    examples: list[Example]
    ids: list[list[int]]
    skipped: int  # prompts of the split without room for max_new_tokens and an eos


@dataclass(frozen=True)
class Responses:
    """Responses drawn for B prompts, each in a window of n_ctx tokens (eos, prompt, response,
    eos padding), and what the policy, the reference and the proxy make of them."""

    windows: np.ndarray  # [B, n_ctx] int32
    weights: np.ndarray  # [B, n_ctx - 1] float32: 1 on the response's targets (its eos too)
    new_tokens: list[list[int]]  # each response's tokens, its eos included where it ended
    measured: dict[str, np.ndarray]  # `_measure`'s arrays


@dataclass(frozen=True)
class Models:
    """The three models a rollout reads: the policy being trained (its shape), the frozen
    reference π_ref and the proxy reward model, with how a response is drawn."""

    policy_cfg: GPTConfig
    reference: dict
    rm_cfg: GPTConfig
    rm_params: dict
    eos: int
    max_new_tokens: int

    @property
    def prompt_width(self) -> int:
        """Every prompt is left-padded to this many tokens: one compiled sampler for all, and
        room for max_new_tokens and the closing eos the reward model reads."""
        return self.policy_cfg.n_ctx - self.max_new_tokens - 1

    def respond(self, params: dict, prompts: list[list[int]], key: jax.Array) -> Responses:
        """One response (temperature 1) to each prompt by the policy `params`, measured."""
        ids, mask = pad_prompts(prompts, self.eos)
        left = ((0, 0), (self.prompt_width - ids.shape[1], 0))
        ids, mask = np.pad(ids, left, constant_values=self.eos), np.pad(mask, left)
        samples = generate(self.policy_cfg, params, ids, mask,
                           max_new_tokens=self.max_new_tokens, eos_id=self.eos, rng=key)
        tokens = np.asarray(samples.tokens_BxNxT)[:, 0]
        lengths = np.asarray(samples.lengths_BxN)[:, 0]
        n_ctx = self.policy_cfg.n_ctx
        windows = np.full((len(prompts), n_ctx), self.eos, np.int32)
        weights = np.zeros((len(prompts), n_ctx - 1), np.float32)
        last = np.zeros(len(prompts), np.int32)
        new_tokens = []
        for r, prompt in enumerate(prompts):
            new = tokens[r, :lengths[r]].tolist()
            windows[r, :len(prompt) + len(new)] = prompt + new
            weights[r, len(prompt) - 1:len(prompt) - 1 + len(new)] = 1
            ended = new[-1] == self.eos
            # the reward model reads the closing eos: the response's own, or the padding's
            # first (a response cut at max_new_tokens), as stage=reward's windows end
            last[r] = len(prompt) + len(new) - (1 if ended else 0)
            new_tokens.append(new)
        measured = _measure(self.policy_cfg, self.rm_cfg, params, self.reference, self.rm_params,
                            windows, weights, last)
        return Responses(windows, weights, new_tokens, jax.tree_util.tree_map(np.asarray,
                                                                                measured))


@partial(jax.jit, static_argnames=("policy_cfg", "rm_cfg"))
def _measure(policy_cfg: GPTConfig, rm_cfg: GPTConfig, params: dict, reference: dict,
             rm_params: dict, windows_BxT: jax.Array, weights_BxT: jax.Array,
             last_B: jax.Array) -> dict[str, jax.Array]:
    """Per response target [B, T-1]: the policy's log-prob, value and entropy and the
    reference's log-prob (0 off the response); per response [B]: the proxy's score."""
    logprobs_BxT, values_BxT, logits_BxTxV = policy_outputs(policy_cfg, params, windows_BxT)
    ref_logits_BxTxV = GPT(policy_cfg).apply({"params": reference}, windows_BxT[:, :-1])
    ref_logprobs_BxT = -token_losses(ref_logits_BxTxV, windows_BxT[:, 1:])
    return {"logprobs": weights_BxT * logprobs_BxT, "values": weights_BxT * values_BxT,
            "ref_logprobs": weights_BxT * ref_logprobs_BxT,
            "entropy": weights_BxT * entropy(logits_BxTxV, policy_cfg.vocab_size),
            "scores": rewards(rm_cfg, rm_params, windows_BxT, last_B)}


@partial(jax.jit, static_argnames=("kl_coef", "gamma", "lam"))
def rollout_batch(tokens_BxT: jax.Array, weights_BxT: jax.Array, measured: dict[str, Any], *,
                  kl_coef: float, gamma: float, lam: float) -> RolloutBatch:
    """Responses as PPO trains on them: token rewards (the score at the end, −kl_coef·KL at
    every token), GAE's advantages (whitened over every response target) and returns."""
    rewards_BxT = token_rewards(measured["scores"], measured["logprobs"],
                                measured["ref_logprobs"], weights_BxT, kl_coef)
    advantages_BxT, returns_BxT = gae(rewards_BxT, measured["values"], weights_BxT, gamma, lam)
    return RolloutBatch(tokens_BxT, weights_BxT, measured["logprobs"], measured["ref_logprobs"],
                        measured["values"], whiten(advantages_BxT, weights_BxT), returns_BxT,
                        measured["scores"])


def prompt_rows(seed: int, iteration: int, n_prompts: int, size: int) -> np.ndarray:
    """The `size` prompts (indices into `n_prompts`) of rollout `iteration`: a pure function of
    (seed, iteration), without repeats where there are enough prompts."""
    return np.random.default_rng((seed, iteration)).choice(n_prompts, size,
                                                           replace=n_prompts < size)


def minibatch_rows(seed: int, step: int, size: int, epochs: int, minibatches: int) -> np.ndarray:
    """The rows of a rollout of `size` that step `step` (0-based) trains on: minibatch j of
    epoch e of its iteration, each epoch a permutation that is a pure function of (seed,
    iteration, epoch)."""
    iteration, u = divmod(step, epochs * minibatches)
    epoch, j = divmod(u, minibatches)
    order = np.random.default_rng((seed, iteration, 1 + epoch)).permutation(size)
    rows = size // minibatches
    return order[j * rows:(j + 1) * rows]


class Rollouts:
    """The loop's batch source (`scaling.train.BatchSource`): rollout i is drawn by the policy
    as it stands after i·U steps (U = ppo_epochs · minibatches) and kept in the train state as
    `rollout`; step s trains on minibatch (s mod U) of it, the epoch's rows a pure function of
    (seed, i, epoch)."""

    def __init__(self, cfg: Config, models: Models, prompts: Prompts) -> None:
        s = cfg.stage
        self.models, self.prompts, self.seed = models, prompts, cfg.train.seed
        self.size, self.minibatches, self.epochs = s.rollout_prompts, s.minibatches, s.ppo_epochs
        self.rows = s.rollout_prompts // s.minibatches
        self.per_iteration = s.ppo_epochs * s.minibatches
        self.penalty = {"kl_coef": s.kl_coef, "gamma": s.gamma, "lam": s.lam}

    def init(self) -> dict[str, Any]:
        """A rollout of zeros, the shape of every rollout: the state's `rollout` entry."""
        n_ctx, size = self.models.policy_cfg.n_ctx, self.size
        targets = jnp.zeros((size, n_ctx - 1), jnp.float32)
        return {"rollout": RolloutBatch(jnp.zeros((size, n_ctx), jnp.int32), *[targets] * 6,
                                        jnp.zeros(size, jnp.float32))}

    def draw(self, params: dict, iteration: int) -> RolloutBatch:
        """Rollout `iteration`, drawn by `params` (host arrays)."""
        rows = prompt_rows(self.seed, iteration, len(self.prompts.ids), self.size)
        prompts = [self.prompts.ids[i] for i in rows]
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), iteration)
        responses = self.models.respond(params, prompts, key)
        batch = rollout_batch(responses.windows, responses.weights, responses.measured,
                              **self.penalty)
        kl = (responses.measured["logprobs"] - responses.measured["ref_logprobs"]).sum(axis=1)
        log.info("rollout %d: proxy reward %.4f, kl_to_ref %.3f, %.1f new tokens", iteration,
                 float(np.mean(responses.measured["scores"])), float(np.mean(kl)),
                 float(np.mean([len(t) for t in responses.new_tokens])))
        return jax.tree_util.tree_map(np.asarray, batch)

    def __call__(self, loop: LoopState, step: int) -> RolloutBatch:
        if step % self.per_iteration == 0:  # the parameters after `step` steps draw the next
            fresh = self.draw(loop.state["params"], step // self.per_iteration)
            loop.state["rollout"] = jax.tree_util.tree_map(  # placed as the one it replaces
                lambda new, old: jax.device_put(new, old.sharding), fresh, loop.state["rollout"])
        rows = minibatch_rows(self.seed, step, self.size, self.epochs, self.minibatches)
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[rows], loop.state["rollout"])


class RolloutStatistics(Measurement):
    """PPO's own diagnostics, of the policy as it stands on the rollout it trains on now:
    `clip_fraction`, `value_clip_fraction`, `approx_kl`, `policy_loss` and `value_loss`
    (`scaling.rlhf.ppo.ppo_statistics`), and the rollout's `rollout_reward` (its mean proxy
    score) and `rollout_kl` (Σ log π_old − log π_ref per response, the mean)."""

    summary = ("value_loss",)

    def __init__(self, cfg: GPTConfig, clip_range: float) -> None:
        self.statistics = jax.jit(partial(ppo_statistics, cfg, clip_range))

    def __call__(self, loop: LoopState) -> dict[str, list[float]]:
        rollout = loop.state["rollout"]
        stats = self.statistics(loop.state["params"], rollout)
        kl_B = jnp.sum(rollout.old_logprobs - rollout.ref_logprobs, axis=1)
        columns = {name: float(stats[name]) for name in (
            "clip_fraction", "value_clip_fraction", "approx_kl", "policy_loss", "value_loss")}
        columns |= {"rollout_reward": float(jnp.mean(rollout.scores)),
                    "rollout_kl": float(jnp.mean(kl_B))}
        return {name: [value] for name, value in columns.items()}


class HeldOutSamples(Measurement):
    """What the policy writes now for held-out prompts (the parent's SFT validation split), one
    response each at temperature 1, with the same random numbers at every evaluation (common
    random numbers: a change between evaluations is the policy's, not the draw's):
    `proxy_reward` (the proxy's mean score), `gold_reward` (the gold's mean score against the
    reference response), `kl_to_ref` (Σ log π − log π_ref over each response's tokens, the
    mean over responses: an unbiased estimate of KL(π‖π_ref) in nats per response, Gao et al.
    2022's d = √KL), `entropy` (the policy's mean entropy per response token, nats) and
    `response_tokens` (the mean response length, eos included)."""

    summary = ("proxy_reward", "gold_reward", "kl_to_ref", "entropy")

    def __init__(self, models: Models, prompts: Prompts, gold: GoldReward, decode,
                 seed: int) -> None:
        self.models, self.prompts, self.gold, self.decode = models, prompts, gold, decode
        self.key = jax.random.PRNGKey(seed)

    def __call__(self, loop: LoopState) -> dict[str, list[float]]:
        responses = self.models.respond(loop.state["params"], self.prompts.ids, self.key)
        m, eos = responses.measured, self.models.eos
        golds = [self.gold(e.prompt, self.decode(new[:len(new) - (new[-1] == eos)]),
                           e.response).total
                 for e, new in zip(self.prompts.examples, responses.new_tokens, strict=True)]
        columns = {
            "proxy_reward": float(np.mean(m["scores"])),
            "gold_reward": float(np.mean(golds)),
            "kl_to_ref": float(np.mean((m["logprobs"] - m["ref_logprobs"]).sum(axis=1))),
            "entropy": float(masked_mean(m["entropy"], responses.weights)),
            "response_tokens": float(np.mean([len(t) for t in responses.new_tokens])),
        }
        return {name: [value] for name, value in columns.items()}


def fitting_prompts(examples: list[Example], tokenizer, n_ctx: int, max_new_tokens: int,
                    split: str) -> Prompts:
    """The examples whose prompt (eos, prompt) leaves room for max_new_tokens and an eos
    within n_ctx. Raises DataError (one line) when none does, naming the shortest."""
    encoded = [[tokenizer.eos_id, *tokenizer.encode(e.prompt)] for e in examples]
    room = n_ctx - max_new_tokens - 1
    fitting = [i for i, ids in enumerate(encoded) if len(ids) <= room]
    if not fitting:
        raise DataError(
            f"no {split} prompt of {len(examples)} leaves room for stage.max_new_tokens="
            f"{max_new_tokens} and an eos within n_ctx={n_ctx}: the shortest has "
            f"{min(map(len, encoded), default=0)} tokens (eos included); lower "
            "stage.max_new_tokens or raise model.n_ctx")
    return Prompts([examples[i] for i in fitting], [encoded[i] for i in fitting],
                   len(examples) - len(fitting))


def _tokenizer(summary: dict[str, Any]) -> tuple[str, int, str | None]:
    """What a run's tokens mean: its tokenizer, vocabulary size and, for a BPE, the corpus
    cache it was learned on (two BPEs of one size on other corpora are other tokenizers)."""
    data = summary["config"]["data"]
    if data["tokenizer"] != "bpe":
        return data["tokenizer"], 256, None
    source = summary.get("tokenizer_source") or {"cache": summary.get("corpus_cache")}
    return "bpe", data["vocab_size"], source.get("cache")


def load_reward_model(cfg: Config, parent: Parent) -> tuple[Parent, GPTConfig]:
    """The proxy reward model `stage.reward_from` names, and its shape. Raises ConfigError (one
    line) for a run that is not a reward model, one whose tokenizer is not the policy's, or
    one whose context is shorter than the policy's windows."""
    where = f"stage.reward_from={cfg.stage.reward_from}"
    rm = load_run(Path(cfg.stage.reward_from), where=where)
    if rm.summary.get("stage") != "reward" or REWARD_HEAD not in rm.params:
        raise ConfigError(f"{where} is a stage={rm.summary.get('stage')} run, not a reward model "
                          "(a stage=reward run directory)")
    ours, theirs = _tokenizer(parent.summary), _tokenizer(rm.summary)
    if ours != theirs:
        raise ConfigError(
            f"{where} reads tokenizer {' '.join(map(str, theirs[:2]))}"
            f"{' of ' + theirs[2] if theirs[2] else ''}, the policy (stage.init_from) "
            f"{' '.join(map(str, ours[:2]))}{' of ' + ours[2] if ours[2] else ''}: a reward "
            "model scores the policy's tokens")
    rm_cfg = policy_model(rm)
    if rm_cfg.n_ctx < cfg.model.n_ctx:
        raise ConfigError(f"{where} has n_ctx={rm_cfg.n_ctx}, shorter than the policy's "
                          f"model.n_ctx={cfg.model.n_ctx}: it cannot read the policy's windows")
    return rm, rm_cfg


def rollout_flops(models: Models, rollout_prompts: int) -> int:
    """A rollout's FLOPs (a forward pass: a third of a training step's per token): sampling
    (the padded prompt and max_new_tokens per response, an upper bound), the policy's and the
    reference's pass over each window, the proxy's over each window."""
    n_ctx = models.policy_cfg.n_ctx
    forward = flops_per_token(models.policy_cfg) // 3
    rm_forward = flops_per_token(models.rm_cfg, unembed=False) // 3
    per_response = ((models.prompt_width + models.max_new_tokens) * forward
                    + 2 * (n_ctx - 1) * forward + n_ctx * rm_forward)
    return rollout_prompts * per_response


def rl_stage(cfg: Config, parent: Parent, rm: Parent, models: Models, train: Prompts,
             val: Prompts, gold: GoldReward, decode) -> Stage:
    """PPO of the parent against the proxy `rm`, on the `train` prompts, evaluated on `val`."""
    s, t = cfg.stage, cfg.train
    model_cfg = models.policy_cfg
    source = Rollouts(cfg, models, train)
    rows, real = eval_rows(len(val.ids), t.batch_size, t.eval_batches)
    held_out = Prompts([val.examples[i] for i in rows[real]], [val.ids[i] for i in rows[real]],
                       val.skipped)
    policy = {**{k: v for k, v in parent.init_params().items() if k != REWARD_HEAD},
              VALUE_HEAD: init_reward_head(model_cfg)}
    # val_loss: PPO's loss on a fixed rollout of the held-out prompts drawn by the initial
    # policy (filler rows weigh 0), how the surrogate moves on responses it no longer samples
    first = models.respond(policy, [val.ids[i] for i in rows.reshape(-1)],
                           jax.random.PRNGKey(t.seed))
    weights = first.weights * real.reshape(-1, 1)
    eval_rollout = rollout_batch(first.windows, weights, first.measured, kl_coef=s.kl_coef,
                                 gamma=s.gamma, lam=s.lam)
    eval_data = jax.tree_util.tree_map(lambda x: np.asarray(x).reshape(*rows.shape, *x.shape[1:]),
                                       eval_rollout)
    tokens_per_step = source.rows * model_cfg.n_ctx
    steps = t.tokens // tokens_per_step
    iterations = -(-steps // source.per_iteration)
    per_rollout = rollout_flops(models, s.rollout_prompts)
    digest = hashlib.sha256()
    for ids in (*train.ids, *val.ids):
        digest.update(np.asarray(ids, np.int32).tobytes())
    record = {
        **model_record(model_cfg, parent.summary["vocab_size"], init=lambda: {
            **init_params(model_cfg, 0), VALUE_HEAD: init_reward_head(model_cfg)}),
        **parent.record(),
        "reference": "parent",  # π_ref: the parent's parameters, frozen
        "reward_from": s.reward_from, "reward_run": rm.run_id, "reward_step": rm.step,
        "rm_n_params_nonembed": rm.summary.get("n_params_nonembed"),
        "rm_n_params": rm.summary.get("n_params"),
        "rm_val_accuracy": rm.summary.get("val_accuracy"),
        "kl_coef": s.kl_coef, "gold": s.gold,
        "ppo_iterations": iterations,  # the last one cut short where steps end inside it
        "rollouts": iterations * s.rollout_prompts,  # responses drawn for training
        "rollout_flops": iterations * per_rollout,  # besides `flops`, the steps' own
        "rollout_flops_per_iteration": per_rollout,
        "n_prompts": len(train.ids), "n_val_prompts": len(held_out.ids),
        "prompts_skipped": train.skipped,  # train prompts without room for a response
        "tokenizer_source": parent.summary.get("tokenizer_source"),
    }
    return Stage(
        name="rl",
        loss_fn=partial(ppo_loss, model_cfg, s.clip_range, s.vf_coef),
        train_batch=None,
        eval_data=eval_data,
        init_params=lambda: jax.tree_util.tree_map(jnp.asarray, policy),
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_per_token(model_cfg),
        record=record,
        measurements=(HeldOutSamples(models, held_out, gold, decode, t.seed),
                      RolloutStatistics(model_cfg, s.clip_range)),
        # the prompts in the parent's tokens; the reward model is named by stage.reward_from
        data_fingerprints={"prompts_cache": f"prompts-{digest.hexdigest()[:16]}"},
        source=source,
    )


def prepare(cfg: Config) -> Prepared:
    """The parent (policy start and reference), the proxy reward model, the parent's SFT
    prompts in its tokens (train for rollouts, validation for evaluations), and the policy."""
    cfg = replace(cfg, data=canonical_data(cfg.data))
    parent = load_parent(cfg)
    sft_data = parent.summary["config"]["data"]
    if sft_data["source"] in ("sft_stdlib", "jsonl") and (
            (cfg.data.source, cfg.data.paths) != (sft_data["source"], sft_data["paths"])):
        raise ConfigError(
            f"data={cfg.data.source} data.paths={cfg.data.paths} differs from the parent's SFT "
            f"data {sft_data['source']} {sft_data['paths']} (stage.init_from="
            f"{cfg.stage.init_from}): PPO's prompts are the parent's own SFT prompts")
    try:
        gold = gold_reward(cfg.stage.gold)
    except ValueError as error:
        raise ConfigError(f"stage.gold={cfg.stage.gold}: {error}") from None
    rm, rm_cfg = load_reward_model(cfg, parent)
    tokenizer = parent.tokenizer_dataset().tokenizer
    model_cfg = model_config(cfg, parent.summary["vocab_size"])
    s = cfg.stage
    train, val = (fitting_prompts(policy_prompts(parent, PromptChoice(split)), tokenizer,
                                  model_cfg.n_ctx, s.max_new_tokens, split)
                  for split in ("train", "val"))
    reference = {k: v for k, v in parent.init_params().items() if k != REWARD_HEAD}
    models = Models(model_cfg, reference, rm_cfg, jax.tree_util.tree_map(jnp.asarray, rm.params),
                    tokenizer.eos_id, s.max_new_tokens)
    return prepare_models(cfg, lambda c: rl_stage(c, parent, rm, models, train, val, gold,
                                                  tokenizer.decode))
