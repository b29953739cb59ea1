"""Causal and masked LM on one grid (issue 19): which run is which objective, the laws fitted
per objective, the like-for-like table and the mask-rate rows. DataFrames in, `LawFit`s and
DataFrames out; `analysis.mlm.section` shows them.

An objective is "causal" (stage `pretrain`, or no stage recorded) or "masked@<rate>" (stage
`mlm` at its `mask_rate`). Each objective's own validation loss is a different quantity (next
token from the left; hidden tokens from both sides of a corrupted window: docs/mlm.md), so only
the fitted exponents compare across objectives. `masked_positions_loss` (when the runs record
it) scores every run on the same held-out tokens, the ones BERT's fixed 15 % validation
corruption chooses: that one number compares across objectives.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.allocation import Allocation, compute_optimal
from analysis.kaplan.constants import D_LEVEL_RATIO, N_LEVEL_RATIO
from analysis.kaplan.fits import LawFit, guarded
from analysis.kaplan.tables import levels
from analysis.registry import fit_law
from analysis.result import jsonable
from analysis.table import CORPUS, PRETRAIN, STAGE, UNRECORDED, FitInputError, select

CAUSAL = "causal"
MLM = "mlm"
RATE = "mask_rate"  # the summary's key; the config's `stage.mask_rate` where a record lacks it
LIKE_FOR_LIKE = "masked_positions_loss"
MIN_SIZES = 3  # points a pure power law needs (2 parameters and 1 degree of freedom)
MIN_OFFSET_POINTS = 5  # E + (x_c/x)^α below this leaves E and α trading off: Kaplan's pure form
# fits.json's rows of the side-by-side table: (name, law key, parameter)
QUANTITIES = (
    ("alpha_N", "L(N)", "alpha"),
    ("alpha_D", "L(D)", "alpha"),
    ("alpha", "L(N,D)", "alpha"),
    ("beta", "L(N,D)", "beta"),
    ("E", "L(N,D)", "E"),
    ("a", "N_opt", "a"),
)


def masked(rate: float) -> str:
    """The objective's name of a masked LM at `rate`: `masked@0.15`."""
    return f"masked@{rate:g}"


@dataclass(frozen=True)
class Study:
    """The completed causal and masked runs of one corpus (`runs`, with columns objective and
    mask_rate), the corpus (None without a `corpus_cache` column), the masked objective the
    grid shares with the causal runs (`grid`), and completed runs of other corpora left out."""

    runs: pd.DataFrame
    corpus: str | None
    grid: str | None
    left_out: int


def study_runs(results: pd.DataFrame) -> Study | None:
    """The comparison's runs, or None when `results` holds no completed stage=mlm run.

    Keeps completed causal and masked runs with finite positive N, D and loss, on the corpus
    of the most such masked runs (a comparison pools no corpora). The grid's masked objective
    is the rate with the most runs (ties: the lowest rate); None when no masked run has a
    loss. Raises FitInputError when a masked run records no mask rate.
    """
    stage = results[STAGE] if STAGE in results else pd.Series(PRETRAIN, index=results.index)
    done = results["status"] == "completed" if "status" in results else stage.notna() | True
    is_mlm, is_causal = stage == MLM, stage.isna() | (stage == PRETRAIN)
    if not (done & is_mlm).any():
        return None
    missing = [c for c in ("N", "D", "loss") if c not in results]
    if missing:
        raise FitInputError(f"the results table lacks column(s) {', '.join(missing)}")
    values = results[["N", "D", "loss"]].apply(pd.to_numeric, errors="coerce")
    usable = done & (is_mlm | is_causal) & (np.isfinite(values) & (values > 0)).all(axis=1)
    runs = results[usable].assign(**values[usable])
    corpus, left_out = None, 0
    if CORPUS in runs:
        label = runs[CORPUS].astype(object).fillna(UNRECORDED).astype(str)
        counts = label[runs[STAGE] == MLM].value_counts()
        if len(counts):
            corpus = min(counts.index, key=lambda c: (-counts[c], c))
            left_out = int((label != corpus).sum())
            runs = runs[label == corpus]
    rate = pd.to_numeric(runs.get(RATE, pd.Series(np.nan, runs.index)), errors="coerce")
    if "stage.mask_rate" in runs:
        rate = rate.fillna(pd.to_numeric(runs["stage.mask_rate"], errors="coerce"))
    causal = runs[STAGE].isna() | (runs[STAGE] == PRETRAIN)
    rate = rate.where(~causal)  # a causal run's config still holds the default mask rate
    if (~causal & rate.isna()).any():
        raise FitInputError(f"masked runs without '{RATE}' or 'stage.mask_rate' in the table")
    objective = rate.map(masked, na_action="ignore").fillna(CAUSAL)
    runs = runs.assign(objective=objective, mask_rate=rate).reset_index(drop=True)
    by_rate = runs["mask_rate"].value_counts()
    grid = masked(min(by_rate.index, key=lambda r: (-by_rate[r], r))) if len(by_rate) else None
    return Study(runs, corpus, grid, left_out)


