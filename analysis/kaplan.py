"""Kaplan et al. 2020 on a sweep's tables: L(N), L(D), L(C), L(N, D), L(N, S), the
compute-optimal exponent, and a verdict on each of the paper's eight qualitative findings.

`write_kaplan_report` returns an HTML section and a dict for `fits.json`. Conventions are
Kaplan's: N counts non-embedding parameters, C is the run's training FLOPs, losses are in
nats/token. Every law or finding the tables cannot support is recorded as skipped or "not
measured" with the reason, never raised; only an empty results table is an error.
"""

import html
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from analysis import kaplan_plots
from analysis.allocation import compute_optimal
from analysis.api import fit_law
from analysis.envelope import lower_envelope
from analysis.fit import fit_power, ols
from analysis.result import Fit, jsonable
from analysis.table import FitInputError, select

# Published constants (SCALING_FACTS.md), each in Kaplan's convention for its law.
KAPLAN = {
    "L(N)": {"alpha": 0.076, "x_c": 8.8e13},
    "L(D)": {"alpha": 0.095, "x_c": 5.4e13},
    "L(C)": {"alpha": 0.050, "x_c": 3.1e8 * 8.64e19},  # C_c = 3.1e8 PF-days, in FLOP
    "L(N,D)": {"alpha_N": 0.076, "alpha_D": 0.103, "N_c": 6.4e13, "D_c": 1.8e13},
    "L(N,S)": {"alpha_N": 0.077, "alpha_S": 0.76, "N_c": 6.5e13, "S_c": 2.1e3},
    "B_crit": {"alpha_B": 0.21, "B_star": 2e8},
}
KAPLAN_A = 0.73  # N_opt ∝ C_min^0.73, from Kaplan's learning-curve frontier
# What eq 1.5's own allocation gives with Kaplan's constants: α_D/(α_N + α_D).
KAPLAN_A_EQ15 = KAPLAN["L(N,D)"]["alpha_D"] / (
    KAPLAN["L(N,D)"]["alpha_N"] + KAPLAN["L(N,D)"]["alpha_D"]
)
CHINCHILLA_A = 0.50
KAPLAN_STOP_GAP = 0.10  # compute-efficient runs stop about 10% above converged loss

FINDINGS = {
    1: "Loss depends strongly on scale (N, D, C), weakly on shape",
    2: "Smooth power laws in N, D and C",
    3: "Overfitting is universal: L(N, D) follows eq 1.5",
    4: "Training curves are predictable: L(N, S) follows eq 1.6",
    5: "Transfer tracks in-distribution loss with a constant offset",
    6: "Larger models are more sample-efficient",
    7: "Compute-efficient training stops well before convergence",
    8: "The critical batch size follows a power law in the loss",
}
VERDICTS = ("reproduced", "partly", "not reproduced", "not measured")

# Runs whose N (or D) lie within these ratios of a level's smallest count as one size (or D).
N_LEVEL_RATIO = 1.25  # shape sweeps hit a target N only to ~15%
D_LEVEL_RATIO = 1.1
MAX_EXPONENT = 2.0  # an L(N, D) exponent past this is a degenerate fit, not a measurement
MIN_SIZES = 3  # points a pure power law needs (2 parameters + 1 degree of freedom)
# Verdict thresholds, stated once.
SMOOTH_RMS = 0.02  # rms residual in ln L of a law that fits "smoothly" (2%)
SMOOTH_DECADES = 1.0  # and the range it must span to count as "over orders of magnitude"
SMOOTH_POINTS = 5
SHAPE_FACTOR = (2.0, 5.0)  # shape spread worth at most ×2 in N: weak; ×5: partly weak
TRANSFER_SLOPE = (0.2, 0.5)  # |d L_transfer / d L − 1| for "constant offset"; "partly"
STOP_GAP = (0.03, 0.01)  # median frontier gap above converged: reproduced; partly
BCRIT_R2 = 0.8
DEGENERATE_TERM = 0.05  # a law term that changes loss < 5% over the data acts as a constant
WARMUP_FRACTION = 0.05  # curves without lr: the trainer's default warmup
SAMPLE_TARGET_SLACK = 1.05  # a second, looser loss target for sample efficiency
# ICL score = loss at the late position minus at the early one (Olsson et al. 2022 use
# tokens 500 and 50 of 8192); scaled to the context length we have.
ICL_POSITIONS = (0.1, 0.8)
TRANSFER_PREFIXES = ("transfer_loss", "val_loss_")


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


