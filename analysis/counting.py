"""Counting conventions: what N and C mean in a fit, chosen when analysing, not when training.

Kaplan et al. 2020 found N_opt ∝ C^0.73 and Hoffmann et al. 2022 C^0.50; Porian et al. 2024
and Pearce & Song 2024 traced most of the gap to what is counted (numbers in
../shared/reference/SCALING_FACTS.md). Every run record carries its parameters by part
(`scaling.flops.count_fields`), so one table gives N and C under each convention:

- `kaplan`: N = non-embedding parameters (`n_params_nonembed`); C = 6·N·D. Kaplan et al.
  2020; Porian et al.'s "Kaplan counting".
- `standard`: N = non-embedding parameters + the unembedding, vocab·d_model
  (`n_params_nonembed + n_params_unembed`, counted whether or not it is tied to the token
  embedding); C = 6·N·D. Porian et al.'s "standard" counting (the last layer counted).
- `total`: N = every parameter (`n_params`: embeddings too, the unembedding once when tied);
  C = 6·N·D. Hoffmann et al. 2022 (Chinchilla) and Pearce & Song's "total".

None of them counts the attention term (Porian excludes it in both of theirs). This module
is the one owner of the rule: the fitters, `scaling-fit --count` and the report all call it.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.table import FLOPS_PER_TOKEN, FitInputError


@dataclass(frozen=True)
class Convention:
    """N as a sum of record columns, and who published numbers counted this way."""

    name: str
    parts: tuple[str, ...]  # the run table's count columns N sums
    definition: str
    used_by: str


CONVENTIONS: dict[str, Convention] = {
    "kaplan": Convention(
        "kaplan",
        ("n_params_nonembed",),
        "N = non-embedding parameters; C = 6·N·D",
        "Kaplan et al. 2020 (a = 0.73); Porian et al. 2024 step 1 (a = 0.835); Pearce & Song "
        "2024 (a ≈ 0.74–0.77)",
    ),
    "standard": Convention(
        "standard",
        ("n_params_nonembed", "n_params_unembed"),
        "N = non-embedding parameters + the unembedding (vocab·d_model); C = 6·N·D",
        "Porian et al. 2024 steps 2–5 (a = 0.707 with Kaplan's schedule, 0.497 tuned)",
    ),
    "total": Convention(
        "total",
        ("n_params",),
        "N = every parameter (embeddings too; a tied unembedding once); C = 6·N·D",
        "Hoffmann et al. 2022, Chinchilla (a = 0.50); Pearce & Song 2024 (a ≈ 0.46–0.51)",
    ),
}
# What each column holds, for the message naming one a table lacks.
PART_MEANING = {
    "n_params_nonembed": "non-embedding parameters",
    "n_params_unembed": "the unembedding's vocab·d_model parameters",
    "n_params": "every parameter",
}


def convention(name: str) -> Convention:
    """The convention called `name`; FitInputError naming the known ones otherwise."""
    if name not in CONVENTIONS:
        raise FitInputError(
            f"unknown counting convention {name!r} (choose from {', '.join(CONVENTIONS)})"
        )
    return CONVENTIONS[name]


def counted_n(df: pd.DataFrame, name: str) -> pd.Series:
    """N of every row under convention `name`, from the table's count columns (NaN where a
    row lacks one: an old record that could not be recounted).

    Raises FitInputError for an unknown convention, or naming the count column the table
    lacks (tables written before the counts were recorded: rebuild them with
    `scaling-report`, which derives the counts of old records from their config).
    """
    chosen = convention(name)
    missing = [part for part in chosen.parts if part not in df.columns]
    if missing:
        named = ", ".join(f"'{part}' ({PART_MEANING[part]})" for part in missing)
        raise FitInputError(
            f"--count {name} needs column {named}, which the table lacks (a results table "
            "from before the counts were recorded: rebuild it with scaling-report SWEEP_DIR)"
        )
    values = df[list(chosen.parts)].apply(pd.to_numeric, errors="coerce")
    return values.sum(axis=1, min_count=len(chosen.parts)).astype(float)


def recount(
    df: pd.DataFrame,
    name: str,
    *,
    n: str = "N",
    c: str = "C",
    d: str = "D",
    flops_per_token: float = FLOPS_PER_TOKEN,
) -> pd.DataFrame:
    """`df` with column `n` replaced by N under convention `name` (`counted_n`) and `c` by
    C = k·N·D from column `d` (k = `flops_per_token`, 6). Raises FitInputError as
    `counted_n` does, and naming `d` when the table lacks it."""
    N = counted_n(df, name)
    if d not in df.columns:
        raise FitInputError(f"--count {name} computes C = 6·N·D and needs column '{d}' for D")
    D = pd.to_numeric(df[d], errors="coerce").astype(float)
    return df.assign(**{n: N, c: flops_per_token * N * D})


def recount_curves(
    curves: pd.DataFrame,
    runs: pd.DataFrame,
    name: str,
    *,
    run: str = "run_id",
    tokens: str = "tokens",
    flops: str = "flops",
) -> pd.DataFrame:
    """Learning curves with each evaluation's compute recounted, C = 6·N·D at its tokens D,
    N being its run's under convention `name` (from `runs`, keyed by `run`; NaN for a run
    `runs` lacks)."""
    N = pd.Series(counted_n(runs, name).to_numpy(), index=runs[run].to_numpy())
    N = N[~N.index.duplicated()]
    D = pd.to_numeric(curves[tokens], errors="coerce").astype(float)
    return curves.assign(**{flops: FLOPS_PER_TOKEN * curves[run].map(N).astype(float) * D})


def describe(name: str) -> str:
    """One line: the convention's name, its N and C, and who counted this way."""
    chosen = convention(name)
    return f"{chosen.name}: {chosen.definition} ({chosen.used_by})"


def ratio(df: pd.DataFrame, top: str, bottom: str) -> float:
    """The median ratio of N under convention `top` to N under `bottom` over the table's
    rows: how much larger one count is than the other in this study."""
    return float(np.nanmedian(counted_n(df, top) / counted_n(df, bottom)))


def elasticity(df: pd.DataFrame, to: str, frm: str) -> float:
    """e = d ln N_to / d ln N_frm: the least-squares slope of ln N under convention `to` on
    ln N under `frm` over the table's distinct sizes (NaN with fewer than 2). Below 1 when
    `to` adds a part that grows more slowly than N_frm (the embeddings, ∝ d, against
    12·L·d²)."""
    pairs = pd.DataFrame({"to": counted_n(df, to), "frm": counted_n(df, frm)}).dropna()
    pairs = pairs[(pairs > 0).all(axis=1)].drop_duplicates()
    if pairs["frm"].nunique() < 2:
        return float("nan")
    return float(np.polyfit(np.log(pairs["frm"]), np.log(pairs["to"]), 1)[0])


def relabelled_exponent(a: float, e: float) -> float:
    """a of N_opt ∝ C^a after recounting the same optima with N' ∝ N^e and C' = 6·N'·D:
    N' ∝ C^(e·a) and C' ∝ C^(1 + (e − 1)·a), so a' = e·a / (1 + (e − 1)·a). What counting
    alone changes, before any refit (Porian et al. 2024, Pearce & Song 2024)."""
    return e * a / (1 + (e - 1) * a)
