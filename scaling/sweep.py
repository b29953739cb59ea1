"""What makes a sweep idempotent and safe to run from several processes at once.

- A run's directory name is a pure function of its config (`run_id`), so re-launching a sweep
  finds every finished run (and skips it) and every interrupted one (and resumes it).
- A run holds an exclusive lock on its directory while it trains (`exclusive_run`), so two
  workers of the same sweep never train, checkpoint or record the same run at once.
- A run's identity names its corpus by canonical paths (`canonical_path`), so every spelling
  of one corpus gives one run; its contents are checked against the record's fingerprint
  (`corpus_fingerprint`, the record's `corpus_cache`) before a run is skipped or resumed.
- Resolvers derive values from the rest of the config, so a sweep preset states its intent:
  `${isoflop_tokens:}` gives the token budget that spends `train.budget` FLOPs on this model;
  `${width_for_params:N}` gives the d_model that puts this depth at N non-embedding params.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scaling.config import DataConfig, branch_steps

# Keys that may change without changing a run's results (they do not enter its identity).
BOOKKEEPING_FIELDS = frozenset({
    "train.log_every_steps", "train.checkpoint_every_steps", "train.checkpoint_every_seconds",
    "train.keep_checkpoints", "data.cache_dir", "train.compile_cache", "train.compile_cache_dir",
    "train.loggers",
    # where and how many processes train it: the same batches and losses (scaling.distributed)
    "train.distributed.enabled", "train.distributed.coordinator_address",
    "train.distributed.num_processes", "train.distributed.process_id",
    "train.distributed.local_device_ids",
})
# Keys added after runs were first recorded, with their defaults: at its default such a key
# stays out of the identity, so that the runs recorded before it keep their ids and resume.
LATER_FIELDS = {"train.replicas": 1, "train.replica_lr_scales": [], "data.transfer": "none",
                "data.transfer_paths": [], "train.noise_scale_batches": 0,
                "stage.kind": "pretrain", "stage.init_from": None, "stage.init_step": "latest",
                "stage.schedule": "cosine", "stage.freeze.embeddings": False,
                "stage.freeze.blocks": 0, "stage.beta": 0.1,
                "stage.gold_samples": 0, "stage.reward_from": None, "stage.kl_coef": 0.05,
                "stage.clip_range": 0.2, "stage.vf_coef": 0.1, "stage.gamma": 1.0,
                "stage.lam": 0.95, "stage.ppo_epochs": 4, "stage.minibatches": 1,
                "stage.rollout_prompts": 64, "stage.max_new_tokens": 64,
                "stage.gold": "sft_body"}
# Keys holding paths or globs, compared by what they name rather than how they are spelt.
PATH_FIELDS = ("data.paths", "data.transfer_paths", "stage.init_from", "stage.reward_from",
               "data.policy")
IDENTITY_GROUPS = ("model", "data", "train", "stage")
LOCK_FILE = ".lock"
LATER_FIELDS |= {"train.cooldown_fraction": 0.2, "train.cooldown_shape": "linear",
                 "train.cooldowns": []}
LATER_FIELDS |= {"data.path": None, "data.text_column": "text"}
PATH_FIELDS += ("data.path",)
LATER_FIELDS |= {"model.causal": True, "stage.mask_rate": 0.15,
                 "stage.allow_objective_change": False, "train.eval_mask_rate": None}
LATER_FIELDS |= {"data.policy": None, "data.comparison_samples": 4,
                 "data.comparison_prompts": "train", "data.comparison_gold": "sft_body",
                 "data.comparison_max_new_tokens": 0, "data.comparison_label_temperature": 0.0,
                 "data.comparison_seed": 0}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys: {"model": {"d_model": 64}} -> model.d_model."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def canonical_path(path: str) -> str:
    """A corpus path or glob as one string however it is spelt: absolute, with `~`, `.`, `..`
    and symlinks resolved against the current directory (the one `scaling-train` was started
    in; Hydra keeps it, `hydra.job.chdir=false`, and the local launcher's runs inherit it). An
    absolute path without symlinks is unchanged, so the ids of runs recorded with one are too.
    A Hugging Face checkpoint's `hf:DIR` (stage.init_from) keeps its prefix."""
    if path.startswith("hf:"):
        return "hf:" + canonical_path(path.removeprefix("hf:"))
    return os.path.realpath(os.path.expanduser(path))


def canonical_data(data: DataConfig) -> DataConfig:
    """`data` with its paths canonical (`canonical_path`), so that the corpus read, and the
    names its documents get, do not depend on how the paths were spelt."""
    return replace(data, paths=[canonical_path(p) for p in data.paths],
                   path=None if data.path is None else canonical_path(data.path),
                   transfer_paths=[canonical_path(p) for p in data.transfer_paths],
                   policy=None if data.policy is None else canonical_path(data.policy))


def identity(config: dict) -> dict[str, Any]:
    """The flattened config minus bookkeeping, corpus paths canonical: equal identities mean
    the same run."""
    flat = _schedule_as_recorded_before(
        flatten({k: config[k] for k in IDENTITY_GROUPS if k in config}))
    for key in PATH_FIELDS:
        if isinstance(flat.get(key), list):
            flat[key] = [canonical_path(p) for p in flat[key]]
        elif flat.get(key) is not None:
            flat[key] = canonical_path(flat[key])
    return {k: v for k, v in flat.items()
            if k not in BOOKKEEPING_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def _schedule_as_recorded_before(flat: dict[str, Any]) -> dict[str, Any]:
    """train.warmup and train.schedule in the keys runs were recorded under before them, so
    that their ids stay: a warmup fraction as `train.warmup_fraction` (a number), a token count
    as a whole number (`2e5` and `200000` are one run); a cosine or constant schedule as
    `stage.schedule`, which owned it then. WSD and the warmup rules are new keys."""
    if "train.warmup" in flat:
        from scaling.config import ConfigError, parse_warmup

        try:
            warmup = parse_warmup(flat["train.warmup"])
        except ConfigError:  # a record's own value, left as it is
            warmup = None
        if warmup is not None:
            del flat["train.warmup"]
            key = "train.warmup_fraction" if warmup.kind == "fraction" else "train.warmup"
            flat[key] = {"fraction": warmup.value, "tokens": int(warmup.value)}.get(
                warmup.kind, warmup.kind)
    if flat.get("train.schedule") in ("cosine", "constant"):
        flat["stage.schedule"] = flat.pop("train.schedule")
    return flat


def corpus_fingerprint(data: DataConfig, tokenizer_from: str | None = None) -> str:
    """The content hash of the corpus `data` names, as a run records it (`corpus_cache`: the
    name of its token cache), from reading the corpus alone: no tokenizer, no JAX.
    `tokenizer_from` is the cache whose tokenizer a fine-tune inherits (`tokenizer_cache` of
    its parent's record)."""
    from scaling.data.shards import _cache_name, cache_root
    from scaling.data.sources import read_corpus

    data = canonical_data(data)
    corpus = read_corpus(data.source, data.paths, cache_root(data.cache_dir), data.path,
                         data.text_column)
    return _cache_name(data, corpus, tokenizer_from)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def run_id(config: dict) -> str:
    """A readable name plus a short hash of the run's identity: `L2-d64-T64-D200k-s0-1a2b3c4d`
    (`...-s0-x8-...` for a group of 8 replicas, `...-s0-trunk-...` for a WSD trunk: their
    models are runs of their own; `...-s0-mlm0.15-...` for a masked LM at its mask rate)."""
    m, t = config["model"], config["train"]
    digest = hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()
    readable = f"L{m['n_layer']}-d{m['d_model']}-T{m['n_ctx']}-D{_si(t['tokens'])}-s{t['seed']}"
    if t.get("replicas", 1) > 1:
        readable += f"-x{t['replicas']}"
    if t.get("cooldowns"):  # a WSD trunk: its branches are runs of their own
        readable += "-trunk"
    stage = config.get("stage") or {}
    if stage.get("kind") == "mlm":  # beside causal runs of the same shape in a study
        readable += f"-mlm{stage.get('mask_rate', 0.15):g}"
    return f"{readable}-{digest[:8]}"


def _job_config(root: DictConfig) -> dict:
    return {k: OmegaConf.to_container(root[k], resolve=True) for k in IDENTITY_GROUPS if k in root}


def planned_vocab(data: Any, stage: Any | None = None) -> int:
    """The vocabulary a run will have, before it runs: its parent's (`stage.init_from`, whose
    tokenizer it inherits), else 256 bytes or the BPE's data.vocab_size."""
    if stage is not None and str(stage.init_from).startswith("hf:"):
        config = Path(stage.init_from.removeprefix("hf:")) / "config.json"
        if config.is_file():
            return int(json.loads(config.read_text("utf-8"))["vocab_size"])
    if stage is not None and stage.init_from is not None:
        from scaling.record import read_summary

        parent = read_summary(Path(stage.init_from))
        if parent is not None and "vocab_size" in parent:  # a masked LM's: its tokenizer's
            return int(parent.get("tokenizer_vocab_size", parent["vocab_size"]))
    return 256 if data.tokenizer == "bytes" else int(data.vocab_size)


def planned_model_vocab(data: Any, stage: Any | None = None) -> int:
    """The vocabulary of the model a run will build: its tokenizer's (`planned_vocab`), and a
    masked LM's [MASK] token after it (`scaling.masking.mask_token_id`)."""
    from scaling.config import MASKED_STAGES

    vocab = planned_vocab(data, stage)
    return vocab + 1 if stage is not None and stage.get("kind") in MASKED_STAGES else vocab


def _shape(root: DictConfig):
    """The model of a (resolved) run config, for counting its FLOPs before it runs."""
    from scaling.model import model_shape

    return model_shape(root.model, planned_model_vocab(root.data, root.get("stage")))


def isoflop_tokens(*, _root_: DictConfig) -> int:
    """Tokens that spend `train.budget` FLOPs on this model, rounded to whole steps."""
    from scaling.flops import flops_per_token

    t = _root_.train
    if t.budget is None:
        raise ValueError("${isoflop_tokens:} needs train.budget (FLOPs) to be set")
    tokens_per_step = t.batch_size * _root_.model.n_ctx
    steps = max(1, round(float(t.budget) / flops_per_token(_shape(_root_)) / tokens_per_step))
    return steps * tokens_per_step


def planned_flops(root: DictConfig) -> int:
    """Training FLOPs a run config will spend (what the launcher's ETA is weighted by)."""
    from scaling.flops import flops_per_token

    t = root.train
    tokens_per_step = int(t.batch_size) * int(root.model.n_ctx)
    models = int(t.get("replicas", 1))
    steps = int(t.tokens) // tokens_per_step
    if t.get("cooldowns"):  # a WSD trunk and its branches' cooldowns
        trunk, branches = branch_steps([int(d) for d in t.cooldowns], tokens_per_step,
                                       float(t.cooldown_fraction))
        steps = trunk + sum(end - start for start, end in branches)
    return models * steps * tokens_per_step * flops_per_token(_shape(root))


def width_for_params(n_params: float, multiple: int = 16, *, _root_: DictConfig) -> int:
    """d_model (a multiple of `multiple`) giving 12·n_layer·d² ≈ n_params at this depth."""
    d = math.sqrt(float(n_params) / (12 * _root_.model.n_layer))
    return max(multiple, round(d / multiple) * multiple)


def register_resolvers() -> None:
    """Make `${run_id:}`, `${isoflop_tokens:}` and `${width_for_params:N}` usable in configs."""
    resolvers = {
        "run_id": lambda *, _root_: run_id(_job_config(_root_)),
        "isoflop_tokens": isoflop_tokens,
        "width_for_params": width_for_params,
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


@contextmanager
def exclusive_run(run_dir: Path, process: int = 0) -> Iterator[bool]:
    """Yield True while this process alone holds the run, False if another process does.

    The lock is an flock on a file in the run directory: the kernel drops it when the holder
    exits, killed or not, so a crashed worker never leaves a run locked. Process i > 0 of a
    multi-process run (`scaling.distributed`) holds a lock of its own, `.lock.<i>`, which
    another launch's process i finds taken.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = LOCK_FILE if process == 0 else f"{LOCK_FILE}.{process}"
    fd = os.open(run_dir / name, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
