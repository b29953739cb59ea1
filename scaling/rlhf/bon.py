"""Best-of-n against proxy reward models, scored by the gold reward (Gao et al. 2022, §3.1):
no training, one pool of samples per prompt, every n from the same pool.

For each prompt the SFT policy draws a pool of m samples (temperature 1, `collect.draw`);
every proxy reward model scores every sample (batched forward passes, `scaling.model.
rewards`, on the windows the policy sampled: eos, prompt, response, eos) and the gold reward
scores it against the reference. The expected gold (and proxy) score of the proxy's favourite
among n samples drawn without replacement from the pool is computed exactly over all
C(m, n) subsets (`best_of_n`: Nakano et al. 2021, App. I; Gao et al. 2022, App. A), an
unbiased estimate of best-of-n from the policy at every n ≤ m at once. The KL of the
best-of-n policy to the policy is log n − (n − 1)/n nats (Stiennon et al. 2020, App. G.3;
Gao's d = √KL).

Files written into OUT_DIR (`write_bon`): `bon.parquet` (one row per reward model and n),
`bon_prompts.parquet` (the same per prompt: the bootstrap's unit), `pool.parquet` (every
sample: its response, gold score and each proxy's) and `bon.json` (what was run and its
cost). None of them is a run record (summary.json), so a study directory can hold them:
`scaling-report` reads every `bon.parquet` below it (`analysis.overopt`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import pandas as pd

from scaling.console import UsageError
from scaling.model import REWARD_HEAD, GPTConfig, rewards
from scaling.rlhf.collect import PROMPT_BUCKET, Collection, policy_model

if TYPE_CHECKING:  # the stages import scaling.rlhf.collect: a runtime import would be a cycle
    from scaling.stages.parent import Parent

TABLE, PROMPTS_TABLE = "bon.parquet", "bon_prompts.parquet"
POOL, RECORD = "pool.parquet", "bon.json"
SCORE_BATCH = 64  # windows per reward-model forward pass


def kl_bon(n: int | np.ndarray) -> np.ndarray:
    """KL(best-of-n ‖ policy) = ln n − (n − 1)/n in nats, for n ≥ 1 (an upper bound that is
    exact for continuous rewards; Stiennon et al. 2020, App. G.3; Gao et al. 2022, §3.1).

    Raises ValueError for n < 1."""
    n = np.asarray(n, float)
    if np.any(n < 1):
        raise ValueError(f"n={n.min():g}: best-of-n needs n >= 1")
    return np.log(n) - (n - 1) / n


def n_grid(n_max: int) -> list[int]:
    """1, 2, 4, … up to n_max, and n_max itself when it is not a power of 2."""
    if n_max < 1:
        raise UsageError(f"n_max={n_max}: expected at least 1")
    grid = [2 ** k for k in range(int(math.log2(n_max)) + 1)]
    return grid if grid[-1] == n_max else [*grid, n_max]


def rank_weights(m: int, n: int) -> np.ndarray:
    """[m]: the probability that the i-th lowest of m ranked samples (i = 1..m) is the best of
    n drawn from them without replacement, C(i − 1, n − 1)/C(m, n); it sums to 1. Built from
    the top down with w_{i−1}/w_i = (i − n)/(i − 1), no large binomials.

    Raises ValueError unless 1 ≤ n ≤ m."""
    if not 1 <= n <= m:
        raise ValueError(f"n={n}: best-of-n from a pool of {m} needs 1 <= n <= {m}")
    i = np.arange(m, 1, -1)  # ratios w_{i-1}/w_i for i = m..2
    ratios = np.clip((i - n) / (i - 1), 0, None)
    return (n / m) * np.concatenate([[1.0], np.cumprod(ratios)])[::-1]


def best_of_n(proxy_M: np.ndarray, value_M: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """[len(ns)]: E[value of the proxy's argmax among n of the m pool samples], the mean over
    all C(m, n) subsets, for each n (Nakano et al. 2021, App. I).

    proxy_M, value_M: [m], the proxy's score and the value (gold, or the proxy itself) of each
    sample. Ties of the proxy are broken as `np.argmax` breaks them: the sample earlier in the
    pool wins, so the estimate is a fixed function of the pool. Raises ValueError for a
    non-finite proxy score, pools of different sizes, or an n outside 1..m.
    """
    proxy_M, value_M = np.asarray(proxy_M, float), np.asarray(value_M, float)
    if proxy_M.shape != value_M.shape or proxy_M.ndim != 1:
        raise ValueError(f"proxy {proxy_M.shape} and values {value_M.shape}: expected one "
                         "score per pool sample each")
    if not np.isfinite(proxy_M).all():
        raise ValueError("a proxy score is not finite: best-of-n cannot rank it")
    m = len(proxy_M)
    # ascending by proxy; among equals the later-drawn first, so the earliest ranks highest
    ranked_M = value_M[np.lexsort((-np.arange(m), proxy_M))]
    return np.array([rank_weights(m, n) @ ranked_M for n in ns])


def tokenizer_key(summary: dict[str, Any]) -> str:
    """What makes two runs' token ids mean the same: bytes, or a BPE of its vocabulary size
    trained on its corpus (the tokenizer's cache names both)."""
    source = summary.get("tokenizer_source") or {
        "cache": summary.get("corpus_cache"), "data": summary["config"]["data"]}
    if source["data"]["tokenizer"] == "bytes":
        return "bytes"
    return f"bpe vocab_size={summary['vocab_size']} ({source['cache']})"


def check_reward_model(policy: Parent, rm: Parent, longest_window: int | None = None
                       ) -> GPTConfig:
    """The reward model's shape, once it is known to score the policy's samples: a reward
    head, the policy's tokenizer, and (where given) room for the longest window (eos, prompt,
    response, eos). Raises UsageError (one line) naming the run and the value otherwise."""
    if REWARD_HEAD not in rm.params:
        raise UsageError(f"{rm.run_dir}: stage={rm.summary.get('stage')} has no reward head: "
                         "expected a reward model (stage=reward)")
    ours, theirs = tokenizer_key(policy.summary), tokenizer_key(rm.summary)
    if ours != theirs:
        raise UsageError(f"{rm.run_dir}: tokenizer {theirs} differs from the policy's {ours}: "
                         "a reward model scores the policy's tokens")
    cfg = policy_model(rm)
    if longest_window is not None and longest_window > cfg.n_ctx:
        raise UsageError(f"{rm.run_dir}: n_ctx={cfg.n_ctx} is shorter than the longest window "
                         f"(eos, prompt, response, eos) of {longest_window} tokens: lower "
                         "--max-new-tokens or pick shorter prompts")
    return cfg


def study_runs(study_dir: Path) -> tuple[Path, list[Path]]:
    """The policy and the reward models of a study (`scaling-bon --study`): every completed
    stage=reward run directly under `study_dir` whose comparisons are a policy's samples
    (data=policy_comparisons), smallest first, and that one policy (data.policy).

    Raises UsageError (one line) where no such reward model has completed, or where they
    compare the samples of more than one policy (name them on the command line instead)."""
    from scaling.record import read_summary

    found = []
    for run_dir in sorted(p for p in Path(study_dir).iterdir() if p.is_dir()):
        summary = read_summary(run_dir) if (run_dir / "summary.json").is_file() else None
        if (summary is None or summary.get("status") != "completed"
                or summary["config"]["stage"]["kind"] != "reward"
                or summary["config"]["data"].get("source") != "policy_comparisons"):
            continue
        found.append((summary.get("n_params_nonembed", 0), run_dir,
                      Path(summary["config"]["data"]["policy"]).resolve()))
    if not found:
        raise UsageError(f"--study {study_dir}: no completed reward model (stage=reward, "
                         "data=policy_comparisons) directly under it")
    policies = sorted({str(policy) for *_, policy in found})
    if len(policies) > 1:
        raise UsageError(f"--study {study_dir}: its reward models compare the samples of "
                         f"{len(policies)} policies ({', '.join(policies)}): name the policy "
                         "and its reward models on the command line instead")
    return Path(policies[0]), [run_dir for _, run_dir, _ in sorted(found)]


def up_to_date(out_dir: Path, policy: Path, rm_dirs: Sequence[Path],
               options: dict[str, Any]) -> bool:
    """Whether `out_dir` holds best-of-n tables of this policy against exactly these reward
    models with these `options` (bon.json's): a study's re-run has nothing to do."""
    try:
        record = json.loads((out_dir / RECORD).read_text())
    except (OSError, ValueError):
        return False
    if not all((out_dir / name).is_file() for name in (TABLE, PROMPTS_TABLE)):
        return False
    same_runs = (Path(record.get("policy_run", "")).resolve() == policy.resolve()
                 and sorted(str(Path(p).resolve()) for p in record.get("rm_runs", []))
                 == sorted(str(p.resolve()) for p in rm_dirs))
    recorded = record.get("options", {})
    return same_runs and all(str(recorded.get(k)) == str(v) for k, v in options.items())


def windows(token_ids: list[tuple[list[int], list[list[int]]]],
            eos_id: int) -> tuple[list[list[int]], np.ndarray]:
    """Every sample as a reward model reads it, prompt by prompt: eos, prompt, the new tokens
    and a closing eos (the sampled one where it ended), and the position of that eos."""
    out = [[*prompt, *new] + ([] if new and new[-1] == eos_id else [eos_id])
           for prompt, samples in token_ids for new in samples]
    return out, np.array([len(w) - 1 for w in out], np.int32)


def proxy_scores(cfg: GPTConfig, params: Any, windows_W: list[list[int]], last_W: np.ndarray,
                 eos_id: int, batch_size: int = SCORE_BATCH) -> np.ndarray:
    """[W] float32: the reward model's scalar at each window's closing eos. Windows go
    `batch_size` at a time in order of length, each batch eos-padded to its longest rounded
    up to PROMPT_BUCKET tokens (the model is causal: the padding after a window's last token
    is never read), the last batch filled with repeats: a few shapes compile, and short
    windows are not padded to the longest."""
    order = np.argsort(last_W, kind="stable")
    score = jax.jit(partial(rewards, cfg))
    out = np.empty(len(windows_W), np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[np.arange(start, start + batch_size) % len(order)]
        width = min(-(-int(last_W[rows].max() + 1) // PROMPT_BUCKET) * PROMPT_BUCKET, cfg.n_ctx)
        ids_BxT = np.full((batch_size, width), eos_id, np.int32)
        for row, w in enumerate(rows):
            ids_BxT[row, :len(windows_W[w])] = windows_W[w]
        out[rows] = np.asarray(score(params, ids_BxT, last_W[rows]))
    return out


@dataclass(frozen=True)
class BestOfN:
    """What `best_of_n_run` measured: the tables `write_bon` writes, and its costs."""

    table: pd.DataFrame  # one row per (rm_run, n): n, kl, d, gold_reward, proxy_reward, ...
    prompts: pd.DataFrame  # one row per (rm_run, prompt, n): gold_reward, proxy_reward
    pool: pd.DataFrame  # one row per sample: prompt, sample, response, gold, proxy:<rm_run>...
    record: dict[str, Any]


def best_of_n_run(policy: Parent, rms: Sequence[Parent], drawn: Collection,
                  ns: Sequence[int], eos_id: int) -> BestOfN:
    """Score the pools of `drawn` (each prompt's m samples from `policy`, gold-scored) with
    every reward model in `rms` and estimate best-of-n for each n of `ns` (≤ m).

    Raises UsageError (one line) for a reward model without a head, of another tokenizer, or
    too short a context (`check_reward_model`), and for an n larger than the pool."""
    m = min(len(p.samples) for p in drawn.prompts)
    if max(ns) > m:
        raise UsageError(f"n={max(ns)}: larger than the pool of {m} samples per prompt")
    windows_W, last_W = windows(drawn.token_ids, eos_id)
    gold_PxM = np.array([[s.gold for s in p.samples] for p in drawn.prompts])
    P = len(drawn.prompts)
    pool = pd.DataFrame({
        "prompt": np.repeat(np.arange(P), m), "name": np.repeat([p.name for p in drawn.prompts], m),
        "sample": np.tile(np.arange(m), P),
        "response": [s.response for p in drawn.prompts for s in p.samples],
        "gold": gold_PxM.ravel(),
        "new_tokens": [s.new_tokens for p in drawn.prompts for s in p.samples],
        "ended": [s.ended for p in drawn.prompts for s in p.samples],
        "logprob": [s.logprob for p in drawn.prompts for s in p.samples]})
    rows, prompt_rows, scoring = [], [], {}
    kl = kl_bon(np.array(ns))
    for rm in rms:
        cfg = check_reward_model(policy, rm, int(last_W.max()) + 1)
        started = time.perf_counter()
        proxy_PxM = proxy_scores(cfg, rm.init_params(), windows_W, last_W, eos_id).reshape(P, m)
        scoring[rm.run_id] = time.perf_counter() - started
        pool[f"proxy:{rm.run_id}"] = proxy_PxM.ravel()
        gold_PxK = np.array([best_of_n(proxy_PxM[p], gold_PxM[p], ns) for p in range(P)])
        proxy_PxK = np.array([best_of_n(proxy_PxM[p], proxy_PxM[p], ns) for p in range(P)])
        size = rm.summary.get("n_params_nonembed")
        for p in range(P):
            prompt_rows += [{"rm_run": rm.run_id, "prompt": p, "name": drawn.prompts[p].name,
                             "n": n, "gold_reward": gold_PxK[p, k],
                             "proxy_reward": proxy_PxK[p, k]} for k, n in enumerate(ns)]
        rows += [{"rm_run": rm.run_id, "rm_n_params_nonembed": size, "n": n, "kl": kl[k],
                  "d": float(np.sqrt(kl[k])),
                  "gold_reward": gold_PxK[:, k].mean(), "gold_reward_se": _se(gold_PxK[:, k]),
                  "proxy_reward": proxy_PxK[:, k].mean(),
                  "proxy_reward_se": _se(proxy_PxK[:, k]), "n_prompts": P, "pool": m}
                 for k, n in enumerate(ns)]
    record = {
        "policy_run": str(policy.run_dir), "policy_step": policy.step,
        "rm_runs": [str(rm.run_dir) for rm in rms],
        "rm_n_params_nonembed": {rm.run_id: rm.summary.get("n_params_nonembed") for rm in rms},
        "n": list(ns), "pool": m, "n_prompts": P, "prompts": [p.name for p in drawn.prompts],
        "fitting": drawn.fitting, "skipped": drawn.skipped,
        "max_new_tokens": drawn.max_new_tokens, "samples": P * m,
        "new_tokens": int(pool["new_tokens"].sum()), "ended": float(pool["ended"].mean()),
        "sampling_s": drawn.sampling_s, "gold_scoring_s": drawn.scoring_s,
        "proxy_scoring_s": scoring,
        "tokens_per_s": float(pool["new_tokens"].sum() / drawn.sampling_s),
    }
    return BestOfN(pd.DataFrame(rows), pd.DataFrame(prompt_rows), pool, record)


def _se(values_P: np.ndarray) -> float:
    """The standard error of a mean over prompts (NaN for one prompt)."""
    return float(values_P.std(ddof=1) / np.sqrt(len(values_P))) if len(values_P) > 1 else np.nan


def write_bon(out_dir: Path, result: BestOfN, options: dict[str, Any]) -> None:
    """`bon.parquet`, `bon_prompts.parquet`, `pool.parquet` and `bon.json` (the record and
    `options`, the command's settings) into `out_dir`, which must exist."""
    result.table.to_parquet(out_dir / TABLE, index=False)
    result.prompts.to_parquet(out_dir / PROMPTS_TABLE, index=False)
    result.pool.to_parquet(out_dir / POOL, index=False)
    record = {**result.record, "options": options}
    (out_dir / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
