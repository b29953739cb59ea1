"""Seeded bootstrap over rows, runs or within strata, and percentile intervals from it."""

from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from analysis.fit import OPTIMISER_ERRORS
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

    Refits that give no estimate are left out and counted as failed, with their reasons:
    a resample the law cannot use (`FitInputError`), an optimiser that raised
    (`OPTIMISER_ERRORS`) or a status of `failed` or `not_converged`. Refits that end on a
    bound or degenerate are kept and counted: they are what the estimator gives on that
    resample, and dropping them would pull the interval towards the well-behaved draws.
    """
    rng = np.random.default_rng(seed)
    draws, failures, at_bound, degenerate = [], Counter(), 0, 0
    for _ in range(k):
        try:
            again = refit(resample(df, rng, unit, strata))
        except (FitInputError, *OPTIMISER_ERRORS) as error:  # FitInputError: a bad resample
            failures[f"{type(error).__name__}: {error}"] += 1
            continue
        if again.status.startswith(("failed", "not_converged")):
            failures[again.status] += 1
            continue
        at_bound += again.status.startswith("hit_bound")
        degenerate += again.status.startswith("degenerate")
        draws.append(again.params)
    samples = pd.DataFrame(draws, columns=list(fit.params))
    summary = {
        "k": k,
        "used": len(samples),
        "failed": sum(failures.values()),
        "at_bound": at_bound,
        "degenerate": degenerate,
        "failures": dict(failures.most_common(3)),
        "seed": seed,
        "level": level,
        "unit": unit or (f"rows within {strata}" if strata else "row"),
    }
    if len(samples) < 2:
        return replace(fit, samples=samples, diagnostics=fit.diagnostics | {"bootstrap": summary})
    low, high = percentile_interval(samples.to_numpy(float), level)
    with np.errstate(over="ignore", invalid="ignore"):  # a degenerate draw's x_c near 1e300
        stderr = samples.std(ddof=1).to_dict()
    return replace(
        fit,
        stderr=stderr,
        intervals={n: (float(lo), float(hi)) for n, lo, hi in zip(samples, low, high, strict=True)},
        samples=samples,
        diagnostics=fit.diagnostics | {"stderr_method": "bootstrap", "bootstrap": summary},
    )


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds along the first axis (one row per bootstrap draw)."""
    tail = (1 - level) / 2
    return np.nanquantile(values, tail, axis=0), np.nanquantile(values, 1 - tail, axis=0)
