"""`stage.init_from`: start a run from another run's parameters, with the parent's tokenizer.

The parent is a run directory: its `summary.json` says its shape, tokenizer and data; its
checkpoints (or its group's, for a replica) hold the parameters. Nothing is trained here: a
parent that does not fit the child (another shape, another tokenizer, no checkpoint) is a
one-line `ConfigError` naming both values, before any data is read or any step is taken.

`stage.init_from=hf:DIR` names a Hugging Face GPT-2 checkpoint instead (one written by
`scaling-export`, or any GPT-2 on disk; `scaling.hf` reads it): an `HFParent`, for
stage=finetune and stage=sft. Its shape comes from its config.json and its tokenizer from its
tokenizer.json; the run's model.* and data.tokenizer/data.vocab_size must say the same, and
where they do not, one line lists every override that would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scaling.checkpoint import Checkpointer
from scaling.config import Config, ConfigError, DataConfig, to_dict
from scaling.data import Dataset
from scaling.data.shards import open_dataset, tokenizer_dataset
from scaling.hf import HF_PREFIX, read_checkpoint
from scaling.record import read_summary

# The model keys a child must share with its parent: the parameters' shapes depend on them.
SHAPE_KEYS = ("n_layer", "d_model", "n_head", "n_ctx", "d_ff")
HF_STAGES = ("finetune", "sft")  # the stages that may start from a Hugging Face checkpoint


@dataclass(frozen=True)
class Parent:
    """A trained run, loaded: the one a stage starts from, or one to sample from."""

    run_dir: Path
    summary: dict[str, Any]
    step: int  # the checkpoint its parameters come from
    params: Any  # float32 host arrays, the model's tree

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    def record(self) -> dict[str, Any]:
        """What the child's summary says of its parent."""
        return {"parent_run": self.run_id, "parent_step": self.step,
                "parent_tokens": self.summary.get("tokens"),
                "parent_n_params_nonembed": self.summary.get("n_params_nonembed")}

    def init_params(self) -> Any:
        """The parent's parameters as device arrays: a child's initialisation."""
        return jax.tree_util.tree_map(jnp.asarray, self.params)

    def tokenizer_dataset(self) -> Dataset:
        """The dataset whose tokenizer the parent used (and the child inherits)."""
        source = self.summary.get("tokenizer_source") or {
            "cache": self.summary["corpus_cache"], "data": self.summary["config"]["data"]}
        return open_dataset(DataConfig(**source["data"]), source["cache"])

    def dataset(self) -> Dataset | None:
        """The parent's own corpus (train and validation splits), where it trained on one."""
        if "corpus_cache" not in self.summary:
            return None
        return open_dataset(DataConfig(**self.summary["config"]["data"]),
                            self.summary["corpus_cache"])


@dataclass(frozen=True)
class HFParent(Parent):
    """A Hugging Face GPT-2 checkpoint as a parent (`stage.init_from=hf:DIR`): parameters and
    tokenizer, no run record, no corpus of its own."""

    tokens: Dataset | None = None  # no documents: the tokenizer, as a cache to inherit from

    @property
    def run_id(self) -> str:
        return f"{HF_PREFIX}{self.run_dir}"

    def record(self) -> dict[str, Any]:
        return {"parent_run": self.run_id, "parent_step": None, "parent_tokens": None,
                "parent_n_params_nonembed": None,
                "parent_vocab_padding": self.summary["vocab_padding"]}

    def tokenizer_dataset(self) -> Dataset:
        return self.tokens

    def dataset(self) -> Dataset | None:
        return None


def load_parent(cfg: Config) -> Parent:
    """The parent run `stage.init_from` names, checked against `cfg`, with its parameters;
    `hf:DIR` a Hugging Face checkpoint (`load_hf_parent`).

    Raises ConfigError (one line) for a missing directory, one without a run record or
    checkpoint, or a parent of another model shape or tokenizer than `cfg`'s.
    """
    if cfg.stage.init_from.startswith(HF_PREFIX):
        return load_hf_parent(cfg)
    run_dir = Path(cfg.stage.init_from)
    where = f"stage.init_from={cfg.stage.init_from}"
    summary = _run_record(run_dir, where)
    _check_fits(cfg, summary["config"], where)
    return load_run(run_dir, cfg.stage.init_step, where=where, step_key="stage.init_step",
                    summary=summary)


def load_run(run_dir: Path, step: str = "latest", *, where: str | None = None,
             step_key: str = "step", summary: dict[str, Any] | None = None) -> Parent:
    """A run directory's record and its parameters at `step` (latest, best or a step number),
    without a config to check them against (a sampler's). `where` and `step_key` name the
    directory and the step in errors; `summary`, where already read, saves reading it again.

    Raises ConfigError (one line) for a missing directory, one without a run record, or no
    checkpoint of that step.
    """
    where = where or str(run_dir)
    summary = _run_record(run_dir, where) if summary is None else summary
    checkpoints, replica = _checkpoints(run_dir, summary)
    step = _step(step, checkpoints, summary, where, step_key)
    params = checkpoints.read_params(step)
    if replica is not None:  # a group's checkpoint holds every replica: [K, ...]
        params = {k: _take(v, replica) for k, v in params.items()}
    return Parent(run_dir, summary, step, params)


