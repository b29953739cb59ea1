"""Kaplan's laws fitted on a sweep's tables: L(N), L(D), L(C), L(N, D) (eq 1.5),
L(N, S) (eq 1.6) and the compute-optimal exponent, each as a `LawFit` that records the
points it used or why it was skipped. Separate from the findings, which only read these
fits, and from the report section, which only shows them.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.allocation import compute_optimal
from analysis.counting import (
    CONVENTIONS,
    elasticity,
    recount,
    recount_curves,
    relabelled_exponent,
)
from analysis.envelope import lower_envelope
from analysis.fit import fit_power
from analysis.isoflop import MIN_BUDGET_POINTS
from analysis.kaplan.constants import (
    CHINCHILLA_A,
    D_LEVEL_RATIO,
    KAPLAN,
    KAPLAN_A,
    KAPLAN_A_EQ15,
    MIN_SIZES,
    N_LEVEL_RATIO,
    SMOOTH_RMS,
    WARMUP_FRACTION,
)
from analysis.kaplan.tables import curve_table, levels
from analysis.registry import fit_law
from analysis.result import Fit, jsonable
from analysis.table import FitInputError, select


@dataclass(frozen=True)
class LawFit:
    """One law: its fit (and the pure-form fit that compares with Kaplan), the points it
    used and how they were chosen, or why it was skipped."""

    key: str
    law: str
    fit: Fit | None = None
    pure: Fit | None = None
    points: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""
    frontier: pd.DataFrame | None = None  # L(C): the whole lower envelope

    def rms(self) -> float:
        """Root-mean-square residual in ln L (NaN when skipped)."""
        return float(np.sqrt(np.mean(self.fit.residuals**2))) if self.fit else float("nan")

    def run_ids(self) -> tuple[str, ...]:
        """The runs the law was fitted on: its recorded run ids, else its points' `run`."""
        if "run_ids" in self.info:
            return tuple(map(str, self.info["run_ids"]))
        if self.points is not None and "run" in self.points:
            return tuple(map(str, self.points["run"].unique()))
        return ()

    def usable(self) -> bool:
        """Fitted, and converged: an offset that ends at E = 0 is still a clean power law."""
        return self.fit is not None and self.fit.status in ("ok", "hit_bound:E")

    def to_dict(self) -> dict[str, Any]:
        """The fit's JSON view with `alpha` (and Kaplan's constants) at the top level."""
        if self.fit is None:
            out: dict[str, Any] = {"law": self.law, "status": f"skipped: {self.skipped}"}
            out |= {"params": {}, "n_points": 0, "alpha": None}
        else:
            out = self.fit.to_dict() | {"alpha": self.fit.params.get("alpha")}
            out["rms_residual"] = self.rms()
            if self.pure is not None:
                out["alpha_pure"] = self.pure.params["alpha"]
        out["kaplan"] = KAPLAN.get(self.key, {})
        return jsonable(out | self.info)


def law_n(runs: pd.DataFrame, n_bootstrap: int = 0, seed: int = 0) -> LawFit:
    """L(N) on converged runs: the D level most sizes reached (the largest such), else each
    N's largest-D run. Kaplan trains every size to near convergence; one common D keeps the
    data term the same for every point."""
    runs = _with(runs, ["N", "D", "loss"], "L(N)")
    D_level, size = levels(runs["D"], D_LEVEL_RATIO), levels(runs["N"], N_LEVEL_RATIO)
    coverage = size.groupby(D_level).nunique()
    best = max(coverage.index, key=lambda level: (coverage[level], level))
    if coverage[best] >= MIN_SIZES:
        points = runs[D_level == best]
        selection = f"common D ≈ {points['D'].median():.3g} tokens ({coverage[best]} sizes)"
    else:
        points = runs.loc[runs.groupby("N")["D"].idxmax()]
        selection = f"largest D per N (no D level reached by {MIN_SIZES} sizes)"
    if points["N"].nunique() < MIN_SIZES:
        raise FitInputError(
            f"L(N) needs {MIN_SIZES} or more model sizes, found {points['N'].nunique()}"
        )
    fit, pure = _power_fits(points, "N", n_bootstrap, seed)
    info = {"form": _form(fit), "selection": selection, "run_ids": points["run_id"].tolist()}
    return LawFit("L(N)", "power", fit, pure, points, info)


