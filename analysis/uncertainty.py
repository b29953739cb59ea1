"""Seeded bootstrap over rows, runs or within strata, and percentile intervals from it."""

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from analysis.result import Fit
from analysis.table import FitInputError

LEVEL = 0.95


def resample(
    df: pd.DataFrame,
    rng: np.random.Generator,
    unit: str | None = None,
    strata: str | None = None,
) -> pd.DataFrame:
    """One bootstrap table: rows with replacement, or whole units (runs), or rows per stratum.

    A unit drawn twice gets two distinct labels, so a curve is never merged with its copy.
    """
    if unit is not None:
        groups = list(df.groupby(unit, sort=False).indices.values())
        picks = rng.integers(0, len(groups), len(groups))
        rows = np.concatenate([groups[i] for i in picks])
        labels = np.repeat(np.arange(len(picks)), [len(groups[i]) for i in picks])
        return df.iloc[rows].assign(**{unit: labels}).reset_index(drop=True)
    if strata is not None:
        rows = np.concatenate(
            [rng.choice(idx, len(idx)) for idx in df.groupby(strata, sort=True).indices.values()]
        )
        return df.iloc[rows].reset_index(drop=True)
    return df.iloc[rng.integers(0, len(df), len(df))].reset_index(drop=True)


@threadpool_limits.wrap(limits=1, user_api="blas")  # tiny BLAS calls: threads only cost
def bootstrap(
    fit: Fit,
    df: pd.DataFrame,
    refit: Callable[[pd.DataFrame], Fit],
    *,
    k: int,
    seed: int = 0,
    unit: str | None = None,
    strata: str | None = None,
    level: float = LEVEL,
) -> Fit:
    """`fit` with bootstrap standard errors and percentile intervals from `k` seeded refits.

    Refits that fail (a resample the law cannot use, or no convergence) are left out and
    counted. Refits that end on a bound are kept and counted: the bound is a legitimate
    estimate, and dropping those draws would pull the interval away from it.
    """
    rng = np.random.default_rng(seed)
    draws, failed, at_bound = [], 0, 0
    for _ in range(k):
        try:
            again = refit(resample(df, rng, unit, strata))
        except (FitInputError, np.linalg.LinAlgError):  # a resample the law cannot use
            failed += 1
            continue
        if again.status.startswith("not_converged"):
            failed += 1
            continue
        at_bound += not again.ok
        draws.append(again.params)
    samples = pd.DataFrame(draws, columns=list(fit.params))
    summary = {
        "k": k,
        "used": len(samples),
        "failed": failed,
        "at_bound": at_bound,
        "seed": seed,
        "level": level,
        "unit": unit or (f"rows within {strata}" if strata else "row"),
    }
    if len(samples) < 2:
        return replace(fit, samples=samples, diagnostics=fit.diagnostics | {"bootstrap": summary})
    low, high = percentile_interval(samples.to_numpy(float), level)
    return replace(
        fit,
        stderr=samples.std(ddof=1).to_dict(),
        intervals={n: (float(lo), float(hi)) for n, lo, hi in zip(samples, low, high, strict=True)},
        samples=samples,
        diagnostics=fit.diagnostics | {"stderr_method": "bootstrap", "bootstrap": summary},
    )


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds along the first axis (one row per bootstrap draw)."""
    tail = (1 - level) / 2
    return np.nanquantile(values, tail, axis=0), np.nanquantile(values, 1 - tail, axis=0)
