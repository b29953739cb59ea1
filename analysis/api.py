"""Fit any law by name, with its bootstrap: the one entry point the CLI and the report share."""

from collections.abc import Callable
from functools import partial

import pandas as pd

from analysis.chinchilla import bootstrap_refit, fit_chinchilla
from analysis.envelope import fit_envelope
from analysis.fit import fit_kaplan_nd, fit_kaplan_ns, fit_power, fit_rising, warm_starts
from analysis.isoflop import fit_isoflop
from analysis.result import Fit
from analysis.table import FLOPS_PER_TOKEN
from analysis.uncertainty import LEVEL, bootstrap

LAWS = ("power", "rising", "kaplan-nd", "kaplan-ns", "chinchilla", "isoflop", "envelope")
ALLOCATING = ("chinchilla", "kaplan-nd")  # L(N, D) laws that imply a compute-optimal split
# Learning curves share a run's noise, so their bootstrap draws whole runs, not rows.
BY_RUN = ("kaplan-ns", "envelope")
WARM_STARTED = ("power", "kaplan-nd", "kaplan-ns")  # bootstrap refits from `warm_starts`


def required_columns(
    law: str,
    *,
    x: str = "N",
    bootstrap: bool = False,
    flops_per_token: float | None = FLOPS_PER_TOKEN,
) -> list[str]:
    """The canonical columns `law` reads (plus `run` when its bootstrap resamples runs);
    `rising` reads its y from the `loss` column."""
    columns = {
        "power": [x, "loss"],
        "rising": [x, "loss"],
        "kaplan-nd": ["N", "D", "loss"],
        "kaplan-ns": ["N", "S", "loss"],
        "chinchilla": ["N", "D", "loss"],
        "isoflop": ["N", "C", "loss"],
        "envelope": ["N", "C", "loss"],
    }[law]
    if law in BY_RUN and (bootstrap or law == "envelope"):
        columns = ["run", *columns]
    if law == "isoflop" and flops_per_token is None:
        columns = [*columns, "D"]
    return columns


def fit_law(
    df: pd.DataFrame,
    law: str,
    *,
    x: str = "N",
    offset: bool = True,
    method: str = "grid",
    flops_per_token: float | None = FLOPS_PER_TOKEN,
    mad_threshold: float | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    level: float = LEVEL,
) -> Fit:
    """Fit `law` on a table with canonical columns; with `n_bootstrap` > 0, add its intervals.

    Bootstrap refits of the multi-start laws start from the full-data optimum and the few
    starts that did best, not the whole grid: for Chinchilla (`chinchilla.bootstrap_refit`)
    4,000 resamples take about 100 s instead of about 8 hours; for power, kaplan-nd and
    kaplan-ns (`fit.warm_starts`) 3 starts replace up to 18. A fit that gives no estimate
    (failed, degenerate, not converged) is returned without a bootstrap, which would only
    resample what the data do not determine. Raises `FitInputError` when the table cannot
    support the law, and ValueError for an unknown law.
    """
    fitter: Callable[[pd.DataFrame], Fit]
    if law == "power":
        fitter = partial(fit_power, x=x, offset=offset)
    elif law == "rising":
        fitter = partial(fit_rising, x=x)
    elif law == "kaplan-nd":
        fitter = fit_kaplan_nd
    elif law == "kaplan-ns":
        fitter = fit_kaplan_ns
    elif law == "chinchilla":
        fitter = partial(fit_chinchilla, method=method)
    elif law == "isoflop":
        fitter = partial(fit_isoflop, flops_per_token=flops_per_token, mad_threshold=mad_threshold)
    elif law == "envelope":
        fitter = partial(
            fit_envelope, offset=offset, flops_per_token=flops_per_token or FLOPS_PER_TOKEN
        )
    else:
        raise ValueError(f"unknown law {law!r} (choose from {', '.join(LAWS)})")
    fit = fitter(df)
    if n_bootstrap <= 0 or not fit.usable:
        return fit
    if law == "chinchilla":
        refit = bootstrap_refit(fit)
    elif law in WARM_STARTED:
        refit = partial(fitter, starts=warm_starts(fit))
    else:
        refit = fitter
    return bootstrap(
        fit,
        df,
        refit,
        k=n_bootstrap,
        seed=seed,
        level=level,
        unit="run" if law in BY_RUN else None,
        strata="C" if law == "isoflop" else None,
    )
