"""One entry per law: its form, parameters, columns, fitter, bootstrap, title and figure.

`scaling-fit --law`, the report and `fits.json` read `LAWS`, so adding a law is one entry
here (and, when it needs a new kind of figure, one plotter in `analysis.plots`).
"""

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from analysis import laws
from analysis.chinchilla import bootstrap_refit, fit_chinchilla
from analysis.envelope import fit_envelope
from analysis.fit import fit_kaplan_nd, fit_kaplan_ns, fit_power, fit_rising, warm_starts
from analysis.isoflop import budget_table, fit_isoflop
from analysis.result import Fit
from analysis.table import FLOPS_PER_TOKEN
from analysis.transfer import COLUMNS as TRANSFER_COLUMNS
from analysis.transfer import MAX_FRACTION, fit_transfer, refitter
from analysis.transfer import strata as transfer_strata
from analysis.uncertainty import LEVEL, bootstrap


@dataclass(frozen=True)
class Options:
    """The choices a fit may take; each law reads the ones it understands."""

    x: str = "N"  # power, rising: the variable
    offset: bool = True  # power, envelope: False is Kaplan's pure form, E = 0
    # chinchilla and transfer's from-scratch L(N, D): "grid" or "varpro"; None: the law's
    # own (chinchilla: the published grid; transfer: varpro, which finds the grid's optimum in
    # 0.1 s instead of 12 s, tests/analysis/test_chinchilla.py, and holds on noiseless data)
    method: str | None = None
    flops_per_token: float | None = FLOPS_PER_TOKEN  # isoflop: None takes C/(N·D) from the table
    mad_threshold: float | None = None  # isoflop: robust outlier rejection
    profile: str = "parabola"  # isoflop: each budget's optimum from a parabola or "akima"
    cut: float = MAX_FRACTION  # transfer: fit only fine-tunes with D_F/D_E at or below it


Fitter = Callable[[pd.DataFrame], Fit]


@dataclass(frozen=True)
class Law:
    """A law as every tool sees it.

    `columns` are the canonical columns it reads under `Options`; `fit` fits it; `refit`
    builds the bootstrap's refitter from the full-data fit (None: fit again from scratch);
    `unit` is what the bootstrap draws (None: rows; "run": whole learning curves, which
    share a run's noise) and `strata` the column it resamples within, or a function giving
    each row's stratum (transfer: two kinds of run, parents held); `positive` the columns
    `select` checks as finite and positive (None: all but `run`), `one_corpus` whether it
    refuses a table of several corpora (transfer reads two by design); `form` evaluates the
    loss from the parameters (None: the law predicts no loss); `optimum` gives G, a, b of
    the compute-optimal split for L(N, D) laws; `plot` names the figure in `plots.PLOTTERS`.
    The report's diagnostics fit it on `source` ("runs": a row per run, or "curves": a row
    per evaluation) once per option set in `variants` (none: never), on the rows `rows`
    picks (None from it: the table cannot support the law). `formula` is the form as printed
    with every fit. `results_columns` are the run table's columns it reads for canonical
    names by default, where they differ from `scaling.results.ALIASES` (transfer: the best
    validation loss, as Hernandez early-stop, not the final one).
    """

    title: str
    params: tuple[str, ...]
    columns: Callable[[Options], tuple[str, ...]]
    fit: Callable[[pd.DataFrame, Options], Fit]
    plot: str
    refit: Callable[[Fit, Options], Fitter] | None = None
    unit: str | None = None
    strata: str | Callable[[pd.DataFrame], pd.Series] | None = None
    positive: tuple[str, ...] | None = None
    one_corpus: bool = True
    form: Callable[..., np.ndarray] | None = None
    optimum: Callable[..., dict[str, float]] | None = None
    source: str = "runs"
    variants: tuple[dict[str, str], ...] = ({},)
    rows: Callable[[pd.DataFrame], pd.DataFrame | None] | None = None
    formula: str = ""
    results_columns: Mapping[str, str] = field(default_factory=dict)


