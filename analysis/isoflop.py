"""IsoFLOP profiles (Chinchilla Approach 2): a profile per budget, then N* ∝ C^a and D* ∝ C^b.

Each budget's optimum is the vertex of a parabola in ln N (Hoffmann et al. 2022, the
default) or the minimum of an Akima spline of ln loss in ln N (`profile="akima"`, as Porian
et al. 2024 locate it). A parabola fits a narrow profile; over a wide, skewed one (Porian's
span 1.5 to 2 decades of N) its vertex moves towards the flatter arm, and a moves with it.
"""

import numpy as np
import pandas as pd
from scipy.interpolate import Akima1DInterpolator
from scipy.optimize import minimize_scalar

from analysis.fit import ols
from analysis.result import Fit, misallocation
from analysis.table import FLOPS_PER_TOKEN, FitInputError

MIN_BUDGET_POINTS = 3  # a parabola has three coefficients
MAD_TO_SIGMA = 1.4826  # median absolute deviation → standard deviation under normal noise
# A vertex further outside the sampled ln N range than this fraction of its width comes
# from a profile that never turns up: the budget does not bracket its optimum.
MAX_EXTRAPOLATION = 0.5
# A vertex within this fraction of the sampled ln N range of the smallest or largest size
# lies at the edge: one arm of its parabola is barely sampled, so the budget does not
# bracket its optimum. The published studies' vertices lie 0.23 or more of the range
# inside (Llama 3, Marin) where they are bracketed.
AT_EDGE = 0.05
# Rounds of outlier rejection per budget, as astropy's `sigma_clip` (maxiters=5). Rejection
# only ever removes points, so it also ends when a round removes none.
MAX_REJECTION_ROUNDS = 5
PROFILES = ("parabola", "akima")
AKIMA_GRID = 2001  # points on which the spline's minimum is first located, then refined


def budget_table(runs: pd.DataFrame) -> pd.DataFrame | None:
    """The runs with C set to their nominal `budget` (as sweeps record it) when the table has
    one; None unless 2 budgets have `MIN_BUDGET_POINTS` runs or more."""
    if "budget" in runs:
        runs = runs[runs["budget"].notna()].assign(C=lambda d: d["budget"])
    if "C" not in runs or (runs["C"].value_counts() >= MIN_BUDGET_POINTS).sum() < 2:
        return None
    return runs


