"""Comparisons of a policy's own samples, as Gao et al. 2022 collect them: n responses to each
prompt drawn from the policy (an SFT run), each scored by a gold reward against the reference
response, every pair of them labelled (`scaling.rlhf.compare`).

The prompts are the policy's own SFT examples (data=sft_stdlib or its JSONL files; sft_stdlib
for a policy trained on neither) in the policy's own split: `train` prompts for the reward
model's comparisons, `val` prompts (which neither the policy nor, by default, a reward model
trained on) for evaluation pools such as best-of-n. Every sample is kept with its gold score
in a second file (`write_samples`, one line per prompt).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from scaling.config import DataConfig, ModelConfig
from scaling.console import UsageError
from scaling.data import DataError, Example, read_pairs, split_pairs
from scaling.data.text import read_json_lines
from scaling.model import GPTConfig, model_shape, resolve_attention, resolve_dtype
from scaling.rlhf.comparisons import Comparison, compare
from scaling.rlhf.gold import GoldReward
from scaling.sample import generate, pad_prompts

if TYPE_CHECKING:  # the stages import this module (dpo): a runtime import would be a cycle
    from scaling.stages.parent import Parent

# Prompt batches are padded to a multiple of this many tokens: a few compiled shapes, not one
# per prompt length.
PROMPT_BUCKET = 32
PROMPT_CHOICE = re.compile(r"(?:(train|val)(?::(\d+))?|(\d+))")


@dataclass(frozen=True)
class PromptChoice:
    """Which prompts to sample: the policy's `train` or `val` split, all of them (count None)
    or `count` spread evenly over those that fit."""

    split: str
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> PromptChoice:
        """`train`, `val`, `train:N`, `val:N`, or `N` (= `train:N`); UsageError otherwise."""
        match = PROMPT_CHOICE.fullmatch(text)
        count = None if match is None else match.group(2) or match.group(3)
        if match is None or (count is not None and int(count) < 1):
            raise UsageError(f"--prompts {text}: expected train, val, a number N of train "
                             "prompts (N >= 1), or train:N / val:N")
        return cls(match.group(1) or "train", None if count is None else int(count))


@dataclass(frozen=True)
class Sample:
    """One response drawn for a prompt, and what the gold reward made of it."""

    response: str
    gold: float
    parts: dict[str, float]
    new_tokens: int  # its eos included, where it ended
    ended: bool  # drew eos before max_new_tokens
    logprob: float  # Σ ln p(token) at temperature 1, eos included


@dataclass(frozen=True)
class PromptSamples:
    """The n samples of one prompt, with the prompt's name, split and reference response."""

    name: str
    split: str
    prompt: str
    reference: str
    samples: list[Sample]


@dataclass(frozen=True)
class Collection:
    """What `collect` drew and labelled, and how long it took."""

    prompts: list[PromptSamples]
    comparisons: list[Comparison]  # none from `draw`, which labels no pairs
    fitting: int  # prompts of the split with room for max_new_tokens (sampled: all or some)
    skipped: int  # prompts of the split without that room
    max_new_tokens: int
    sampling_s: float
    scoring_s: float
    # Per prompt, its ids as sampled (eos, prompt) and each sample's new tokens (its eos
    # included where it ended), in the order of `prompts`: what a reward model scores.
    token_ids: list[tuple[list[int], list[list[int]]]] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        """Counts, means and rates, as `scaling-compare` prints them."""
        samples = [s for p in self.prompts for s in p.samples]
        new_tokens = sum(s.new_tokens for s in samples)
        return {
            "prompts": len(self.prompts), "fitting": self.fitting, "skipped": self.skipped,
            "samples": len(samples),
            "comparisons": len(self.comparisons),
            "mean_gold": float(np.mean([s.gold for s in samples])),
            "ended": float(np.mean([s.ended for s in samples])),
            "mean_new_tokens": new_tokens / len(samples),
            "sampling_s": self.sampling_s, "tokens_per_s": new_tokens / self.sampling_s,
            "scoring_s": self.scoring_s,
        }