def at_largest(runs: pd.DataFrame, level_of: str, along: str) -> tuple[pd.DataFrame, str]:
    """The runs at one level of `level_of` (D, or N) to fit against `along` (N, or D): the
    level the most distinct values of `along` reached, the largest such (near-equal values
    share a level, as in `analysis.kaplan`); with the selection in words. Raises
    FitInputError for no runs."""
    if runs.empty:
        raise FitInputError("no completed run of this objective")
    ratio = D_LEVEL_RATIO if level_of == "D" else N_LEVEL_RATIO
    level = levels(runs[level_of], ratio)
    coverage = runs[along].groupby(level).nunique()
    best = max(coverage.index, key=lambda lv: (coverage[lv], lv))
    points = runs[level == best]
    value = points[level_of].median()
    return points, f"{level_of} ≈ {value:.3g} ({coverage[best]} values of {along})"


def law_along(runs: pd.DataFrame, x: str, n_bootstrap: int, seed: int) -> LawFit:
    """L(N) at the largest D (x = "N") or L(D) at the largest N (x = "D"): the registry's
    power law, Kaplan's pure form (x_c/x)^α below `MIN_OFFSET_POINTS` points, else with an
    offset E; raises FitInputError with fewer than `MIN_SIZES` distinct x."""
    key = f"L({x})"
    points, selection = at_largest(runs, "D" if x == "N" else "N", x)
    if points[x].nunique() < MIN_SIZES:
        raise FitInputError(f"{key} needs {MIN_SIZES}+ values of {x} at one "
                            f"{'D' if x == 'N' else 'N'}, found {points[x].nunique()}")
    offset = points[x].nunique() >= MIN_OFFSET_POINTS
    fit = fit_law(select(points, [x, "loss"]), "power", n_bootstrap=n_bootstrap, seed=seed,
                  x=x, offset=offset)
    info = {"form": "offset" if offset else "pure", "selection": selection,
            "run_ids": points["run_id"].tolist()}
    return LawFit(key, "power", fit, None, points, info)


def law_nd(runs: pd.DataFrame, n_bootstrap: int, seed: int) -> LawFit:
    """L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, Approach 3) on every run of the
    objective, by variable projection (`analysis.chinchilla`); FitInputError below 6 runs or
    with one N or one D."""
    if runs["N"].nunique() < 2 or runs["D"].nunique() < 2:
        raise FitInputError(f"L(N, D) needs 2+ sizes and 2+ D, found {runs['N'].nunique()} "
                            f"and {runs['D'].nunique()}")
    fit = fit_law(select(runs, ["N", "D", "loss"]), "chinchilla", n_bootstrap=n_bootstrap,
                  seed=seed, method="varpro")
    info = {"selection": "every run of the objective", "run_ids": runs["run_id"].tolist()}
    return LawFit("L(N,D)", "chinchilla", fit, None, runs, info)