@dataclass(frozen=True)
class Finding:
    """One of Kaplan's qualitative findings: the verdict, why, and the numbers behind it."""

    number: int
    verdict: str
    evidence: str
    reason: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return FINDINGS[self.number]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; tables become lists of records."""
        numbers = {
            k: v.to_dict(orient="records") if isinstance(v, pd.DataFrame) else v
            for k, v in self.numbers.items()
        }
        return jsonable(asdict(self) | {"title": self.title, "numbers": numbers})


def write_kaplan_report(
    results: pd.DataFrame,
    curves: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    positions: pd.DataFrame | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Fit Kaplan's laws, judge the eight findings, write `kaplan_*.png` into `out_dir`.

    `results` has one row per run (run_id, status, N, n_params, D, C, loss, best_val_loss,
    model.n_layer, ...), `curves` one row per evaluation (run_id, step, tokens, flops,
    val_loss, lr), `positions` the validation loss per context position (run_id, position,
    loss). Only completed runs count. Returns the HTML section (image paths relative to
    `out_dir`) and a dict for fits.json with keys "L(N)", "L(D)", "L(C)", "L(N,D)",
    "N_opt(C)", "L(N,S)", "kaplan_findings" and, with `positions`, "icl".
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = completed_runs(results)
    main = main_series(runs)
    boot = {"n_bootstrap": n_bootstrap, "seed": seed}
    try:
        cur, every_curve, no_curves = curve_table(curves, main), curve_table(curves, runs), ""
    except FitInputError as error:
        cur, every_curve, no_curves = None, None, str(error)

    ln = _guard("L(N)", "power", lambda: law_n(main, **boot))
    ld = _guard("L(D)", "power", lambda: law_d(main, **boot))
    lc = _guard("L(C)", "envelope", lambda: law_c(_need(cur, no_curves), **boot))
    lnd = _guard("L(N,D)", "kaplan-nd", lambda: law_nd(main, **boot))
    lns = _guard("L(N,S)", "kaplan-ns", lambda: law_ns(_need(cur, no_curves), **boot))
    n_opt = compute_optimal_exponent(lnd, lc)
    icl = per_position_icl(positions, runs) if positions is not None else None
    transfer = finding_transfer(runs)

    batch = finding_batch(every_curve, no_curves)
    figures = _figures(out, runs, cur, ln, ld, lc, icl, transfer, curves, every_curve, batch)
    findings = [
        finding_shape(runs, ln, ld, lc),
        finding_smooth(ln, ld, lc),
        finding_overfitting(lnd, main),
        finding_learning_curves(lns),
        transfer,
        finding_sample_efficiency(cur, ln, no_curves),
        finding_stopping(lc, lnd, main),
        batch,
    ]
    findings = [
        replace(f, figures=tuple(name for name in FIGURES_OF[f.number] if name in figures))
        for f in findings
    ]
    out_dict: dict[str, Any] = {law.key: law.to_dict() for law in (ln, ld, lc)}
    out_dict["L(N,D)"] = lnd.to_dict() | {
        name: lnd.fit.params[name] if lnd.fit else None
        for name in ("alpha_N", "alpha_D", "N_c", "D_c")
    }
    out_dict["N_opt(C)"] = n_opt
    out_dict["L(N,S)"] = lns.to_dict()
    out_dict["kaplan_findings"] = [f.to_dict() for f in findings]
    if icl is not None:
        out_dict["icl"] = jsonable({k: v for k, v in icl.items() if k not in ("table", "scores")})
    return _html(runs, (ln, ld, lc, lnd, lns), n_opt, findings, figures, icl), out_dict


# ---- the tables ----------------------------------------------------------------------------


def completed_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Completed runs with a finite positive loss; `early_loss` is best_val_loss where known."""
    if results is None or len(results) == 0:
        raise ValueError("results table is empty: no runs to report on")
    runs = results
    if "status" in runs:
        runs = runs[runs["status"] == "completed"]
    if "loss" in runs:
        loss = pd.to_numeric(runs["loss"], errors="coerce")
        runs = runs[np.isfinite(loss) & (loss > 0)]
        early = pd.to_numeric(runs.get("best_val_loss", runs["loss"]), errors="coerce")
        runs = runs.assign(early_loss=early.fillna(runs["loss"]))
    if "run_id" not in runs:
        runs = runs.assign(run_id=[f"run{i}" for i in range(len(runs))])
    return runs.reset_index(drop=True)