LAWS: dict[str, Law] = {
    "power": Law(
        formula="L = E + (x_c/x)^alpha  (--no-offset: E = 0)",
        title="Power law L = E + (x_c/x)^α",
        params=("E", "x_c", "alpha"),
        columns=lambda o: (o.x, "loss"),
        fit=lambda df, o: fit_power(df, x=o.x, offset=o.offset),
        refit=lambda f, o: partial(fit_power, x=o.x, offset=o.offset, starts=warm_starts(f)),
        form=laws.power,
        plot="curve",
        variants=({"x": "N"}, {"x": "D"}, {"x": "C"}),
    ),
    "rising": Law(
        formula="y = k·x^a",
        title="Rising power law y = k·x^a",
        params=("k", "a"),
        columns=lambda o: (o.x, "loss"),
        fit=lambda df, o: fit_rising(df, x=o.x),
        form=laws.rising,
        plot="curve",
        variants=(),  # y = k·x^a fits quantities other than loss: nothing to pool
    ),
    "kaplan-nd": Law(
        formula="L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
        title="Kaplan L(N, D) (eq 1.5)",
        params=("N_c", "D_c", "alpha_N", "alpha_D"),
        columns=lambda o: ("N", "D", "loss"),
        fit=lambda df, o: fit_kaplan_nd(df),
        refit=lambda f, o: partial(fit_kaplan_nd, starts=warm_starts(f)),
        form=laws.kaplan_nd,
        optimum=laws.kaplan_nd_optimum,
        plot="two-variable",
    ),
    "kaplan-ns": Law(
        formula="L = (N_c/N)^alpha_N + (S_c/S)^alpha_S",
        title="Kaplan L(N, S) from learning curves (eq 1.6)",
        params=("N_c", "S_c", "alpha_N", "alpha_S"),
        columns=lambda o: ("N", "S", "loss"),
        fit=lambda df, o: fit_kaplan_ns(df),
        refit=lambda f, o: partial(fit_kaplan_ns, starts=warm_starts(f)),
        unit="run",
        form=laws.kaplan_ns,
        plot="two-variable",
        source="curves",
    ),
    "chinchilla": Law(
        formula="L = E + A/N^alpha + B/D^beta",
        title="Chinchilla Approach 3: L = E + A/N^α + B/D^β",
        params=("E", "A", "B", "alpha", "beta"),
        columns=lambda o: ("N", "D", "loss"),
        fit=lambda df, o: fit_chinchilla(df, method=o.method or "grid"),
        refit=lambda f, o: bootstrap_refit(f),
        form=laws.chinchilla,
        optimum=laws.chinchilla_optimum,
        plot="two-variable",
        # variable projection: the grid's optimum (tests/analysis/test_chinchilla.py) in a
        # fraction of its 3,125 starts, which would dominate the report's time
        variants=({"method": "varpro"},),
    ),
    "isoflop": Law(
        formula=(
            "per budget C: loss = loss_opt + curvature·ln(N/N_opt)^2 (--profile akima: the "
            "minimum of an Akima spline of ln loss in ln N); N_opt = k_N·C^a, D_opt = k_D·C^b"
        ),
        title="IsoFLOP profiles (Chinchilla Approach 2)",
        params=("k_N", "a", "k_D", "b"),
        columns=lambda o: ("N", "C", "loss", *(("D",) if o.flops_per_token is None else ())),
        fit=lambda df, o: fit_isoflop(
            df, flops_per_token=o.flops_per_token, mad_threshold=o.mad_threshold,
            profile=o.profile,
        ),
        strata="C",
        plot="isoflop",
        rows=budget_table,
    ),
    "envelope": Law(
        formula="envelope L(C) = E + (x_c/C)^alpha; N_opt = k_N·C^a, D_opt = k_D·C^b",
        title="Envelope of learning curves (Chinchilla Approach 1, Kaplan L(C_min))",
        params=("E", "x_c", "alpha", "k_N", "a", "k_D", "b"),
        columns=lambda o: ("run", "N", "C", "loss"),
        fit=lambda df, o: fit_envelope(
            df, offset=o.offset, flops_per_token=o.flops_per_token or FLOPS_PER_TOKEN
        ),
        unit="run",
        form=laws.power,
        plot="envelope",
        source="curves",
    ),
    "transfer": Law(
        formula=(
            "D_T = k·D_F^alpha·N^beta, D_T = D_E − D_F, D_E from the from-scratch "
            "L = E + A/N^a + B/D^b at the fine-tuned loss (--cut: the low-data regime, "
            "D_F/D_E <= cut)"
        ),
        title="Effective data transferred D_T = k·D_F^α·N^β (Hernandez et al. 2021)",
        params=("k", "alpha", "beta"),
        columns=lambda o: TRANSFER_COLUMNS,
        fit=lambda df, o: fit_transfer(df, cut=o.cut, method=o.method or "varpro"),
        refit=lambda f, o: refitter(f, cut=o.cut),
        strata=transfer_strata,
        positive=(),  # failed runs have no loss: the law checks the runs that count
        one_corpus=False,  # parents on the source, the rest on the target
        plot="transfer",
        variants=(),  # needs fine-tunes and their parents: the transfer section fits it
        results_columns={"loss": "best_val_loss", "run": "run_id"},
    ),
}