def fit_isoflop(
    df: pd.DataFrame,
    *,
    flops_per_token: float | None = FLOPS_PER_TOKEN,
    mad_threshold: float | None = None,
    profile: str = "parabola",
) -> Fit:
    """Approach 2 on columns N, C (each budget's nominal FLOPs) and loss.

    Per budget, the optimum N*(C) of its profile: with `profile="parabola"` the vertex of
    the least-squares parabola of loss on ln N; with "akima" the minimum of an Akima spline
    through ln loss against ln N (the mean ln loss of each distinct N), as Porian et al.
    2024 locate it, reported with the curvature of the spline's loss there (a local
    parabola). D* = C/(k·N*) with k = `flops_per_token`, or, when it is None, each
    budget's median C/(N·D) from the table's own D column. Budgets with fewer than 3
    distinct N, no minimum (a non-convex parabola; a spline lowest at the smallest or
    largest size) or a vertex far outside the sizes sampled are dropped and named. A kept
    budget whose vertex is not inside its sizes by more than `AT_EDGE` of their range
    (`vertex_in_range`) did not bracket its optimum, and a or b outside (0, 1) is no
    allocation: either makes the status `degenerate: …`. `mad_threshold` (parabola only)
    rejects points whose residual exceeds that many robust standard deviations
    (`_parabola`: at most `MAX_REJECTION_ROUNDS` rounds, never below 3 sizes); the points
    rejected are in diagnostics["rejected"]. Plain least squares on every point (the
    default) reproduces the published parabola exponents (Chinchilla, Llama 3); the spline
    reproduces Porian et al.'s. a, b and the prefactors k_N, k_D (N* = k_N·C^a,
    D* = k_D·C^b) come from OLS in log space. Raises `FitInputError` with fewer than 2
    budgets (before or after dropping), an unknown `profile`, or `mad_threshold` with the
    spline (which passes through every point: there is no residual to judge).
    """
    if profile not in PROFILES:
        raise FitInputError(f"unknown isoflop profile {profile!r} (choose from "
                            f"{', '.join(PROFILES)})")
    if profile == "akima" and mad_threshold is not None:
        raise FitInputError("--mad-threshold needs the parabola profile: the Akima spline "
                            "passes through every point, leaving no residual to judge")
    budgets = df["C"].nunique()
    if budgets < 2:
        raise FitInputError(f"isoflop needs at least 2 budgets, found {budgets}")
    if flops_per_token is None and "D" not in df.columns:
        raise FitInputError("isoflop with the table's own FLOPs per token needs column 'D'")
    rows, residuals, dropped, rejected = [], [], {}, {}
    for C, group in df.groupby("C", sort=True):
        x, y = np.log(group["N"].to_numpy(float)), group["loss"].to_numpy(float)
        if np.unique(x).size < MIN_BUDGET_POINTS:
            dropped[f"{C:g}"] = (
                f"{np.unique(x).size} distinct N (a parabola needs {MIN_BUDGET_POINTS})"
            )
            continue
        if profile == "akima":
            vertex = _akima_minimum(x, y)
            if isinstance(vertex, str):
                dropped[f"{C:g}"] = vertex
                continue
            (x_star, loss_opt, curvature), keep = vertex, np.ones(len(x), dtype=bool)
            fitted = y  # the spline passes through every point
        else:
            coef, keep, rejection = _parabola(x, y, mad_threshold)
            if rejection:
                rejected[f"{C:g}"] = {"N": group["N"][~keep].tolist(), **rejection}
            if coef[0] <= 0:
                dropped[f"{C:g}"] = "not convex: the parabola has no minimum"
                continue
            x_star = -coef[1] / (2 * coef[0])
            loss_opt, curvature = np.polyval(coef, x_star), coef[0]
            fitted = np.polyval(coef, x)
        beyond = max(x.min() - x_star, x_star - x.max(), 0.0) / np.ptp(x)
        edge = AT_EDGE * np.ptp(x)
        if beyond > MAX_EXTRAPOLATION:
            dropped[f"{C:g}"] = f"vertex {beyond:.2g} ranges outside the sizes sampled"
            continue
        k = flops_per_token or float(np.median(C / (group["N"] * group["D"])))
        rows.append(
            {
                "C": C,
                "N_opt": np.exp(x_star),
                "D_opt": C / (k * np.exp(x_star)),
                "loss_opt": loss_opt,
                "curvature": curvature,
                "n_points": len(group),
                "n_kept": int(keep.sum()),
                "vertex_in_range": bool(x.min() + edge < x_star < x.max() - edge),
                "flops_per_token": k,
            }
        )
        residuals.append(y[keep] - fitted[keep])
    if len(rows) < 2:
        raise FitInputError(
            f"isoflop needs at least 2 budgets with a minimum, found {len(rows)} "
            f"(dropped: {dropped})"
        )
    table = pd.DataFrame(rows)
    lnC = np.log(table["C"].to_numpy(float))
    a, ln_kN, se_a, se_ln_kN = ols(lnC, np.log(table["N_opt"].to_numpy(float)))
    b, ln_kD, se_b, se_ln_kD = ols(lnC, np.log(table["D_opt"].to_numpy(float)))
    kept = np.concatenate(residuals)
    return Fit(
        law="isoflop",
        params={"a": a, "b": b, "k_N": float(np.exp(ln_kN)), "k_D": float(np.exp(ln_kD))},
        stderr={
            "a": se_a,
            "b": se_b,
            "k_N": float(np.exp(ln_kN)) * se_ln_kN,
            "k_D": float(np.exp(ln_kD)) * se_ln_kD,
        },
        residuals=kept,
        n_points=len(kept),
        variables=("C",),
        status=_status(table, a, b),
        diagnostics={
            "n_budgets": len(table),
            "dropped_budgets": dropped,
            "vertices_out_of_range": int((~table["vertex_in_range"]).sum()),
            "flops_per_token": "table" if flops_per_token is None else flops_per_token,
            "mad_threshold": mad_threshold,
            "rejected": rejected,
            "profile": profile,
            "loss_space": "loss, least squares per budget" if profile == "parabola"
            else "ln loss, Akima spline per budget",
            "stderr_method": "ols",
        },
        tables={"budgets": table},
    )