def main_series(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the scale laws are fitted on: one batch size and one shape per size.

    A study also holds runs that vary what the laws hold fixed: batch sizes (finding 8) and
    depths at one N (finding 1). Kaplan fits N, D and C on runs of one batch size and one
    aspect ratio; so do we: the most common tokens per step, and within a group of depths
    at one N and D, the runs whose d_model / n_layer is closest to the series' median.
    """
    main = runs
    if "tokens_per_step" in main and main["tokens_per_step"].notna().any():
        main = main[main["tokens_per_step"] == main["tokens_per_step"].mode().iloc[0]]
    if not {"model.d_model", "model.n_layer", "N", "D"} <= set(main) or main.empty:
        return main.reset_index(drop=True)
    distance = np.abs(np.log(main["model.d_model"] / main["model.n_layer"])
                      - np.log(np.median(main["model.d_model"] / main["model.n_layer"])))
    group = [levels(main["N"], N_LEVEL_RATIO), levels(main["D"], D_LEVEL_RATIO)]
    closest = distance <= distance.groupby(group).transform("min") + 1e-9
    return main[closest].reset_index(drop=True)


def curve_table(curves: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame:
    """Learning curves of completed runs, in canonical names: run, N, S, D, C, loss (+ lr)."""
    if curves is None or len(curves) == 0:
        raise FitInputError("no learning curves")
    missing = [c for c in ("run_id", "step", "tokens", "flops", "val_loss") if c not in curves]
    if missing:
        raise FitInputError(f"curves lack column(s) {', '.join(missing)}")
    if "N" not in runs:
        raise FitInputError("results lack column 'N', so curves have no model size")
    table = curves.drop(columns=["N"], errors="ignore").merge(runs[["run_id", "N"]], on="run_id")
    table = table.rename(
        columns={"run_id": "run", "step": "S", "tokens": "D", "flops": "C", "val_loss": "loss"}
    )
    values = table[["S", "D", "C", "loss"]].apply(pd.to_numeric, errors="coerce")
    table = table.assign(**values)[(np.isfinite(values) & (values > 0)).all(axis=1)]
    if table.empty:
        raise FitInputError("no learning-curve evaluation with a loss belongs to a completed run")
    optional = [c for c in ("lr", "noise_scale") if c in table]
    return table[["run", "N", "S", "D", "C", "loss", *optional]]


def levels(values: pd.Series, ratio: float) -> pd.Series:
    """An integer level per value, increasing with it: a level starts at a value more than
    `ratio` times the previous level's first value, so near-equal N or D share one."""
    ids, start, level = {}, None, -1
    for v in np.sort(values.unique()):
        if start is None or v > start * ratio:
            level, start = level + 1, v
        ids[v] = level
    return values.map(ids)


# ---- the laws ------------------------------------------------------------------------------


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
    return LawFit("L(N,D)", "kaplan-nd", fit, None, data, {"loss_column": "best_val_loss"})


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


def compute_optimal_exponent(lnd: LawFit, lc: LawFit) -> dict[str, Any]:
    """N_opt ∝ C^a by three routes: the L(N, D) fit's allocation, the envelope of learning
    curves, and a Chinchilla Approach 3 fit on the same runs. `a` is from the first route
    whose fit is clean (converged inside its bounds, and within 2% rms, or for the envelope,
    with optimal sizes from 2+ N levels) and whose a lies in (0, 1); failing that, the first
    that converged."""
    out: dict[str, Any] = {
        "kaplan_a": KAPLAN_A,
        "kaplan_a_eq15": KAPLAN_A_EQ15,
        "chinchilla_a": CHINCHILLA_A,
        "note": (
            "Kaplan's 0.73 comes from the learning-curve frontier (L(N, S_min) with B_crit); "
            f"eq 1.5's own allocation with Kaplan's constants gives {KAPLAN_A_EQ15:.3f}"
        ),
    }
    candidates = []  # (tier: 0 clean, 1 ok, 2 at a bound; route; a)
    if lnd.fit is not None:
        out["from_kaplan_nd"] = compute_optimal(lnd.fit).to_dict() | {"status": lnd.fit.status}
        clean = lnd.fit.ok and lnd.rms() <= SMOOTH_RMS
        a = out["from_kaplan_nd"]["params"]["a"]
        candidates.append((_tier(lnd.fit, clean), "kaplan-nd allocation", a))
    if lc.fit is not None and lc.law == "envelope":  # optimal sizes from 2+ N levels
        out["from_envelope"] = {"a": lc.fit.params["a"], "status": lc.fit.status}
        candidates.append(
            (
                _tier(lc.fit, lc.fit.ok),
                "envelope of learning curves",
                lc.fit.params["a"],
            )
        )
    if lnd.points is not None:  # Chinchilla Approach 3 on the runs eq 1.5 was fitted on
        fit = _fit(lnd.points, "chinchilla", 0, 0, method="varpro")
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
    status = ("ok", "ok, but the fit misses the data by more than 2% rms",
              "at a bound, or a outside (0, 1)")[tier]
    return jsonable(out | {"a": a, "method": method, "status": status})


def _tier(fit: Fit, clean: bool) -> int:
    """0: clean, 1: converged inside its bounds, 2: at a bound, 3: not converged."""
    if fit.status.startswith("not_converged"):
        return 3
    return 0 if clean else 1 if fit.ok else 2


def per_position_icl(positions: pd.DataFrame, runs: pd.DataFrame) -> dict[str, Any]:
    """Kaplan's per-position law L(T) = L_∞ + (T_c/T)^α_T per run, and the ICL score.

    T counts positions from 1 (0-based positions are shifted). The score is the loss at
    0.8·n_ctx minus the loss at 0.1·n_ctx (Olsson et al. use tokens 500 and 50), read off
    the run's losses interpolated in log T; n_ctx is model.n_ctx, else the largest T.
    """
    missing = [c for c in ("run_id", "position", "loss") if c not in positions]
    if missing or "N" not in runs:
        return {"status": f"skipped: missing column(s) {', '.join(missing or ['N'])}"}
    table = positions.drop(columns=["N"], errors="ignore").merge(runs[["run_id", "N"]], on="run_id")
    table = table[np.isfinite(table["loss"]) & (table["loss"] > 0)]
    if table.empty:
        return {"status": "skipped: no per-position loss belongs to a completed run"}
    shift = 1 if (table["position"] == 0).any() else 0
    table = table.assign(T=table["position"] + shift)
    n_ctx = (
        pd.to_numeric(runs.set_index("run_id")["model.n_ctx"], errors="coerce")
        if "model.n_ctx" in runs
        else None
    )
    rows = []
    for run, group in table.groupby("run_id", sort=False):
        group = group.groupby("T", as_index=False)["loss"].mean()
        context = float(n_ctx[run]) if n_ctx is not None and n_ctx[run] > 0 else group["T"].max()
        early, late = (np.log(f * context) for f in ICL_POSITIONS)
        lnT, lnL = np.log(group["T"]), np.log(group["loss"])
        row = {
            "run_id": run,
            "N": table.loc[table["run_id"] == run, "N"].iloc[0],
            "n_ctx": context,
            "icl_score": float(np.diff(np.exp(np.interp([early, late], lnT, lnL)))[0]),
        }
        try:
            fit = fit_power(group, x="T", offset=True)
            row |= {"status": fit.status, "alpha_T": fit.params["alpha"]}
            row |= {"T_c": fit.params["x_c"], "L_inf": fit.params["E"]}
        except FitInputError as error:
            row["status"] = f"skipped: {error}"
        rows.append(row)
    scores = pd.DataFrame(rows)
    out: dict[str, Any] = {
        "status": "ok",
        "definition": f"T = position + {shift}; score = L({ICL_POSITIONS[1]}·n_ctx) − "
        f"L({ICL_POSITIONS[0]}·n_ctx)",
        "runs": scores.to_dict(orient="records"),
        "table": table,
        "scores": scores,
    }
    if scores["N"].nunique() >= 2:
        slope, _, se, _ = ols(np.log10(scores["N"].to_numpy(float)), scores["icl_score"].to_numpy())
        out |= {"score_slope_per_decade_N": slope, "score_slope_stderr": se}
    fitted = scores["alpha_T"].dropna() if "alpha_T" in scores else pd.Series(dtype=float)
    out["alpha_T_median"] = float(fitted.median()) if len(fitted) else None
    return out


# ---- the findings --------------------------------------------------------------------------


def finding_shape(runs: pd.DataFrame, ln: LawFit, ld: LawFit, lc: LawFit) -> Finding:
    """(1) Depths at one N and D against the effect of N: the spread across shapes, corrected
    to a common N with the fitted α_N, expressed as the change in N that moves loss as much."""
    alphas = {
        key: law.pure.params["alpha"]
        for key, law in (("N", ln), ("D", ld), ("C", lc))
        if law.pure is not None
    }
    scale = ", ".join(f"α_{k} = {v:.3f}" for k, v in alphas.items()) or "no scale law fitted"
    scale = f"Scale: {scale} (pure form; Kaplan 0.076, 0.095, 0.050)."
    if not {"model.n_layer", "N", "D", "loss"} <= set(runs):
        return Finding(1, "not measured", scale, "no model.n_layer, N, D or loss column")
    alpha = alphas.get("N")
    groups = shape_groups(runs, alpha)
    if not groups:
        reason = "no two depths trained at the same N and D (run the shape sweep)"
        return Finding(1, "not measured", scale, reason)
    widest = max(groups, key=lambda g: g["loss_spread"])
    numbers = {"alpha": alphas, "shape_groups": groups}
    spread = widest["loss_spread"]
    evidence = (
        f"At N ≈ {widest['N']:.3g}, D ≈ {widest['D']:.3g}, depths {widest['n_layer']} span "
        f"{spread:.1%} in loss (N varies ×{widest['N_ratio']:.2f} within the group; "
        f"{widest['D'] / widest['N']:.2g} tokens per parameter)."
    )
    if widest["corr_loss_n_params"] is not None:
        evidence += (
            f" All parameters vary ×{widest['n_params_ratio']:.2f} there, and loss correlates "
            f"with them at r = {widest['corr_loss_n_params']:.2f} (Kaplan Fig. 6: counting "
            "embeddings should not line the depths up)."
        )
    evidence += " " + scale
    if alpha is None or alpha <= 0:
        verdict = "partly" if alpha is None else "not reproduced"
        reason = "no L(N) fit to weigh the spread against" if alpha is None else "no N effect"
        return Finding(1, verdict, evidence, reason, numbers)
    factor = float(np.exp(spread / alpha))
    numbers["equivalent_N_factor"] = factor
    reason = (
        f"the shape spread equals a ×{factor:.3g} change in N by the fitted L(N) (weak: "
        f"≤ ×{SHAPE_FACTOR[0]:g}; Kaplan: a few % over a 40× range of aspect ratio)"
    )
    verdict = _grade(factor, SHAPE_FACTOR, higher_is_better=False)
    return Finding(1, verdict, evidence, reason, numbers)


def shape_groups(runs: pd.DataFrame, alpha_N: float | None) -> list[dict[str, Any]]:
    """Runs at one N level and D level with 2+ depths: their loss spread in ln L (moved to
    the group's median N along L(N) when α_N is known) and how loss tracks all parameters."""
    groups = []
    keys = [levels(runs["N"], N_LEVEL_RATIO), levels(runs["D"], D_LEVEL_RATIO)]
    for _, group in runs.groupby(keys):
        if group["model.n_layer"].nunique() < 2:
            continue
        lnL = np.log(group["loss"].to_numpy(float))
        if alpha_N is not None:
            lnL = lnL + alpha_N * np.log(group["N"] / group["N"].median()).to_numpy()
        total = "n_params" in group and len(group) >= 3 and np.ptp(lnL) > 0
        groups.append(
            {
                "N": group["N"].median(),
                "D": group["D"].median(),
                "n_layer": sorted(group["model.n_layer"].unique().tolist()),
                "loss_spread": float(np.ptp(lnL)),
                "N_ratio": float(group["N"].max() / group["N"].min()),
                "n_params_ratio": float(group["n_params"].max() / group["n_params"].min())
                if total
                else None,
                "corr_loss_n_params": float(np.corrcoef(np.log(group["n_params"]), lnL)[0, 1])
                if total
                else None,
            }
        )
    return groups


def finding_smooth(ln: LawFit, ld: LawFit, lc: LawFit) -> Finding:
    """(2) Each of L(N), L(D), L(C): residuals, points and the decades it spans."""
    fits, good, numbers = (ln, ld, lc), [], {}
    for law in fits:
        if law.fit is None:
            numbers[law.key] = {"status": f"skipped: {law.skipped}"}
            continue
        x = law.fit.variables[0]
        decades = float(np.log10(law.points[x].max() / law.points[x].min()))
        entry = {
            "rms": law.rms(),
            "decades": decades,
            "n_points": law.fit.n_points,
            "status": law.fit.status,
        }
        numbers[law.key] = entry
        if law.usable() and entry["rms"] <= SMOOTH_RMS:
            good.append(decades >= SMOOTH_DECADES and entry["n_points"] >= SMOOTH_POINTS)
    evidence = (
        "; ".join(
            f"{k}: rms {v['rms']:.2%} over {v['decades']:.2f} decades, {v['n_points']} points"
            if "rms" in v
            else f"{k}: {v['status']}"
            for k, v in numbers.items()
        )
        + " (Kaplan: N over 6 decades, D over 3, C over 8)."
    )
    fitted = sum(law.fit is not None for law in fits)
    if not fitted:
        return Finding(2, "not measured", evidence, "no law could be fitted", numbers)
    if len(good) == 3 and all(good):
        verdict, reason = "reproduced", f"all three within {SMOOTH_RMS:.0%} rms over a decade+"
    elif good:
        verdict = "partly"
        reason = (
            f"{len(good)} of 3 laws fit within {SMOOTH_RMS:.0%} rms, but over fewer than "
            f"{SMOOTH_DECADES:g} decade or {SMOOTH_POINTS} points for some, or one is missing: "
            "too little range to call it a power law over orders of magnitude"
        )
    else:
        verdict, reason = "not reproduced", f"no law fits within {SMOOTH_RMS:.0%} rms"
    return Finding(2, verdict, evidence, reason, numbers)


def finding_overfitting(lnd: LawFit, runs: pd.DataFrame) -> Finding:
    """(3) Whether eq 1.5 describes all runs, and its exponents against Kaplan's."""
    if lnd.fit is None:
        return Finding(3, "not measured", "No L(N, D) fit.", lnd.skipped)
    p = lnd.fit.params
    ratio = p["alpha_N"] / p["alpha_D"]
    numbers = {"rms": lnd.rms(), "alpha_N/alpha_D": ratio, "status": lnd.fit.status}
    epochs = float(runs["epochs"].max()) if "epochs" in runs else None
    evidence = (
        f"Eq 1.5 on {lnd.fit.n_points} runs ({runs['N'].nunique()} N × {runs['D'].nunique()} D): "
        f"α_N = {p['alpha_N']:.3f}, α_D = {p['alpha_D']:.3f} (Kaplan 0.076, 0.103), "
        f"α_N/α_D = {ratio:.2f} (Kaplan 0.74), rms {lnd.rms():.2%}, status {lnd.fit.status}."
        + (
            f" No run repeats data (at most {epochs:.2f} epochs): the penalty measured is "
            "finite D, as in Kaplan."
            if epochs is not None and epochs <= 1
            else ""
        )
    )
    runaway = [name for name in ("alpha_N", "alpha_D") if p[name] > MAX_EXPONENT]
    if lnd.fit.ok and lnd.rms() <= SMOOTH_RMS and not runaway:
        return Finding(3, "reproduced", evidence, f"eq 1.5 fits within {SMOOTH_RMS:.0%}", numbers)
    if runaway:
        return Finding(
            3, "partly", evidence,
            f"{' and '.join(runaway)} ran past {MAX_EXPONENT:g}: the fit collapses eq 1.5 to "
            "whichever term is larger at each run, so the data do not pin that exponent down "
            "(too little overlap between the N-limited and the D-limited regimes)", numbers)
    if lnd.fit.status.startswith("not_converged"):
        return Finding(3, "not reproduced", evidence, "the fit did not converge", numbers)
    return Finding(
        3, "partly", evidence, f"the fit is {lnd.fit.status} with rms {lnd.rms():.2%}", numbers
    )


def finding_learning_curves(lns: LawFit) -> Finding:
    """(4) Whether eq 1.6 describes the learning curves after warmup."""
    if lns.fit is None:
        return Finding(4, "not measured", "No L(N, S) fit.", lns.skipped)
    p = lns.fit.params
    numbers = {"rms": lns.rms(), "status": lns.fit.status}
    evidence = (
        f"Eq 1.6 on {lns.fit.n_points} evaluations: α_N = {p['alpha_N']:.3f}, "
        f"α_S = {p['alpha_S']:.3f} (Kaplan 0.077, 0.76), rms {lns.rms():.2%}, "
        f"status {lns.fit.status}. S is steps at one batch size, not S_min; with a cosine "
        "schedule as long as the run (the trainer's default) the curve's end carries the decay."
    )
    # (S_c/S)^α_S barely moving over the steps fitted means the S term became a constant.
    S = lns.points["S"]
    numbers["S_term_change"] = p["alpha_S"] * float(np.log(S.max() / S.min()))
    if numbers["S_term_change"] < DEGENERATE_TERM:
        reason = "the step term (S_c/S)^α_S is nearly constant: eq 1.6 fits as an offset only"
        return Finding(4, "partly", evidence, reason, numbers)
    if lns.fit.ok and lns.rms() <= SMOOTH_RMS:
        return Finding(4, "reproduced", evidence, f"eq 1.6 fits within {SMOOTH_RMS:.0%}", numbers)
    if lns.fit.status.startswith("not_converged"):
        return Finding(4, "not reproduced", evidence, "the fit did not converge", numbers)
    return Finding(
        4, "partly", evidence, f"the fit is {lns.fit.status} with rms {lns.rms():.2%}", numbers
    )


def finding_transfer(runs: pd.DataFrame) -> Finding:
    """(5) Loss on a second corpus against in-distribution loss: slope 1 is a constant offset."""
    columns = [c for c in runs if str(c).startswith(TRANSFER_PREFIXES)]
    if not columns or "loss" not in runs:
        return Finding(
            5,
            "not measured",
            "No second-corpus loss in the results.",
            "needs a transfer_loss or val_loss_<corpus> column: every run is "
            "evaluated on its own corpus only",
        )
    numbers, grades = {}, []
    for column in columns:
        both = runs[["loss", column]].apply(pd.to_numeric, errors="coerce").dropna()
        if len(both) < 3:
            numbers[column] = {"status": f"skipped: {len(both)} runs have it"}
            continue
        slope, intercept, se, _ = ols(both["loss"].to_numpy(), both[column].to_numpy())
        offset = both[column] - both["loss"]
        numbers[column] = {
            "slope": slope,
            "intercept": intercept,
            "slope_stderr": se,
            "offset_mean": offset.mean(),
            "offset_std": offset.std(ddof=1),
            "n_runs": len(both),
        }
        grades.append(_grade(abs(slope - 1), TRANSFER_SLOPE, higher_is_better=False))
    evidence = "; ".join(
        f"{c}: slope {v['slope']:.2f} ± {v['slope_stderr']:.2f}, offset "
        f"{v['offset_mean']:.3f} ± {v['offset_std']:.3f} nats over {v['n_runs']} runs"
        if "slope" in v
        else f"{c}: {v['status']}"
        for c, v in numbers.items()
    )
    if not grades:
        return Finding(
            5, "not measured", evidence, "fewer than 3 runs carry a transfer loss", numbers
        )
    verdict = grades[0] if len(set(grades)) == 1 else "partly"
    reason = f"constant offset means d L_transfer / d L = 1 (within {TRANSFER_SLOPE[0]:g})"
    return Finding(5, verdict, evidence, reason, numbers)


def transfer_curves(
    curves: pd.DataFrame | None, runs: pd.DataFrame, column: str
) -> pd.DataFrame | None:
    """Completed runs' evaluations with both validation and `column` loss (run_id, N, step,
    val_loss, column), or None when the curves do not carry `column`."""
    needed = ["run_id", "val_loss", column]
    if curves is None or not set(needed) <= set(curves) or "N" not in runs:
        return None
    table = curves[[*needed, *(["step"] if "step" in curves else [])]]
    table = table.merge(runs[["run_id", "N"]], on="run_id")
    values = table[["val_loss", column]].apply(pd.to_numeric, errors="coerce")
    table = table.assign(**values)[(np.isfinite(values) & (values > 0)).all(axis=1)]
    return table if not table.empty else None


def finding_sample_efficiency(curves: pd.DataFrame | None, ln: LawFit, no_curves: str) -> Finding:
    """(6) Tokens and steps each size needs to reach the same loss, on runs of equal length.

    The runs are those of L(N) (one D, so one schedule length) and the targets the highest
    loss every one of them reaches, and 5% above it.
    """
    if curves is None:
        return Finding(6, "not measured", "No learning curves.", no_curves)
    if ln.fit is not None:
        cur = curves[curves["run"].isin(ln.info["run_ids"])]
    else:
        longest = curves.groupby("run")["S"].max()
        cur = curves[
            curves["run"].isin(longest.groupby(curves.groupby("run")["N"].first()).idxmax())
        ]
    size = levels(cur.groupby("run")["N"].first(), N_LEVEL_RATIO)
    if size.nunique() < 2:
        reason = "needs curves of 2+ sizes trained for the same tokens"
        return Finding(6, "not measured", "Learning curves of one size only.", reason)
    target = cur.groupby("run")["loss"].min().max()
    rows = []
    for L in (target, target * SAMPLE_TARGET_SLACK):
        for run, curve in cur.groupby("run"):
            S, D = reach(curve, L)
            rows.append({"target": L, "size": size[run], "N": curve["N"].iloc[0], "S": S, "D": D})
    # Per size level, the fastest of its shapes.
    table = pd.DataFrame(rows).sort_values("D").groupby(["target", "size"], as_index=False).first()
    slopes, lines = [], []
    for L, t in table.groupby("target"):
        t = t.sort_values("N")
        slope, _, se, _ = ols(np.log(t["N"].to_numpy()), np.log(t["D"].to_numpy()))
        # With 2 sizes there is no error bar: the sign must do.
        slopes.append((slope, slope + 2 * se < 0 if np.isfinite(se) else slope < 0))
        lines.append(
            f"to reach loss {L:.3f}, N = {t['N'].iloc[0]:.3g} needs {t['D'].iloc[0]:.3g} tokens "
            f"({t['S'].iloc[0]:.3g} steps), N = {t['N'].iloc[-1]:.3g} needs "
            f"{t['D'].iloc[-1]:.3g} ({t['S'].iloc[-1]:.3g} steps); d ln D/d ln N = "
            f"{slope:.2f} ± {se:.2f} over {len(t)} sizes"
        )
    evidence = "On runs of equal length, " + "; ".join(lines) + "."
    numbers = {"table": table, "slopes": [s for s, _ in slopes]}
    if all(significant for _, significant in slopes):
        reason = "larger sizes reach each loss in fewer tokens and steps"
        return Finding(6, "reproduced", evidence, reason, numbers)
    if all(slope < 0 for slope, _ in slopes):
        reason = "tokens fall with N, but not by more than twice their standard error"
        return Finding(6, "partly", evidence, reason, numbers)
    reason = "larger sizes do not reach the targets in fewer tokens"
    return Finding(6, "not reproduced", evidence, reason, numbers)


def finding_stopping(lc: LawFit, lnd: LawFit, runs: pd.DataFrame) -> Finding:
    """(7) How far above converged loss the frontier's runs are, over the fitted L(C) range.

    Converged loss is L(N, D → ∞) = (N_c/N)^α_N from the L(N, D) fit; without it, the
    lowest loss any run of that size reached, which makes the gap a lower bound.
    """
    if lc.fit is None:
        return Finding(7, "not measured", "No compute-efficient frontier.", lc.skipped)
    if "early_loss" not in runs:
        return Finding(7, "not measured", "No final losses.", "results lack column 'loss'")
    frontier = lc.points
    final = runs.groupby("run_id")["early_loss"].min()
    if lnd.fit is not None and lnd.fit.ok:
        p = lnd.fit.params
        converged = (p["N_c"] / frontier["N"]) ** p["alpha_N"]
        method = "(N_c/N)^α_N from the L(N, D) fit"
    else:
        best = runs.groupby("N")["early_loss"].min()
        converged = frontier["N"].map(best)
        method = "lowest loss reached at that N (a lower bound on the gap)"
    gap = frontier["loss"].to_numpy() / converged.to_numpy() - 1
    numbers = {
        "median_gap": float(np.nanmedian(gap)),
        "converged_from": method,
        "kaplan_gap": KAPLAN_STOP_GAP,
    }
    evidence = (
        f"Along the fitted frontier ({len(frontier)} points, {frontier['run'].nunique()} runs) "
        f"loss is a median {numbers['median_gap']:.1%} above converged ({method}); Kaplan: "
        f"about {KAPLAN_STOP_GAP:.0%}."
    )
    own = frontier["loss"].to_numpy() / frontier["run"].map(final).to_numpy() - 1
    numbers["median_gap_to_own_final"] = float(np.nanmedian(own))
    evidence += f" Above the frontier run's own final loss: median {np.nanmedian(own):.1%}."
    verdict = _grade(numbers["median_gap"], STOP_GAP, higher_is_better=True)
    reason = f"stopping well short means a gap ≥ {STOP_GAP[0]:.0%} above converged loss"
    return Finding(7, verdict, evidence, reason, numbers)


def finding_batch(curves: pd.DataFrame | None, no_curves: str) -> Finding:
    """(8) B_crit(L) = B_*/L^(1/α_B): from the gradient noise scale where the runs recorded
    it (`train.noise_scale_batches`, Kaplan §5.1 takes B_crit ≈ B_noise), else from runs of
    one size at several batch sizes: at each loss, steps S = S_min + E_min/B (Kaplan eq
    5.4–5.5), so B_crit = E_min/S_min."""
    if curves is None:
        return Finding(8, "not measured", "No learning curves.", no_curves)
    if "noise_scale" in curves:
        noise = noise_scale_trend(curves)
        if noise is not None:
            return noise
    batch = (curves["D"] / curves["S"]).groupby(curves["run"]).median()
    size = curves.groupby("run")["N"].first()
    varied = [N for N, b in batch.groupby(size) if np.unique(np.round(np.log(b), 3)).size >= 2]
    if not varied:
        return Finding(
            8,
            "not measured",
            f"Batch size {', '.join(f'{b:.3g}' for b in batch.unique()[:4])} tokens "
            "per step: the same for every run of a size.",
            "B_crit needs runs of one size that differ in batch size",
        )
    estimates = []
    for N in varied:
        cur = curves[curves["run"].isin(size.index[size == N])].sort_values("S")
        per_run = cur.groupby("run")["loss"]
        lo, hi = per_run.min().max(), per_run.first().min()
        for L in np.geomspace(lo, hi, 10)[:-1]:
            reached = [(reach(c, L)[0], batch[run]) for run, c in cur.groupby("run")]
            S, B = np.array(reached).T
            E_min, S_min, *_ = ols(1 / B, S)
            if S_min > 0 and E_min > 0:
                estimates.append(
                    {"N": N, "loss": L, "B_crit": E_min / S_min, "S_min": S_min, "E_min": E_min}
                )
    table = pd.DataFrame(estimates)
    if len(table) < 3:
        return Finding(
            8,
            "not measured",
            f"Batch size varies at N = {varied}.",
            "steps against 1/batch gave a positive S_min and E_min at fewer than 3 losses",
            {"table": table},
        )
    slope, intercept, *_ = ols(np.log(table["loss"]), np.log(table["B_crit"]))
    residual = np.log(table["B_crit"]) - (intercept + slope * np.log(table["loss"]))
    r2 = 1 - residual.var() / np.log(table["B_crit"]).var()
    alpha_B = -1 / slope if slope != 0 else float("nan")
    numbers = {
        "alpha_B": alpha_B,
        "B_star": float(np.exp(intercept)),
        "r2": float(r2),
        "table": table,
        "kaplan": KAPLAN["B_crit"],
    }
    evidence = (
        f"B_crit at {len(table)} losses: {table['B_crit'].min():.3g}–"
        f"{table['B_crit'].max():.3g} tokens; B_crit ∝ L^(−1/α_B) with α_B = {alpha_B:.3f} "
        f"(Kaplan 0.21), R² = {r2:.2f}."
    )
    if slope < 0 and r2 >= BCRIT_R2:
        return Finding(
            8, "reproduced", evidence, "B_crit grows as the loss falls, as a power", numbers
        )
    if slope < 0:
        return Finding(8, "partly", evidence, f"the trend is right but R² < {BCRIT_R2}", numbers)
    return Finding(8, "not reproduced", evidence, "B_crit does not grow as the loss falls", numbers)


def noise_scale_points(curves: pd.DataFrame) -> pd.DataFrame:
    """Noise-scale measurements past each run's warmup (the LR at its peak or decaying)."""
    points = curves[np.isfinite(curves["noise_scale"]) & (curves["noise_scale"] > 0)]
    if "lr" in points and not points.empty:
        peak_step = curves.loc[curves.groupby("run")["lr"].idxmax(), ["run", "S"]]
        points = points.merge(peak_step, on="run", suffixes=("", "_peak"))
        points = points[points["S"] >= points["S_peak"]].drop(columns="S_peak")
    return points


def noise_scale_trend(curves: pd.DataFrame) -> Finding | None:
    """B_noise against loss over every evaluation: a robust (Theil–Sen) line in log-log,
    since single estimates blow up where the true gradient is nearly zero. None when fewer
    than 10 measurements."""
    points = noise_scale_points(curves)
    if len(points) < 10:
        return None
    ln_loss, ln_b = np.log(points["loss"].to_numpy()), np.log(points["noise_scale"].to_numpy())
    slope, intercept, low, high = stats.theilslopes(ln_b, ln_loss)
    rho = stats.spearmanr(points["loss"], points["noise_scale"]).statistic
    alpha_B = -1 / slope if slope != 0 else float("nan")
    numbers = {
        "method": "gradient noise scale",
        "alpha_B": alpha_B,
        "B_star": float(np.exp(intercept)),
        "slope": slope,
        "slope_interval": [low, high],
        "spearman_rho": rho,
        "n_points": len(points),
        "n_runs": int(points["run"].nunique()),
        "kaplan": KAPLAN["B_crit"],
    }
    evidence = (
        f"Gradient noise scale at {len(points)} evaluations of {numbers['n_runs']} runs: "
        f"{points['noise_scale'].quantile(0.1):.3g}–{points['noise_scale'].quantile(0.9):.3g} "
        f"tokens (10th–90th percentile); B ∝ L^(−1/α_B) with α_B = {alpha_B:.3f} "
        f"(Kaplan 0.21), slope {slope:.2f} (95% {low:.2f} to {high:.2f}), Spearman ρ = {rho:.2f}."
    )
    if high < 0:
        return Finding(8, "reproduced", evidence,
                       "the noise scale grows as the loss falls, as a power", numbers)
    if slope < 0:
        return Finding(8, "partly", evidence,
                       "the trend is right but its interval includes no trend", numbers)
    return Finding(8, "not reproduced", evidence,
                   "the noise scale does not grow as the loss falls", numbers)


def reach(curve: pd.DataFrame, target: float) -> tuple[float, float]:
    """Steps and tokens at which a curve first reaches `target`, interpolated in log-log
    between evaluations (NaN if it never does)."""
    curve = curve.sort_values("S")
    loss = curve["loss"].to_numpy(float)
    below = np.flatnonzero(loss <= target)
    if below.size == 0:
        return float("nan"), float("nan")
    i = below[0]
    S, D = curve["S"].to_numpy(float), curve["D"].to_numpy(float)
    if i == 0:
        return S[0], D[0]
    w = np.log(loss[i - 1] / target) / np.log(loss[i - 1] / loss[i])
    return tuple(float(np.exp((1 - w) * np.log(v[i - 1]) + w * np.log(v[i]))) for v in (S, D))


# ---- figures and HTML ----------------------------------------------------------------------

FIGURES_OF = {
    1: ("kaplan_loss_vs_params.png",),
    2: ("kaplan_L_D.png", "kaplan_L_C.png"),
    3: (),
    4: ("kaplan_curves_tokens.png",),
    5: ("kaplan_transfer.png",),
    6: ("kaplan_curves_tokens.png",),
    7: ("kaplan_curves_flops.png",),
    8: ("kaplan_noise_scale.png",),
}
# Figures shown in their own part of the report rather than in the gallery at its top.
SECTION_FIGURES = ("kaplan_icl.png", "kaplan_transfer.png", "kaplan_noise_scale.png")


def _figures(
    out: Path,
    runs: pd.DataFrame,
    cur: pd.DataFrame | None,
    ln: LawFit,
    ld: LawFit,
    lc: LawFit,
    icl: dict[str, Any] | None,
    transfer: Finding,
    curves: pd.DataFrame | None,
    every_curve: pd.DataFrame | None,
    batch: Finding,
) -> list[str]:
    """Write every figure the data allows; return their file names."""
    figures: dict[str, Figure] = {}
    if {"N", "D", "loss"} <= set(runs) and not runs.empty:
        figures["kaplan_loss_vs_params.png"] = kaplan_plots.loss_vs_params(
            runs, ln.fit, levels(runs["D"], D_LEVEL_RATIO)
        )
    if cur is not None:
        figures["kaplan_curves_tokens.png"] = kaplan_plots.learning_curves(cur, "D", "tokens D")
        figures["kaplan_curves_flops.png"] = kaplan_plots.learning_curves(
            cur, "C", "compute C (FLOP)", lc.frontier, lc.fit, lc.points
        )
    if ld.fit is not None:
        others = runs[~runs["run_id"].isin(ld.info["run_ids"])]
        figures["kaplan_L_D.png"] = kaplan_plots.power_law(
            ld.points,
            "D",
            ld.fit,
            ld.pure,
            "tokens D",
            f"L(D), early-stopped, N = {ld.info['N']:.3g} (grey: other sizes)",
            others.assign(loss=others["early_loss"]),
        )
    if lc.fit is not None and lc.frontier is not None:
        rest = lc.frontier[~lc.frontier["C"].isin(lc.points["C"])]
        figures["kaplan_L_C.png"] = kaplan_plots.power_law(
            lc.points,
            "C",
            lc.fit,
            lc.pure,
            "compute C (FLOP)",
            "L(C) on the compute-efficient frontier (grey: not fitted)",
            rest,
        )
    if icl is not None and icl.get("status") == "ok":
        figures["kaplan_icl.png"] = kaplan_plots.per_position(icl["table"], icl["scores"])
    fitted = {c: v for c, v in transfer.numbers.items() if "slope" in v}
    if fitted and "N" in runs:
        during = transfer_curves(curves, runs, next(iter(fitted)))
        figures["kaplan_transfer.png"] = kaplan_plots.transfer(runs, fitted, during)
    if batch.numbers.get("method") == "gradient noise scale" and every_curve is not None:
        slope, intercept = batch.numbers["slope"], np.log(batch.numbers["B_star"])
        figures["kaplan_noise_scale.png"] = kaplan_plots.noise_scale(
            noise_scale_points(every_curve), slope, intercept)
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=110)
    return list(figures)