def policy_model(policy: Parent) -> GPTConfig:
    """The policy's (or a reward model's) shape, its numerics and attention kernel resolved
    for this machine."""
    shape = model_shape(ModelConfig(**policy.summary["config"]["model"]),
                        policy.summary["vocab_size"])
    dtype = resolve_dtype(shape.dtype)
    return replace(shape, dtype=dtype, attention=resolve_attention(shape.attention, dtype))


def policy_prompts(policy: Parent, choice: PromptChoice) -> list[Example]:
    """Every example of the policy's own prompt/response data in the split `choice` names, as
    its SFT run split them (data=sft_stdlib by module, data=jsonl by example); sft_stdlib with
    the default data.val_fraction for a policy that was not fine-tuned on pairs."""
    data = policy.summary["config"]["data"]
    if data["source"] not in ("sft_stdlib", "jsonl"):
        data = {"source": "sft_stdlib", "paths": [], "val_fraction": DataConfig().val_fraction}
    split = split_pairs(read_pairs(data["source"], data["paths"]), data["val_fraction"],
                        by="file" if data["source"] == "sft_stdlib" else "example")
    return split.train if choice.split == "train" else split.val


def collect(policy: Parent, examples: Sequence[Example], choice: PromptChoice,
            gold: GoldReward, *, n: int, max_new_tokens: int | None = None,
            temperature: float = 1.0, label_temperature: float = 0.0, seed: int = 0,
            batch_size: int = 16) -> Collection:
    """`draw` `n` responses to each prompt `choice` picks, then label every pair of a
    prompt's responses (`compare`: equal scores dropped; at label_temperature > 0 drawn with
    `seed`). The labelling's time counts in `scoring_s`.

    Raises UsageError (one line) when no prompt of the split fits.
    """
    drawn = draw(policy, examples, choice, gold, n=n, max_new_tokens=max_new_tokens,
                 temperature=temperature, seed=seed, batch_size=batch_size)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    comparisons = [c for p in drawn.prompts for c in compare(
        p.prompt, p.reference, [s.response for s in p.samples], gold,
        temperature=label_temperature, rng=rng)]
    return replace(drawn, comparisons=comparisons,
                   scoring_s=drawn.scoring_s + time.perf_counter() - started)


