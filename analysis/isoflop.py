"""IsoFLOP profiles (Chinchilla Approach 2): a parabola per budget, then N* ∝ C^a and D* ∝ C^b."""

import numpy as np
import pandas as pd

from analysis.fit import ols
from analysis.result import Fit
from analysis.table import FLOPS_PER_TOKEN, FitInputError

MIN_BUDGET_POINTS = 3  # a parabola has three coefficients
MAD_TO_SIGMA = 1.4826  # median absolute deviation → standard deviation under normal noise
# A vertex further outside the sampled ln N range than this fraction of its width comes
# from a profile that never turns up: the budget does not bracket its optimum.
MAX_EXTRAPOLATION = 0.5


def fit_isoflop(
    df: pd.DataFrame,
    *,
    flops_per_token: float | None = FLOPS_PER_TOKEN,
    mad_threshold: float | None = None,
) -> Fit:
    """Approach 2 on columns N, C (each budget's nominal FLOPs) and loss.

    Per budget, least squares of loss on ln N by a parabola gives the vertex N*(C), and
    D* = C/(k·N*) with k = `flops_per_token`, or, when it is None, each budget's median
    C/(N·D) from the table's own D column. Budgets with fewer than 3 distinct N, no
    minimum (a non-convex parabola) or a vertex far outside the sizes sampled are dropped
    and named; a vertex just outside is kept and flagged (`vertex_in_range`).
    `mad_threshold` rejects points whose residual exceeds that many robust standard
    deviations, refitting until none move; plain least squares on every point (the
    default) reproduces the published exponents. a, b and the prefactors k_N, k_D
    (N* = k_N·C^a, D* = k_D·C^b) come from OLS in log space.
    """
    budgets = df["C"].nunique()
    if budgets < 2:
        raise FitInputError(f"isoflop needs at least 2 budgets, found {budgets}")
    if flops_per_token is None and "D" not in df.columns:
        raise FitInputError("isoflop with the table's own FLOPs per token needs column 'D'")
    rows, residuals, dropped = [], [], {}
    for C, group in df.groupby("C", sort=True):
        x, y = np.log(group["N"].to_numpy(float)), group["loss"].to_numpy(float)
        if np.unique(x).size < MIN_BUDGET_POINTS:
            dropped[f"{C:g}"] = (
                f"{np.unique(x).size} distinct N (a parabola needs {MIN_BUDGET_POINTS})"
            )
            continue
        coef, keep = _parabola(x, y, mad_threshold)
        if coef[0] <= 0:
            dropped[f"{C:g}"] = "not convex: the parabola has no minimum"
            continue
        x_star = -coef[1] / (2 * coef[0])
        beyond = max(x.min() - x_star, x_star - x.max(), 0.0) / np.ptp(x)
        if beyond > MAX_EXTRAPOLATION:
            dropped[f"{C:g}"] = f"vertex {beyond:.2g} ranges outside the sizes sampled"
            continue
        k = flops_per_token or float(np.median(C / (group["N"] * group["D"])))
        rows.append(
            {
                "C": C,
                "N_opt": np.exp(x_star),
                "D_opt": C / (k * np.exp(x_star)),
                "loss_opt": np.polyval(coef, x_star),
                "curvature": coef[0],
                "n_points": len(group),
                "n_kept": int(keep.sum()),
                "vertex_in_range": bool(beyond == 0),
                "flops_per_token": k,
            }
        )
        residuals.append(y[keep] - np.polyval(coef, x[keep]))
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
        diagnostics={
            "n_budgets": len(table),
            "dropped_budgets": dropped,
            "vertices_out_of_range": int((~table["vertex_in_range"]).sum()),
            "flops_per_token": "table" if flops_per_token is None else flops_per_token,
            "mad_threshold": mad_threshold,
            "loss_space": "loss, least squares per budget",
            "stderr_method": "ols",
        },
        tables={"budgets": table},
    )


def _parabola(
    x: np.ndarray, y: np.ndarray, mad_threshold: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients in x (highest power first) and the mask of points kept."""
    keep = np.ones(len(x), dtype=bool)
    while True:
        coef = _polyfit2(x[keep], y[keep])
        if mad_threshold is None:
            return coef, keep
        res = y - np.polyval(coef, x)
        spread = MAD_TO_SIGMA * np.median(np.abs(res[keep] - np.median(res[keep])))
        new = np.abs(res) <= mad_threshold * max(spread, np.finfo(float).tiny)
        if np.unique(x[new]).size < MIN_BUDGET_POINTS or (new == keep).all():
            return coef, keep
        keep = new


def _polyfit2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares parabola, fitted about the mean of x for conditioning, in x's powers."""
    m = x.mean()
    c2, c1, c0 = np.polyfit(x - m, y, 2)
    return np.array([c2, c1 - 2 * c2 * m, c0 - c1 * m + c2 * m * m])