def _html(
    runs: pd.DataFrame,
    laws: tuple[LawFit, ...],
    n_opt: dict[str, Any],
    findings: list[Finding],
    figures: list[str],
    icl: dict[str, Any] | None,
) -> str:
    """The section: the exponents against Kaplan's, the figures, then one part per finding."""
    e = html.escape
    main_count = len(main_series(runs))
    span = ", ".join(
        f"{c} ×{runs[c].max() / runs[c].min():.3g}"
        for c in ("N", "D", "C")
        if c in runs and len(runs) and runs[c].min() > 0
    )
    parts = [
        '<section class="kaplan">',
        "<h2>Kaplan et al. 2020: laws and findings</h2>",
        f"<p>{len(runs)} completed runs ({e(span)}); the laws are fitted on the "
        f"{main_count} of one batch size and one shape per size (the others are batch-size and "
        "depth variations, for findings 8 and 1). N counts non-embedding parameters, C "
        "the training FLOPs, losses are nats/token. Kaplan's constants hold for WebText2 with "
        "GPT-2's 50,257-token BPE and N up to 1.5e9; compare exponents, not constants, and "
        "mind the range.</p>",
        "<h3>Exponents against Kaplan's</h3>",
        _exponent_table(laws, n_opt),
        "<div>"
        + "".join(
            f'<img src="{e(f)}" alt="{e(f)}" width="520">'
            for f in figures
            if f not in SECTION_FIGURES
        )
        + "</div>",
        "<h3>The eight findings</h3>",
        "<table><tr><th>#</th><th>finding</th><th>verdict</th></tr>"
        + "".join(
            f"<tr><td>{f.number}</td><td>{e(f.title)}</td><td>{e(f.verdict)}</td></tr>"
            for f in findings
        )
        + "</table>",
    ]
    for f in findings:
        parts += [
            f"<h4>{f.number}. {e(f.title)}: {e(f.verdict)}</h4>",
            f"<p>{e(f.evidence)}</p>",
            f'<p class="verdict">Verdict: <strong>{e(f.verdict)}</strong>'
            + (f" ({e(f.reason)})" if f.reason else "")
            + ".</p>",
        ]
        if f.figures:
            links = ", ".join(f'<a href="{e(name)}">{e(name)}</a>' for name in f.figures)
            parts.append(f"<p>Figures: {links}</p>")
        parts += [
            f'<img src="{e(name)}" alt="{e(name)}" width="900">'
            for name in f.figures
            if name in SECTION_FIGURES
        ]
    if icl is not None:
        parts.append("<h3>Loss per context position (in-context learning)</h3>")
        if icl.get("status") == "ok":
            slope = icl.get("score_slope_per_decade_N")
            parts.append(
                f"<p>{e(icl['definition'])}. Median α_T = {_num(icl['alpha_T_median'])}; ICL "
                f"score changes by {_num(slope)} nats per decade of N (more negative: the "
                "model uses its context more).</p>"
                + pd.DataFrame(icl["runs"]).to_html(
                    index=False, float_format=lambda v: f"{v:.4g}", border=0
                )
                + '<img src="kaplan_icl.png" alt="per-position loss" width="900">'
            )
        else:
            parts.append(f"<p>{e(icl['status'])}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _exponent_table(laws: tuple[LawFit, ...], n_opt: dict[str, Any]) -> str:
    """One row per fitted constant: ours (with interval), how it was fitted, Kaplan's."""
    rows = []
    for law in laws:
        names = {"L(N,D)": ("alpha_N", "alpha_D"), "L(N,S)": ("alpha_N", "alpha_S")}
        for name in names.get(law.key, ("alpha",)):
            if law.fit is None:
                kaplan = _num(KAPLAN[law.key][name])
                rows.append((law.key, name, "—", f"skipped: {law.skipped}", "", kaplan))
                continue
            value = _num(law.fit.params[name]) + _interval(law.fit, name)
            how = (
                f"{law.info.get('form', law.law)}; {law.fit.n_points} points; "
                f"rms {law.rms():.2%}; {law.fit.status}"
            )
            pure = _num(law.pure.params["alpha"]) if law.pure is not None else ""
            rows.append((law.key, name, value, how, pure, _num(KAPLAN[law.key][name])))
    rows.append(
        (
            "N_opt ∝ C^a",
            "a",
            _num(n_opt.get("a")),
            str(n_opt.get("method") or n_opt["status"]),
            "",
            f"{KAPLAN_A} (eq 1.5 with Kaplan's constants: {KAPLAN_A_EQ15:.3f}; Chinchilla "
            f"{CHINCHILLA_A})",
        )
    )
    header = ("law", "constant", "ours", "fit", "ours, pure form", "Kaplan")
    return pd.DataFrame(rows, columns=header).to_html(index=False, border=0, escape=True)


def _interval(fit: Fit, name: str) -> str:
    if name not in fit.intervals:
        return ""
    lo, hi = fit.intervals[name]
    return f" [{lo:.3g}, {hi:.3g}]"


def _num(value: Any) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3g}"