@dataclass(frozen=True)
class ObjectiveFits:
    """One objective's laws: L(N), L(D), L(N, D), and the compute-optimal split from L(N, D)
    (None when L(N, D) gave no estimate)."""

    objective: str
    runs: pd.DataFrame
    laws: dict[str, LawFit]
    allocation: Allocation | None

    def quantity(self, name: str) -> dict[str, Any]:
        """One row of the side-by-side table: {value, ci, status, n_points} of a quantity of
        `QUANTITIES` (value None when its law was skipped or gave no estimate)."""
        _, key, param = next(q for q in QUANTITIES if q[0] == name)
        if key == "N_opt":
            lnd = self.laws["L(N,D)"]
            if self.allocation is None:
                status = lnd.fit.status if lnd.fit else f"skipped: {lnd.skipped}"
                return {"value": None, "ci": None, "status": status, "n_points": 0}
            a = self.allocation
            ci = a.intervals.get(param)
            return jsonable({"value": a.params[param], "ci": list(ci) if ci else None,
                             "status": a.status, "n_points": lnd.fit.n_points})
        law = self.laws[key]
        if law.fit is None:
            return {"value": None, "ci": None, "status": f"skipped: {law.skipped}",
                    "n_points": 0}
        ci = law.fit.intervals.get(param)
        value = law.fit.params.get(param) if law.fit.usable else None
        return jsonable({"value": value, "ci": list(ci) if ci else None,
                         "status": law.fit.status, "n_points": law.fit.n_points})

    def to_dict(self) -> dict[str, Any]:
        """fits.json's entry: each law's parameters, intervals, status, points and runs; the
        N_opt exponent a (and b) with intervals; the side-by-side quantities."""
        out: dict[str, Any] = {"runs": len(self.runs),
                               "mask_rate": _rate(self.runs)}
        for key, law in self.laws.items():
            if law.fit is None:
                out[key] = {"law": law.law, "status": f"skipped: {law.skipped}", "n_points": 0}
                continue
            fit = law.fit
            out[key] = {"law": law.law, "params": fit.params, "status": fit.status,
                        "intervals": {k: list(v) for k, v in fit.intervals.items()},
                        "n_points": fit.n_points,
                        "bootstrap": fit.diagnostics.get("bootstrap"), **law.info}
        a = self.quantity("a")
        out["N_opt"] = {"a": a["value"], "a_ci": a["ci"], "status": a["status"],
                        "b": self.allocation.params["b"] if self.allocation else None,
                        "from": "L(N,D): a = β/(α+β) (Hoffmann et al. 2022 eq 4)"}
        out["quantities"] = {name: self.quantity(name) for name, _, _ in QUANTITIES}
        return jsonable(out)


def fit_objective(runs: pd.DataFrame, objective: str, *, n_bootstrap: int = 0,
                  seed: int = 0) -> ObjectiveFits:
    """L(N), L(D), L(N, D) and N_opt ∝ C^a (a = β/(α+β), Hoffmann et al. 2022 eq 4) of one
    objective's runs (columns run_id, N, D, loss), each with `n_bootstrap` seeded resamples
    for its 95 % intervals. A law the runs cannot support is recorded as skipped, not raised."""
    laws = {
        "L(N)": guarded("L(N)", "power", lambda: law_along(runs, "N", n_bootstrap, seed)),
        "L(D)": guarded("L(D)", "power", lambda: law_along(runs, "D", n_bootstrap, seed)),
        "L(N,D)": guarded("L(N,D)", "chinchilla", lambda: law_nd(runs, n_bootstrap, seed)),
    }
    lnd = laws["L(N,D)"].fit
    allocation = compute_optimal(lnd) if lnd is not None and lnd.usable else None
    return ObjectiveFits(objective, runs, laws, allocation)


def exponent_table(fits: dict[str, ObjectiveFits]) -> pd.DataFrame:
    """The side-by-side table, long: one row per (quantity, objective) with value, lo, hi,
    status and n_points (NaN where a law gave no estimate or no interval)."""
    rows = []
    for name, _, _ in QUANTITIES:
        for objective, fitted in fits.items():
            q = fitted.quantity(name)
            lo, hi = q["ci"] if q["ci"] else (None, None)
            rows.append({"quantity": name, "objective": objective, "value": q["value"],
                         "lo": lo, "hi": hi, "status": q["status"], "n_points": q["n_points"]})
    return pd.DataFrame(rows).astype({"value": float, "lo": float, "hi": float})