def law_d(runs: pd.DataFrame, n_bootstrap: int = 0, seed: int = 0) -> LawFit:
    """L(D) with early stopping (best_val_loss) for the largest N trained at 3+ D levels."""
    runs = _with(runs, ["N", "D", "early_loss"], "L(D)")
    n_levels = levels(runs["D"], D_LEVEL_RATIO).groupby(runs["N"]).nunique()
    eligible = n_levels[n_levels >= MIN_SIZES]
    if eligible.empty:
        raise FitInputError(
            f"L(D) needs one model size trained at {MIN_SIZES} or more D, the most is "
            f"{n_levels.max()}"
        )
    N = eligible.index.max()
    points = runs[runs["N"] == N].assign(loss=lambda d: d["early_loss"])
    fit, pure = _power_fits(points, "D", n_bootstrap, seed)
    info = {
        "form": _form(fit),
        "N": N,
        "selection": f"largest N with {MIN_SIZES}+ D levels; early-stopped loss",
        "run_ids": points["run_id"].tolist(),
    }
    return LawFit("L(D)", "power", fit, pure, points, info)


def law_c(curves: pd.DataFrame, n_bootstrap: int = 0, seed: int = 0) -> LawFit:
    """L(C) on the compute-efficient frontier, the lower envelope of all learning curves.

    The envelope fit (`analysis.envelope`) keeps the compute where neither the smallest nor
    the largest model is on the frontier. When it cannot run, or the sizes it keeps are all
    one N level (too narrow a range of C), the power law is fitted to the frontier from the
    compute at which the first run ended: before it every run is in its initial transient.
    """
    try:
        fit = _fit(curves, "envelope", n_bootstrap, seed)
        frontier = fit.tables["envelope"]
        points = frontier[frontier["interior"]]
        narrow = levels(points["N"], N_LEVEL_RATIO).nunique() < 2
        why = "its compute-optimal sizes all lie within one N level" if narrow else ""
    except FitInputError as error:
        why = str(error)
    if not why:
        pure = fit_power(points, x="C", offset=False)
        info = {"form": "offset", "method": "envelope (analysis.envelope)"}
        return LawFit("L(C)", "envelope", fit, pure, points, info, frontier=frontier)
    frontier = lower_envelope(curves)
    start = curves.groupby("run")["C"].max().min()
    points = frontier[frontier["C"] >= start]
    # No bootstrap: frontier points are not independent draws, so resampling them as rows
    # would give intervals far too narrow.
    fit, pure = _power_fits(points, "C", 0, seed)
    method = (
        f"frontier points from C = {start:.3g} (the first run's end), fitted directly, "
        f"without intervals: the envelope fit was not used ({why})"
    )
    info = {"form": _form(fit), "method": method}
    return LawFit("L(C)", "power", fit, pure, points, info, frontier=frontier)


def law_nd(runs: pd.DataFrame, n_bootstrap: int = 0, seed: int = 0) -> LawFit:
    """Kaplan eq 1.5 on every completed run's early-stopped loss, as Kaplan fits it."""
    runs = _with(runs, ["N", "D", "early_loss"], "L(N,D)")
    if runs["N"].nunique() < 2 or runs["D"].nunique() < 2:
        raise FitInputError(
            f"L(N, D) needs 2+ sizes and 2+ D, found {runs['N'].nunique()} and "
            f"{runs['D'].nunique()}"
        )
    data = select(runs.assign(loss=runs["early_loss"]), ["N", "D", "loss"])
    fit = _fit(data, "kaplan-nd", n_bootstrap, seed)
    info = {"loss_column": "best_val_loss", "run_ids": runs["run_id"].tolist()}
    return LawFit("L(N,D)", "kaplan-nd", fit, None, data, info)


def law_ns(curves: pd.DataFrame, n_bootstrap: int = 0, seed: int = 0) -> LawFit:
    """Kaplan eq 1.6 on the longest run of each size, after its warmup (the initial transient
    Kaplan leaves out). S is steps, not S_min: with one batch size they differ by a factor."""
    longest = curves.groupby("run")["S"].max()
    chosen = longest.groupby(curves.groupby("run")["N"].first()).idxmax()
    points = after_warmup(curves[curves["run"].isin(chosen)])
    if points["N"].nunique() < 2:
        raise FitInputError(f"L(N, S) needs curves of 2+ sizes, found {points['N'].nunique()}")
    data = select(points, ["run", "N", "S", "loss"])
    fit = _fit(data, "kaplan-ns", n_bootstrap, seed)
    info = {"selection": "longest run per N, after warmup (the lr peak, else 5% of steps)"}
    return LawFit("L(N,S)", "kaplan-ns", fit, None, data, info)


