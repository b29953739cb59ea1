"""Results tables in, checked canonical columns out: every fit fails early, naming the problem.

Runs of different corpora or tokenizers are never fitted together: their losses are in
different units (nats per token of a different vocabulary, on different text). `select`
refuses rows of more than one `corpus_cache`; `pretraining_scope` picks the rows a study of
pretraining laws may pool, one corpus of pretraining runs, and says what it left out.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CANONICAL = ("N", "D", "C", "S", "loss", "run", "stage", "parent", "status", "corpus")
FLOPS_PER_TOKEN = 6.0  # training C ≈ 6·N·D (Kaplan 2020, Hoffmann 2022)
# A run's corpus as its record names it: source, tokenizer and content hash
# (`stdlib-bpe4096-391502949643341d`), so two tokenizers of one text are two corpora.
CORPUS = "corpus_cache"
STAGE = "stage"  # pretrain | finetune | sft
PRETRAIN = "pretrain"
UNRECORDED = "(not recorded)"  # the corpus of a completed run whose record names none
SHOWN = 6  # values an error names before "and N more"


class FitInputError(ValueError):
    """A table or request a fit cannot use; the message names the column, value or count."""


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet results table, so users' own tables work as well as ours."""
    path = Path(path)
    if not path.is_file():
        raise FitInputError(f"no such file: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix.lower() in (".csv", ".txt"):
        return pd.read_csv(path)
    raise FitInputError(f"unsupported table format {path.suffix!r} (use .csv or .parquet)")


def select(
    df: pd.DataFrame,
    required: Iterable[str],
    columns: Mapping[str, str] | None = None,
    positive: Iterable[str] | None = None,
    one_corpus: bool = True,
) -> pd.DataFrame:
    """Rename the user's columns to canonical names and check them, so fitters can trust them.

    `columns` maps a canonical name (N, D, C, S, loss, run, or any other) to the table's
    column; unmapped names are looked up as themselves. Numeric required columns other
    than `run` must be finite and, unless `positive` says otherwise, strictly positive.
    Raises FitInputError naming the column when one is missing or holds a bad value, and
    when the table has a `corpus_cache` column holding more than one value in `df`'s rows
    (runs of several corpora or tokenizers, which no law pools; a row without a value, such
    as a run that failed before reading its data, is not counted as a corpus of its own)
    unless `one_corpus` is False (transfer compares runs of two corpora by design).
    """
    columns = dict(columns or {})
    required = list(required)
    missing = [name for name in required if columns.get(name, name) not in df.columns]
    if missing:
        names = [
            f"'{columns.get(n, n)}'" + ("" if columns.get(n, n) == n else f" (for {n})")
            for n in missing
        ]
        shown = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise FitInputError(f"missing column {shown} (columns: {', '.join(map(str, df.columns))})")
    if one_corpus and CORPUS in df.columns:
        corpora = sorted(map(str, df[CORPUS].dropna().unique()))
        if len(corpora) > 1:
            shown = ", ".join(corpora[:SHOWN]) + (
                f" and {len(corpora) - SHOWN} more" if len(corpora) > SHOWN else ""
            )
            raise FitInputError(
                f"column '{CORPUS}' holds {len(corpora)} corpora ({shown}): runs of different "
                "corpora or tokenizers are not fitted together; fit one at a time "
                f"(scaling-fit --query \"{CORPUS} == '{corpora[0]}'\")"
            )
    out = pd.DataFrame({name: df[columns.get(name, name)].to_numpy() for name in required})
    checked = [n for n in required if n != "run"] if positive is None else list(positive)
    for name in checked:
        col = columns.get(name, name)
        values = pd.to_numeric(out[name], errors="coerce").to_numpy(dtype=float)
        if np.isnan(values).any() and not pd.api.types.is_numeric_dtype(out[name]):
            raise FitInputError(f"column '{col}' is not numeric")
        if not np.isfinite(values).all():
            raise FitInputError(f"column '{col}' has missing or non-finite values")
        if (values <= 0).any():
            raise FitInputError(f"column '{col}' has non-positive values")
        out[name] = values
    return out


def derive(df: pd.DataFrame, target: str, flops_per_token: float = FLOPS_PER_TOKEN) -> pd.DataFrame:
    """Add D = C/(k·N) or C = k·N·D, the convention Epoch and Chinchilla use when one is absent."""
    if target not in ("D", "C"):
        raise FitInputError(f"can derive 'D' or 'C', not {target!r}")
    if target in df.columns:
        raise FitInputError(f"column '{target}' already present; not deriving it")
    out = df.copy()
    if target == "D":
        out["D"] = out["C"] / (flops_per_token * out["N"])
    else:
        out["C"] = flops_per_token * out["N"] * out["D"]
    return out


def require_points(law: str, n_points: int, n_params: int) -> None:
    """Refuse fits with no residual degrees of freedom: their errors would be meaningless."""
    if n_points <= n_params:
        raise FitInputError(f"{law} needs >= {n_params + 1} points, got {n_points}")


@dataclass(frozen=True)
class Scope:
    """The rows of a results table that a study of pretraining laws fits, and what it left out.

    `runs`: every row (any status) of the pretraining runs on `corpus`; `corpus`: the chosen
    `corpus_cache` value (None when the table has no such column, or no completed
    pretraining run to choose by: then `runs` holds every pretraining row); `chosen`: whether the
    caller named it; `corpora`: completed pretraining runs per corpus, largest first (ties:
    by name); `stages`: completed runs per other stage, all left out.
    """

    runs: pd.DataFrame
    corpus: str | None
    chosen: bool
    corpora: dict[str, int]
    stages: dict[str, int]

    @property
    def completed(self) -> int:
        """Completed runs among `runs`: the runs fitted."""
        runs = self.runs
        return int((runs["status"] == "completed").sum()) if "status" in runs else len(runs)

    @property
    def left_out(self) -> dict[str, int]:
        """Completed pretraining runs per corpus not fitted."""
        return {name: n for name, n in self.corpora.items() if name != self.corpus}


def pretraining_scope(results: pd.DataFrame, corpus: str | None = None) -> Scope:
    """The pretraining runs of one corpus: the rows a study of pretraining laws may pool.

    A run is pretraining when its `stage` is "pretrain" or not recorded (no `stage` column,
    or a row without one: users' own tables, records that predate stages); fine-tuned and
    SFT runs answer other questions and are left out. Runs of several `corpus_cache` values
    are never pooled: `corpus` picks one; by default the one with the most completed
    pretraining runs (ties: the first by name). A pretraining run without a `corpus_cache`
    where the column exists belongs to the corpus "(not recorded)". Only `status ==
    "completed"` runs are counted and choose (every row counts without a `status` column).

    Raises FitInputError, naming the corpora there are, when `corpus` is not one of the
    completed pretraining runs' or the table has no `corpus_cache` column to choose by.
    """
    results = results.reset_index(drop=True)
    stage = results[STAGE] if STAGE in results else pd.Series(PRETRAIN, index=results.index)
    pretraining = stage.isna() | (stage == PRETRAIN)
    done = (results["status"] == "completed") if "status" in results else stage.notna() | True
    stages = {str(k): int(n) for k, n in stage[done & ~pretraining].value_counts().items()}
    pretrain = results[pretraining]
    if CORPUS not in results:
        if corpus is not None:
            raise FitInputError(
                f"no column '{CORPUS}' to choose corpus {corpus!r} by: the runs record no corpus"
            )
        return Scope(pretrain, None, False, {}, stages)
    label = pretrain[CORPUS].astype(object).fillna(UNRECORDED).astype(str)
    counts = label[done[pretraining]].value_counts()
    corpora = {
        str(name): int(counts[name]) for name in sorted(counts.index, key=lambda c: (-counts[c], c))
    }
    if corpus is not None and corpus not in corpora:
        known = ", ".join(f"{name} ({n} runs)" for name, n in list(corpora.items())[:SHOWN])
        raise FitInputError(
            f"no completed pretraining run on corpus {corpus!r}; "
            + (f"corpus_cache values: {known}" if known else "the table has none at all")
        )
    if not corpora:  # nothing completed: the study reports its runs, fitting none
        return Scope(pretrain, None, False, corpora, stages)
    chosen = corpus if corpus is not None else next(iter(corpora))
    return Scope(pretrain[label == chosen], chosen, corpus is not None, corpora, stages)


@dataclass(frozen=True)
class Cost:
    """What a study's runs cost in training FLOPs, and what the same runs would have cost
    trained independently: they differ where WSD cooldown branches share a trunk."""

    spent: float  # every run's own `flops`, plus each WSD trunk's `trunk_flops` once
    independent: float  # every run's `C`: a branch's whole path, as if trained alone
    branches: int  # runs that are cooldown branches (`branch_of` set)
    trunks: int  # the distinct trunks they branch from

    @property
    def share(self) -> float:
        """spent / independent (1 for a study without branches)."""
        return self.spent / self.independent if self.independent else float("nan")


def study_cost(results: pd.DataFrame) -> Cost:
    """The training FLOPs a results table's runs spent and would have spent as independent
    runs (`Cost`). A cooldown branch's record (`scaling.branches`) holds `flops` (its cooldown
    only), `path_flops` (its trunk prefix and cooldown: the table's `C`) and `trunk_flops` (its
    trunk's whole cost, shared by the trunk's branches, `branch_of`); any other run's `flops`
    is both. Rows without FLOPs (failed before training) count 0."""
    if "flops" not in results and "C" not in results:
        return Cost(0.0, 0.0, 0, 0)
    own = pd.to_numeric(results["flops" if "flops" in results else "C"], errors="coerce")
    whole = pd.to_numeric(results["C"], errors="coerce") if "C" in results else own
    spent, independent = float(own.fillna(0).sum()), float(whole.fillna(0).sum())
    if "branch_of" not in results or "trunk_flops" not in results:
        return Cost(spent, independent, 0, 0)
    branches = results[results["branch_of"].notna()]
    trunks = branches.drop_duplicates("branch_of")
    spent += float(pd.to_numeric(trunks["trunk_flops"], errors="coerce").fillna(0).sum())
    return Cost(spent, independent, len(branches), len(trunks))

