"""The comparisons a stage trains on (stage=reward, dpo): JSONL files (`data=comparisons`), or
a policy's own samples gold-labelled by the run itself (`data=policy_comparisons`).

`data=policy_comparisons` is `scaling-compare` as a cached data source: the run samples
`data.comparison_samples` responses to each of the policy's prompts (`data.policy`, an SFT
run; `scaling.rlhf.collect`), scores them with the gold reward and labels every pair. The
collection is keyed by the policy's checkpoint (its parameters' bytes), its tokenizer and
prompts, and the settings; it is written once into the data cache
(`<cache>/policy-comparisons-<key>/`: comparisons.jsonl, samples.jsonl, meta.json) under a
lock, so the reward models of a study, started at once, share one collection and a re-run
reads it back. The key is the run's data fingerprint (`comparisons_source`): a policy trained
again into other parameters is another collection, and a completed reward model on the old
one is refused (or trained again with SCALING_RESTART_ON_DATA_CHANGE=1), as for a corpus.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaling.config import DataConfig
from scaling.data.shards import cache_root
from scaling.rlhf.bon import tokenizer_key
from scaling.rlhf.collect import PromptChoice, collect, policy_prompts, write_samples
from scaling.rlhf.comparisons import Comparison, read_comparisons, write_comparisons
from scaling.rlhf.gold import gold_reward
from scaling.rlhf.windows import read_comparison_files

log = logging.getLogger("scaling")

# Bump when what a collection holds for the same key changes (sampling, labelling, files).
COLLECTION_VERSION = 1
PREFIX = "policy-comparisons-"
COMPARISONS, SAMPLES, META = "comparisons.jsonl", "samples.jsonl", "meta.json"


@dataclass(frozen=True)
class ComparisonSource:
    """Comparisons, what the run's record says of where they came from, and the fingerprints
    its completion is checked against."""

    comparisons: list[Comparison]
    record: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


def read_comparison_data(data: DataConfig) -> ComparisonSource:
    """The comparisons `data` names: data.paths' files (source=comparisons) or the cached
    collection of data.policy's samples (source=policy_comparisons, `policy_comparisons`).

    Raises DataError or ConfigError (one line) as the files or the policy run are bad."""
    if data.source == "policy_comparisons":
        return policy_comparisons(data)
    return ComparisonSource(read_comparison_files(data.paths))


def params_digest(params: Any) -> str:
    """A hash of a parameter tree's leaves (their paths, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for path, leaf in sorted(_leaves(params, ""), key=lambda item: item[0]):
        array = np.ascontiguousarray(leaf)
        h.update(f"{path}:{array.shape}:{array.dtype};".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _leaves(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [item for key, value in tree.items() for item in _leaves(value, f"{prefix}/{key}")]
    return [(prefix, tree)]


def collection_key(policy_digest: str, tokenizer: str, examples: list[Any],
                   data: DataConfig) -> str:
    """16 hex digits naming one collection: the policy's parameters and tokenizer, the prompts
    and references it is asked about, and every setting that changes what is drawn."""
    settings = {"version": COLLECTION_VERSION, "policy": policy_digest, "tokenizer": tokenizer,
                "samples": data.comparison_samples, "prompts": data.comparison_prompts,
                "gold": data.comparison_gold, "max_new_tokens": data.comparison_max_new_tokens,
                "label_temperature": data.comparison_label_temperature,
                "seed": data.comparison_seed}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for e in examples:
        for part in (e.name, e.prompt, e.response):
            encoded = part.encode("utf-8")
            h.update(len(encoded).to_bytes(8, "little") + encoded)
    return h.hexdigest()[:16]


def policy_comparisons(data: DataConfig) -> ComparisonSource:
    """The gold-labelled comparisons of data.policy's own samples: read from the data cache,
    or collected into it first (one process collects, the others wait on its lock and read).

    Raises ConfigError (one line) where data.policy is no run with a checkpoint, UsageError
    where no prompt of the split leaves room for the samples."""
    from scaling.stages.parent import load_run  # the stages import this module

    where = f"data.policy={data.policy}"
    policy = load_run(Path(data.policy), where=where)
    choice = PromptChoice.parse(data.comparison_prompts)
    examples = policy_prompts(policy, choice)
    key = collection_key(params_digest(policy.params), tokenizer_key(policy.summary), examples,
                         data)
    path = cache_root(data.cache_dir) / f"{PREFIX}{key}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        reused = (path / META).is_file()
        if not reused:
            _collect_into(path, policy, examples, choice, data)
    meta = json.loads((path / META).read_text("utf-8"))
    log.info("%d comparisons of %s's samples %s %s", meta["comparisons"], policy.run_id,
             "read from" if reused else "collected into", path)
    record = {"comparisons_policy": policy.run_id, "comparisons_policy_step": policy.step,
              "comparisons_collection": path.name, "comparisons_reused": reused,
              "comparisons_stats": meta}
    return ComparisonSource(read_comparisons(path / COMPARISONS), record,
                            {"comparisons_source": path.name})


def _collect_into(path: Path, policy: Any, examples: list[Any], choice: PromptChoice,
                  data: DataConfig) -> None:
    """Sample, score and label (`collect`), then write the collection's files into `path`;
    meta.json last, so that a collection killed half-way is collected again."""
    log.info("collecting comparisons of %s: %d samples per %s prompt into %s", policy.run_id,
             data.comparison_samples, choice.split, path)
    collection = collect(policy, examples, choice, gold_reward(data.comparison_gold),
                         n=data.comparison_samples,
                         max_new_tokens=data.comparison_max_new_tokens or None,
                         label_temperature=data.comparison_label_temperature,
                         seed=data.comparison_seed)
    path.mkdir(exist_ok=True)
    write_comparisons(path / COMPARISONS, collection.comparisons)
    write_samples(path / SAMPLES, collection.prompts)
    meta = {**collection.stats(), "policy_run": str(policy.run_dir), "policy_step": policy.step,
            "max_new_tokens": collection.max_new_tokens}
    tmp = path / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
    tmp.replace(path / META)  # whole or absent