def after_warmup(curves: pd.DataFrame) -> pd.DataFrame:
    """Evaluations after each run's learning-rate peak, or after its first 5% of steps (the
    trainer's default warmup)."""
    if "lr" in curves and curves["lr"].notna().any():
        lr = curves["lr"].fillna(-np.inf)
        peak = curves.loc[lr.groupby(curves["run"]).idxmax()].set_index("run")["S"]
    else:
        peak = WARMUP_FRACTION * curves.groupby("run")["S"].max()
    return curves[curves["S"] > curves["run"].map(peak)]


def law_isoflop(runs: pd.DataFrame, n_bootstrap: int = 0, seed: int = 0) -> LawFit:
    """Chinchilla Approach 2 on the runs trained to a compute budget (`train.budget`): each
    budget's profile of final loss over N, its vertex N*(C), then N* ∝ C^a (`fit_isoflop`,
    bootstrap stratified by budget). C is each budget's median recorded (or recounted) C, so
    the budgets are counted as N is; D* = C/(k·N*) with k each budget's own C/(N·D)."""
    runs = _with(runs, ["N", "D", "C", "loss"], "IsoFLOP")
    if "budget" in runs:
        runs = runs[runs["budget"].notna()]
        runs = runs.assign(C=runs.groupby("budget")["C"].transform("median"))
    else:
        runs = runs.iloc[:0]
    budgets = int((runs.groupby("C").size() >= MIN_BUDGET_POINTS).sum()) if len(runs) else 0
    if budgets < 2:
        raise FitInputError(f"IsoFLOP profiles need 2+ compute budgets (train.budget) of "
                            f"{MIN_BUDGET_POINTS}+ runs each, found {budgets}")
    data = select(runs, ["N", "C", "D", "loss"])
    fit = _fit(data, "isoflop", n_bootstrap, seed, flops_per_token=None)
    info = {"selection": f"{runs['C'].nunique()} compute budgets (train.budget), final loss",
            "run_ids": runs["run_id"].tolist()}
    return LawFit("IsoFLOP", "isoflop", fit, None, data, info)