def load_hf_parent(cfg: Config) -> HFParent:
    """The Hugging Face GPT-2 checkpoint `stage.init_from=hf:DIR` names, with its tokenizer
    cached as a dataset of no documents, checked against `cfg`.

    Raises ConfigError (one line) for another stage than finetune or sft, a stage.init_step
    (a checkpoint holds one set of weights), or a model shape or tokenizer other than `cfg`'s
    (listing the overrides that match it); CheckpointFormatError for what `read_checkpoint`
    refuses.
    """
    where = f"stage.init_from={cfg.stage.init_from}"
    if cfg.stage.kind not in HF_STAGES:
        raise ConfigError(f"{where}: stage={cfg.stage.kind} cannot start from a Hugging Face "
                          f"checkpoint, only stage={' or stage='.join(HF_STAGES)}")
    if cfg.stage.init_step != "latest":
        raise ConfigError(f"stage.init_step={cfg.stage.init_step} with {where}: a Hugging Face "
                          "checkpoint holds one set of weights (leave stage.init_step=latest)")
    checkpoint = read_checkpoint(Path(cfg.stage.init_from.removeprefix(HF_PREFIX)))
    tokenizer = checkpoint.tokenizer
    data = {"tokenizer": checkpoint.tokenizer_kind, "vocab_size": tokenizer.vocab_size}
    theirs = {**{f"model.{k}": v for k, v in checkpoint.shape.items()},
              **{f"data.{k}": v for k, v in data.items()}}
    ours = {**{f"model.{k}": getattr(cfg.model, k) for k in SHAPE_KEYS},
            "data.tokenizer": cfg.data.tokenizer,
            "data.vocab_size": cfg.data.vocab_size if cfg.data.tokenizer == "bpe" else 256}
    ours["model.d_ff"] = ours["model.d_ff"] or 4 * cfg.model.d_model
    if theirs["data.tokenizer"] == "bytes":
        del theirs["data.vocab_size"], ours["data.vocab_size"]
    differ = [k for k in theirs if theirs[k] != ours[k]]
    if differ:
        raise ConfigError(
            f"{where} is a GPT-2 of {' '.join(f'{k}={v}' for k, v in theirs.items())}; this "
            f"run has {' '.join(f'{k}={ours[k]}' for k in differ)}: add those overrides to "
            "start from its weights")
    tokens = tokenizer_dataset(tokenizer, checkpoint.directory / "tokenizer.json",
                               cfg.data.cache_dir)
    summary = {"config": {"model": checkpoint.shape, "data": data},
               "vocab_size": tokenizer.vocab_size, "vocab_padding": checkpoint.padding,
               "tokenizer_source": {"cache": tokens.cache_path.name, "data": to_dict(cfg.data)}}
    return HFParent(checkpoint.directory.absolute(), summary, 0, checkpoint.params, tokens)


def _run_record(run_dir: Path, where: str) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise ConfigError(f"{where} is not a directory: expected a run directory")
    summary = read_summary(run_dir)
    if summary is None or "config" not in summary:
        raise ConfigError(f"{where} holds no run record (summary.json): expected a run directory")
    return summary


def _take(tree: Any, i: int) -> Any:
    return {k: _take(v, i) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(
        tree)[i]


def _check_fits(cfg: Config, parent: dict[str, Any], where: str) -> None:
    """A child must have its parent's shape and tokenizer, and a causal child a causal parent:
    name both values where not."""
    if cfg.model.causal and not parent["model"].get("causal", True):
        raise ConfigError(
            f"{where} is a masked LM (model.causal=false): stage={cfg.stage.kind} trains a "
            "causal model, and only stage=mlm starts from a bidirectional one")
    for key in SHAPE_KEYS:
        if getattr(cfg.model, key) != parent["model"][key]:
            raise ConfigError(
                f"model.{key}={getattr(cfg.model, key)} differs from the parent's "
                f"{parent['model'][key]} ({where}): a run starts from parameters of its own shape")
    ours = (cfg.data.tokenizer, cfg.data.vocab_size if cfg.data.tokenizer == "bpe" else 256)
    data = parent["data"]
    theirs = (data["tokenizer"], data["vocab_size"] if data["tokenizer"] == "bpe" else 256)
    if ours != theirs:
        raise ConfigError(
            f"data.tokenizer={ours[0]} data.vocab_size={ours[1]} differs from the parent's "
            f"{theirs[0]} {theirs[1]} ({where}): the child inherits its parent's tokenizer")


def _checkpoints(run_dir: Path, summary: dict[str, Any]) -> tuple[Checkpointer, int | None]:
    """The parent's checkpoints, and its index in them when it is a replica of a group."""
    group = summary.get("replica_group")
    directory = (run_dir.parent / group if group else run_dir) / "checkpoints"
    return Checkpointer(directory, keep=1, create=False), summary.get("replica") if group else None


def _step(init_step: str, checkpoints: Checkpointer, summary: dict[str, Any], where: str,
          step_key: str) -> int:
    steps = checkpoints.steps()
    if not steps:
        raise ConfigError(f"{where} has no checkpoint to start from ({checkpoints.directory})")
    wanted = {"latest": max(steps), "best": summary.get("best_val_step")}.get(init_step)
    wanted = int(init_step) if wanted is None and init_step.isdigit() else wanted
    if wanted not in steps:
        raise ConfigError(
            f"{step_key}={init_step} is step {wanted}, which {where} has no checkpoint of: "
            f"it keeps steps {', '.join(map(str, steps))} (train.keep_checkpoints)")
    return wanted