def draw(policy: Parent, examples: Sequence[Example], choice: PromptChoice, gold: GoldReward,
         *, n: int, max_new_tokens: int | None = None, temperature: float = 1.0,
         seed: int = 0, batch_size: int = 16) -> Collection:
    """Sample `n` responses to the prompts of `examples` that `choice` picks from `policy`
    (its model and tokenizer) and score each with `gold` against the example's response; no
    pairs (`collect` labels them; best-of-n ranks the pools instead).

    A prompt is read as SFT wrote it (eos, prompt) and needs room for max_new_tokens (default
    n_ctx // 2) and a closing eos within n_ctx: the reward model's window (eos, prompt,
    response, eos) then fits. Prompts without that room are skipped; of the rest, all are
    sampled, or `choice.count` spread evenly over them. `batch_size` prompts are sampled at
    a time; `seed` fixes the samples.

    Raises UsageError (one line) when no prompt of the split fits.
    """
    model_cfg, tokenizer = policy_model(policy), policy.tokenizer_dataset().tokenizer
    max_new_tokens = max_new_tokens or model_cfg.n_ctx // 2
    encoded = [[tokenizer.eos_id, *tokenizer.encode(e.prompt)] for e in examples]
    fitting = [i for i, ids in enumerate(encoded) if len(ids) + max_new_tokens < model_cfg.n_ctx]
    if not fitting:
        raise UsageError(
            f"no {choice.split} prompt leaves room for max_new_tokens={max_new_tokens} and an "
            f"eos within n_ctx={model_cfg.n_ctx}: the shortest has "
            f"{min(map(len, encoded), default=0)} tokens (eos included); lower "
            "--max-new-tokens")
    picked = fitting
    if choice.count is not None and choice.count < len(fitting):
        picked = [fitting[j] for j in np.arange(choice.count) * len(fitting) // choice.count]
    started = time.perf_counter()
    drawn = _sample(policy, model_cfg, [encoded[i] for i in picked], n=n,
                    max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                    batch_size=batch_size, eos_id=tokenizer.eos_id)
    sampling_s = time.perf_counter() - started
    started = time.perf_counter()
    prompts = []
    for i, rows in zip(picked, drawn, strict=True):
        e = examples[i]
        samples = []
        for tokens, logprob in rows:
            ended = bool(tokens) and tokens[-1] == tokenizer.eos_id
            response = tokenizer.decode(tokens[:len(tokens) - ended])
            score = gold(e.prompt, response, e.response)
            samples.append(Sample(response, score.total, dict(score.parts), len(tokens), ended,
                                  logprob))
        prompts.append(PromptSamples(e.name, choice.split, e.prompt, e.response, samples))
    token_ids = [(encoded[i], [tokens for tokens, _ in rows])
                 for i, rows in zip(picked, drawn, strict=True)]
    return Collection(prompts, [], len(fitting), len(examples) - len(fitting), max_new_tokens,
                      sampling_s, time.perf_counter() - started, token_ids)


def _sample(policy: Parent, model_cfg: GPTConfig, prompts: list[list[int]], *, n: int,
            max_new_tokens: int, temperature: float, seed: int, batch_size: int,
            eos_id: int) -> list[list[tuple[list[int], float]]]:
    """For each prompt (token ids), its n samples as (new tokens, Σ log-prob).

    Prompts go in batches of similar length, each padded on the left to a multiple of
    PROMPT_BUCKET and the last batch filled with repeats, so that few shapes compile."""
    params = policy.init_params()
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out: list[list[tuple[list[int], float]]] = [[] for _ in prompts]
    key = jax.random.PRNGKey(seed)
    for b, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start:start + batch_size]
        batch = [prompts[i] for i in rows] + [prompts[rows[0]]] * (batch_size - len(rows))
        ids, mask = pad_prompts(batch, eos_id)
        width = min(-(-ids.shape[1] // PROMPT_BUCKET) * PROMPT_BUCKET,
                    model_cfg.n_ctx - max_new_tokens)
        left = ((0, 0), (width - ids.shape[1], 0))
        ids, mask = np.pad(ids, left, constant_values=eos_id), np.pad(mask, left)
        samples = generate(model_cfg, params, ids, mask, max_new_tokens=max_new_tokens,
                           temperature=temperature, n=n, eos_id=eos_id,
                           rng=jax.random.fold_in(key, b))
        tokens = np.asarray(samples.tokens_BxNxT)
        lengths = np.asarray(samples.lengths_BxN)
        logprobs = np.asarray(samples.logprobs_BxNxT).sum(axis=-1)
        for r, i in enumerate(rows):
            out[i] = [(tokens[r, j, :lengths[r, j]].tolist(), float(logprobs[r, j]))
                      for j in range(n)]
    return out


def samples_path(out: Path) -> Path:
    """Where the samples of a comparisons file go: OUT.jsonl -> OUT.samples.jsonl."""
    return out.with_name(out.name.removesuffix(".jsonl") + ".samples.jsonl")


def write_samples(path: str | Path, prompts: Sequence[PromptSamples]) -> None:
    """One JSON object per prompt: {"name", "split", "prompt", "reference", "samples": [
    {"response", "gold", "parts", "new_tokens", "ended", "logprob"}, ...]}."""
    with open(path, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def read_samples(path: str | Path) -> list[PromptSamples]:
    """The prompts and samples `write_samples` wrote. Raises DataError naming `path:line` for
    a line that is not JSON or not a samples record."""
    records = []
    for lineno, record in read_json_lines(str(path)):
        try:
            samples = [Sample(**s) for s in record.pop("samples")]
            records.append(PromptSamples(**record, samples=samples))
        except (TypeError, KeyError, AttributeError) as error:
            raise DataError(f"{path}:{lineno}: not a samples record ({error})") from None
    return records