def compute_optimal_exponent(lnd: LawFit, lc: LawFit, iso: LawFit | None = None,
                             n_bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """N_opt ∝ C^a by four routes: the L(N, D) fit's allocation, the envelope of learning
    curves (Chinchilla's Approach 1), IsoFLOP profiles (Approach 2, from `iso`, the runs
    trained to a budget) and a Chinchilla Approach 3 fit on the same runs as L(N, D), with
    `n_bootstrap` resamples. `a` is from the first route whose fit is clean (converged
    inside its bounds, and within 2% rms, or for the envelope, with compute-optimal sizes
    from `MIN_SIZES` or more N levels: from two, a is the slope between two sizes; for
    IsoFLOP, every vertex inside its budget's sizes) and whose a lies in (0, 1); failing
    that, the first that gave an estimate (not degenerate, unconverged or failed). Among
    clean routes IsoFLOP comes first: each profile measures the best size at one budget from
    runs trained to that budget's end (Hoffmann et al. 2022, §3.2), where the envelope reads
    runs mid-schedule and the allocations extrapolate a fitted form."""
    out: dict[str, Any] = {
        "kaplan_a": KAPLAN_A,
        "kaplan_a_eq15": KAPLAN_A_EQ15,
        "chinchilla_a": CHINCHILLA_A,
        "note": (
            "Kaplan's 0.73 comes from the learning-curve frontier (L(N, S_min) with B_crit); "
            f"eq 1.5's own allocation with Kaplan's constants gives {KAPLAN_A_EQ15:.3f}"
        ),
    }
    candidates = []  # (tier: 0 clean, 1 ok, 2 at a bound; route; a), in order of preference
    if iso is not None and iso.fit is not None:
        out["from_isoflop"] = {"a": iso.fit.params["a"], "status": iso.fit.status,
                               "budgets": int(iso.points["C"].nunique())}
        candidates.append((_tier(iso.fit, iso.fit.ok), "isoflop profiles", iso.fit.params["a"]))
    if lnd.fit is not None:
        out["from_kaplan_nd"] = compute_optimal(lnd.fit).to_dict() | {"status": lnd.fit.status}
        clean = lnd.fit.ok and lnd.rms() <= SMOOTH_RMS
        a = out["from_kaplan_nd"]["params"]["a"]
        candidates.append((_tier(lnd.fit, clean), "kaplan-nd allocation", a))
    if lc.fit is not None and lc.law == "envelope":  # optimal sizes from 2+ N levels
        sizes = int(levels(lc.points["N"], N_LEVEL_RATIO).nunique())
        out["from_envelope"] = {"a": lc.fit.params["a"], "status": lc.fit.status,
                                "optimal_sizes": sizes}
        clean = lc.fit.ok and sizes >= MIN_SIZES
        candidates.append((_tier(lc.fit, clean), "envelope of learning curves",
                           lc.fit.params["a"]))
    if lnd.points is not None:  # Chinchilla Approach 3 on the runs eq 1.5 was fitted on
        fit = _fit(lnd.points, "chinchilla", n_bootstrap, seed, method="varpro")
        out["from_chinchilla"] = compute_optimal(fit).to_dict() | {"status": fit.status}
        clean = fit.ok and float(np.sqrt(np.mean(fit.residuals**2))) <= SMOOTH_RMS
        candidates.append(
            (_tier(fit, clean), "chinchilla allocation", out["from_chinchilla"]["params"]["a"])
        )
    # a outside (0, 1) shrinks D_opt (or N_opt) as C grows: no allocation, whatever the fit
    candidates = [(tier if 0 < a < 1 else max(tier, 2), route, a) for tier, route, a in candidates]
    usable = sorted((c for c in candidates if c[0] < 3), key=lambda c: c[0])  # order kept
    if not usable:
        reasons = f"L(N,D): {lnd.skipped or lnd.fit.status}; L(C): {lc.skipped or 'no envelope'}"
        return jsonable(out | {"a": None, "method": None, "status": f"skipped: {reasons}"})
    tier, method, a = usable[0]
    loose = ("ok, but the compute-optimal sizes span fewer than "
             f"{MIN_SIZES} N levels" if method == "envelope of learning curves"
             else "ok, but the fit misses the data by more than 2% rms")
    status = ("ok", loose, "at a bound, or a outside (0, 1)")[tier]
    return jsonable(out | {"a": a, "method": method, "status": status})


KAPLAN_COUNT = "kaplan"  # the convention the others are compared with
ROUTES = {  # compute_optimal_exponent's routes: its key for each, and the law whose fit gave it
    "kaplan-nd allocation": "from_kaplan_nd",
    "envelope of learning curves": "from_envelope",
    "isoflop profiles": "from_isoflop",
    "chinchilla allocation": "from_chinchilla",
}


def route_interval(n_opt: dict[str, Any], lc: LawFit, route: str | None,
                   iso: LawFit | None = None) -> list[float] | None:
    """The bootstrap interval of a of one route of `n_opt` (`compute_optimal_exponent`;
    None: the route it chose), or None where that route has none (no bootstrap)."""
    route = route or n_opt.get("method")
    for name, key in (("kaplan-nd allocation", "from_kaplan_nd"),
                      ("chinchilla allocation", "from_chinchilla")):
        if route == name and key in n_opt:
            interval = n_opt[key].get("intervals", {}).get("a")
            return list(interval) if interval else None
    if route == "isoflop profiles" and iso is not None and iso.fit is not None:
        interval = iso.fit.intervals.get("a")
        return list(interval) if interval else None
    if route == "envelope of learning curves" and lc.fit is not None and lc.law == "envelope":
        interval = lc.fit.intervals.get("a")
        return list(interval) if interval else None
    return None


def exponent_by_convention(
    main: pd.DataFrame, curves: pd.DataFrame | None, n_bootstrap: int = 0, seed: int = 0,
    isoflop_runs: pd.DataFrame | None = None,
) -> dict[str, dict[str, Any]]:
    """N_opt ∝ C^a under each counting convention of `analysis.counting`, from the same runs.

    `main` are the runs the laws are fitted on (chosen once, under the report's own N),
    `curves` their learning curves (run_id, step, tokens, flops, val_loss). Under each
    convention N and C = 6·N·D are recounted (every evaluation's C too) and a is found by
    `compute_optimal_exponent`'s rule on L(N, D) and the envelope of the curves refitted
    with `n_bootstrap` resamples. Returns per convention: its N, who published numbers
    counted that way, a with its interval (`a_ci`), the route it came from, its status and
    every route's a (`routes`), the IsoFLOP route on `isoflop_runs` (default `main`) recounted
    the same way; a convention whose counts the table lacks is skipped with
    the column named. The others also hold `relabelled`: the elasticity e of their N
    against the kaplan count over these runs and the kaplan a recounted by it
    (`counting.relabelled_exponent`), what counting alone changes before any refit.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, chosen in CONVENTIONS.items():
        entry = {"N": chosen.definition, "used_by": chosen.used_by}
        try:
            runs = recount(main, name)
        except FitInputError as error:
            out[name] = entry | {"a": None, "a_ci": None, "method": None, "routes": {},
                                 "status": f"skipped: {error}"}
            continue
        budgets = recount(main if isoflop_runs is None else isoflop_runs, name)
        out[name] = entry | _exponent(runs, _recounted_curves(curves, runs, name),
                                      n_bootstrap, seed, budgets)
        base = out.get(KAPLAN_COUNT, {}).get("a")
        if name != KAPLAN_COUNT and base is not None:
            e = elasticity(main, name, KAPLAN_COUNT)
            out[name]["relabelled"] = {"from": KAPLAN_COUNT, "elasticity": e,
                                       "a": relabelled_exponent(base, e)}
    return jsonable(out)


def _exponent(
    runs: pd.DataFrame, curves: pd.DataFrame | None, n_bootstrap: int, seed: int,
    budgets: pd.DataFrame,
) -> dict[str, Any]:
    """a of N_opt ∝ C^a on these runs and curves (IsoFLOP: on `budgets`), its interval and
    route, every route's a."""
    lnd = guarded("L(N,D)", "kaplan-nd", lambda: law_nd(runs, n_bootstrap, seed))
    lc = guarded("L(C)", "envelope", lambda: law_c(curve_table(curves, runs), n_bootstrap, seed))
    iso = guarded("IsoFLOP", "isoflop", lambda: law_isoflop(budgets, n_bootstrap, seed))
    n_opt = compute_optimal_exponent(lnd, lc, iso, n_bootstrap, seed)
    routes = {}
    for route, key in ROUTES.items():
        if key in n_opt:
            found = n_opt[key]
            a = found["params"]["a"] if "params" in found else found["a"]
            routes[route] = {"a": a, "a_ci": route_interval(n_opt, lc, route, iso),
                             "status": found["status"]}
    return {"a": n_opt["a"], "a_ci": route_interval(n_opt, lc, None, iso),
            "method": n_opt["method"], "status": n_opt["status"], "routes": routes}


def _recounted_curves(
    curves: pd.DataFrame | None, runs: pd.DataFrame, name: str
) -> pd.DataFrame | None:
    """The runs' curves with every evaluation's C recounted under convention `name` (None
    without curves; `curve_table` says what they lack)."""
    if curves is None or not {"run_id", "tokens"} <= set(curves):
        return curves
    return recount_curves(curves[curves["run_id"].isin(runs["run_id"])], runs, name)


def guarded(key: str, law: str, build: Callable[[], LawFit]) -> LawFit:
    """The law `build()` fits, or a skipped record with the reason when the data cannot
    support it."""
    try:
        return build()
    except FitInputError as error:
        return LawFit(key, law, skipped=str(error))


def _tier(fit: Fit, clean: bool) -> int:
    """0: clean, 1: converged inside its bounds, 2: at a bound, 3: no estimate (degenerate,
    not converged or failed)."""
    if not fit.usable:
        return 3
    return 0 if clean else 1 if fit.ok else 2


def _fit(data: pd.DataFrame, law: str, n_bootstrap: int, seed: int, **options: Any) -> Fit:
    """`fit_law` with its bootstrap; a fit whose linear algebra breaks on this data is skipped
    with the reason instead of ending the report."""
    try:
        return fit_law(data, law, n_bootstrap=n_bootstrap, seed=seed, **options)
    except np.linalg.LinAlgError as error:
        raise FitInputError(f"{law}: the fit failed numerically ({error})") from error


def _with(runs: pd.DataFrame, columns: list[str], law: str) -> pd.DataFrame:
    """The runs, checked to have `columns` with finite positive values."""
    missing = [c for c in columns if c not in runs]
    if missing:
        raise FitInputError(f"{law} needs column(s) {', '.join(missing)}")
    values = runs[columns].apply(pd.to_numeric, errors="coerce")
    kept = runs[(np.isfinite(values) & (values > 0)).all(axis=1)]
    if kept.empty:
        raise FitInputError(f"{law}: no completed run has finite positive {', '.join(columns)}")
    return kept.assign(**{c: values.loc[kept.index, c] for c in columns})


def _power_fits(points: pd.DataFrame, x: str, n_bootstrap: int, seed: int) -> tuple[Fit, Fit]:
    """The law (offset form where 4+ points at 3+ distinct x allow it and it gives an
    estimate, else Kaplan's pure form) and the pure fit, whose α is the one Kaplan's
    constants compare with."""
    data = select(points, [x, "loss"])
    if len(data) >= 4 and data[x].nunique() >= 3:
        fit = _fit(data, "power", n_bootstrap, seed, x=x, offset=True)
        if fit.usable:
            return fit, fit_power(data, x=x, offset=False)
    pure = _fit(data, "power", n_bootstrap, seed, x=x, offset=False)
    return pure, pure


def _form(fit: Fit) -> str:
    return "offset" if "E" in fit.params else "pure (too few points for an offset)"