def like_for_like(runs: pd.DataFrame) -> pd.DataFrame | None:
    """`masked_positions_loss` against N at the largest D and against D at the largest N, per
    objective (columns objective, along, N, D, masked_positions_loss, run_id); None when the
    table has no such column or no run recorded it."""
    if LIKE_FOR_LIKE not in runs:
        return None
    scored = runs.assign(**{LIKE_FOR_LIKE: pd.to_numeric(runs[LIKE_FOR_LIKE], errors="coerce")})
    scored = scored[np.isfinite(scored[LIKE_FOR_LIKE]) & (scored[LIKE_FOR_LIKE] > 0)]
    if scored.empty:
        return None
    parts = []
    for objective, group in scored.groupby("objective", sort=True):
        for along, level_of in (("N", "D"), ("D", "N")):
            points, _ = at_largest(group, level_of, along)
            parts.append(points.assign(objective=objective, along=along).sort_values(along))
    return pd.concat(parts, ignore_index=True)[
        ["objective", "along", "N", "D", LIKE_FOR_LIKE, "run_id"]]


def mask_rate_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The masked runs of each size trained at 2+ mask rates at one budget (its largest such):
    columns N, D, mask_rate, val_loss (at the run's own rate), masked_positions_loss (when
    recorded), run_id; sorted by N and rate."""
    columns = ["N", "D", "mask_rate", "val_loss", LIKE_FOR_LIKE, "run_id"]
    masked_runs = runs[runs["objective"] != CAUSAL]
    if masked_runs.empty:
        return pd.DataFrame(columns=columns)
    masked_runs = masked_runs.assign(
        val_loss=masked_runs["loss"],
        N_level=levels(masked_runs["N"], N_LEVEL_RATIO),
        D_level=levels(masked_runs["D"], D_LEVEL_RATIO))
    if LIKE_FOR_LIKE not in masked_runs:
        masked_runs = masked_runs.assign(**{LIKE_FOR_LIKE: np.nan})
    parts = []
    for _, size in masked_runs.groupby("N_level"):
        rates = size.groupby("D_level")["mask_rate"].nunique()
        if rates.max() >= 2:
            parts.append(size[size["D_level"] == rates[rates >= 2].index.max()])
    if not parts:
        return pd.DataFrame(columns=columns)
    rows = pd.concat(parts)[columns].astype({LIKE_FOR_LIKE: float})
    return rows.sort_values(["N", "mask_rate"]).reset_index(drop=True)


def best_rates(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per size (N) of `mask_rate_rows`, the rate with the lowest masked_positions_loss, the
    loss on the common positions, where every run recorded it; otherwise the lowest val_loss
    at the run's own rate (a different task per rate: it favours the rates that hide less).
    Returns (columns N, D, best_rate, loss) and the column judged by."""
    judge = (LIKE_FOR_LIKE if len(rows) and rows[LIKE_FOR_LIKE].notna().all()
             else "val_loss")
    if rows.empty:
        return pd.DataFrame(columns=["N", "D", "best_rate", "loss"]), judge
    best = rows.loc[rows.groupby("N")[judge].idxmin()]
    table = best[["N", "D", "mask_rate", judge]].rename(
        columns={"mask_rate": "best_rate", judge: "loss"})
    return table.sort_values("N").reset_index(drop=True), judge


def rate_trend(best: pd.DataFrame) -> str:
    """Whether the best rate rises with size: "rises", "falls", "stays", "mixed", or "one size"
    when fewer than two sizes were trained at several rates."""
    if len(best) < 2:
        return "one size"
    steps = np.sign(np.diff(best.sort_values("N")["best_rate"].to_numpy(float)))
    if (steps == 0).all():
        return "stays"
    if (steps >= 0).all():
        return "rises"
    if (steps <= 0).all():
        return "falls"
    return "mixed"


def _rate(runs: pd.DataFrame) -> float | None:
    """The objective's mask rate (None for causal)."""
    rates = runs["mask_rate"].dropna().unique() if "mask_rate" in runs else []
    return float(rates[0]) if len(rates) else None