def get(law: str) -> Law:
    """The entry for `law`; ValueError naming the known laws otherwise."""
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r} (choose from {', '.join(LAWS)})")
    return LAWS[law]


def required_columns(law: str, *, bootstrap: bool = False, **options: object) -> list[str]:
    """The canonical columns `law` reads under `options` (the fields of `Options`), plus its
    bootstrap unit (`run`) when resampling; `rising` reads its y from the `loss` column."""
    entry = get(law)
    columns = list(entry.columns(Options(**options)))  # type: ignore[arg-type]
    if bootstrap and entry.unit and entry.unit not in columns:
        columns.insert(0, entry.unit)
    return columns


def fit_law(
    df: pd.DataFrame,
    law: str,
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
    level: float = LEVEL,
    **options: object,
) -> Fit:
    """Fit `law` on a table with canonical columns; with `n_bootstrap` > 0, add its intervals.

    `options` are the fields of `Options` (x, offset, method, flops_per_token,
    mad_threshold, profile, cut). Bootstrap refits of the multi-start laws start from the full-data
    optimum and the few starts that did best, not the whole grid: for Chinchilla
    (`chinchilla.bootstrap_refit`) 4,000 resamples take about 100 s instead of about 8
    hours; for power, kaplan-nd and kaplan-ns (`fit.warm_starts`) 3 starts replace up to
    18. A fit that gives no estimate (failed, degenerate, not converged) is returned without
    a bootstrap, which would only resample what the data do not determine. Raises
    `FitInputError` when the table cannot support the law, ValueError for an unknown law
    and TypeError for an unknown option.
    """
    entry, chosen = get(law), Options(**options)  # type: ignore[arg-type]
    fit = entry.fit(df, chosen)
    if n_bootstrap <= 0 or not fit.usable:
        return fit
    refit = entry.refit(fit, chosen) if entry.refit else partial(entry.fit, o=chosen)
    strata = entry.strata
    if callable(strata):
        df, strata = df.assign(stratum=strata(df)), "stratum"
    return bootstrap(
        fit,
        df,
        refit,
        k=n_bootstrap,
        seed=seed,
        level=level,
        unit=entry.unit,
        strata=strata,
    )


def evaluate(law: str, params: Mapping[str, float], *variables: ArrayLike) -> np.ndarray:
    """The law's loss at the given inputs (in its variables' order), for prediction and plots."""
    form = get(law).form
    if form is None:
        have = ", ".join(name for name, entry in LAWS.items() if entry.form)
        raise ValueError(f"{law} has no loss form to evaluate (forms: {have})")
    names = list(inspect.signature(form).parameters)[len(variables) :]
    return form(*variables, **{k: params[k] for k in names if k in params})