def _status(budgets: pd.DataFrame, a: float, b: float) -> str:
    """`degenerate: …` naming the budgets whose vertex lies at or beyond the edge of their
    sizes and an a or b outside (0, 1); else "ok"."""
    edge = budgets.loc[~budgets["vertex_in_range"], "C"]
    why = []
    if not edge.empty:
        why.append(
            f"the vertices of {len(edge)} of {len(budgets)} budgets (C = "
            f"{', '.join(f'{C:.3g}' for C in edge)}) lie at or beyond the edge of the sizes "
            "tried, so those budgets do not bracket their optimum"
        )
    if outside := misallocation({"a": a, "b": b}):
        why.append(outside.removeprefix("degenerate: "))
    return f"degenerate: {'; '.join(why)}" if why else "ok"


def _parabola(
    x: np.ndarray, y: np.ndarray, mad_threshold: float | None
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Coefficients in x (highest power first), the mask of points kept, and how the
    rejection went (rounds run and why it stopped; empty without `mad_threshold`).

    Each round drops the kept points whose residual from the parabola fitted to the kept
    points exceeds `mad_threshold` robust standard deviations of the kept residuals. A
    dropped point is never readmitted, as in astropy's `sigma_clip`: re-judging every
    point each round can cycle between two masks forever. Stops when a round drops
    nothing, when dropping would leave fewer than 3 sizes, or after `MAX_REJECTION_ROUNDS`.
    """
    keep = np.ones(len(x), dtype=bool)
    coef = _polyfit2(x, y)
    if mad_threshold is None:
        return coef, keep, {}
    for rounds in range(1, MAX_REJECTION_ROUNDS + 1):
        res = y - np.polyval(coef, x)
        spread = MAD_TO_SIGMA * np.median(np.abs(res[keep] - np.median(res[keep])))
        new = keep & (np.abs(res) <= mad_threshold * max(spread, np.finfo(float).tiny))
        if (new == keep).all():
            return coef, keep, {"rounds": rounds, "stopped": "nothing more to reject"}
        if np.unique(x[new]).size < MIN_BUDGET_POINTS:
            return coef, keep, {"rounds": rounds, "stopped": "fewer than 3 sizes would remain"}
        keep = new
        coef = _polyfit2(x[keep], y[keep])
    return coef, keep, {"rounds": MAX_REJECTION_ROUNDS, "stopped": "round limit reached"}


def _akima_minimum(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | str:
    """(ln N*, loss there, half the second derivative of loss in ln N there) of the Akima
    spline through ln y against x (mean ln y per distinct x), or why the budget has none:
    its lowest point is at the smallest or largest size. The minimum is found on a grid of
    `AKIMA_GRID` points, then refined between the grid's neighbours."""
    xs, inverse = np.unique(x, return_inverse=True)
    ln_y = np.bincount(inverse, np.log(y)) / np.bincount(inverse)
    spline = Akima1DInterpolator(xs, ln_y)
    grid = np.linspace(xs[0], xs[-1], AKIMA_GRID)
    i = int(np.argmin(spline(grid)))
    if i in (0, AKIMA_GRID - 1):
        end = "smallest" if i == 0 else "largest"
        return f"no minimum inside the sizes: the spline is lowest at the {end} size tried"
    found = minimize_scalar(
        spline, bounds=(grid[i - 1], grid[i + 1]), method="bounded", options={"xatol": 1e-10}
    )
    loss_opt = float(np.exp(spline(found.x)))
    return float(found.x), loss_opt, 0.5 * loss_opt * float(spline(found.x, 2))


def _polyfit2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares parabola, fitted about the mean of x for conditioning, in x's powers."""
    m = x.mean()
    c2, c1, c0 = np.polyfit(x - m, y, 2)
    return np.array([c2, c1 - 2 * c2 * m, c0 - c1 * m + c2 * m * m])