# ---- small helpers -------------------------------------------------------------------------


def _guard(key: str, law: str, build: Callable[[], LawFit]) -> LawFit:
    """The law, or a skipped record with the reason when the data cannot support it."""
    try:
        return build()
    except FitInputError as error:
        return LawFit(key, law, skipped=str(error))


def _fit(data: pd.DataFrame, law: str, n_bootstrap: int, seed: int, **options: Any) -> Fit:
    """`fit_law` with its bootstrap; a fit whose linear algebra breaks on this data is skipped
    with the reason instead of ending the report."""
    try:
        return fit_law(data, law, n_bootstrap=n_bootstrap, seed=seed, **options)
    except np.linalg.LinAlgError as error:
        raise FitInputError(f"{law}: the fit failed numerically ({error})") from error


def _need(table: pd.DataFrame | None, reason: str) -> pd.DataFrame:
    if table is None:
        raise FitInputError(reason)
    return table


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
    """The law (offset form where 4+ points at 3+ distinct x allow it and it converges, else
    Kaplan's pure form) and the pure fit, whose α is the one Kaplan's constants compare with."""
    data = select(points, [x, "loss"])
    if len(data) >= 4 and data[x].nunique() >= 3:
        fit = _fit(data, "power", n_bootstrap, seed, x=x, offset=True)
        if not fit.status.startswith("not_converged"):
            return fit, fit_power(data, x=x, offset=False)
    pure = _fit(data, "power", n_bootstrap, seed, x=x, offset=False)
    return pure, pure


def _form(fit: Fit) -> str:
    return "offset" if "E" in fit.params else "pure (too few points for an offset)"


def _grade(value: float, thresholds: tuple[float, float], *, higher_is_better: bool) -> str:
    """'reproduced', 'partly' or 'not reproduced' by two thresholds, best first."""
    good, fair = thresholds
    if higher_is_better:
        return "reproduced" if value >= good else "partly" if value >= fair else "not reproduced"
    return "reproduced" if value <= good else "partly" if value <= fair else "not reproduced"
