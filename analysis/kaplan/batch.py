"""Finding 8, the critical batch size against the loss: from the gradient noise scale
where runs recorded it, else from runs of one size at several batch sizes. Its two
methods and the noise-scale points the report plots make it a module of its own.
"""

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fit import ols
from analysis.kaplan.constants import BCRIT_R2, KAPLAN
from analysis.kaplan.findings import reach
from analysis.kaplan.verdict import Finding, Selection


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
    estimates, used = [], []
    for N in varied:
        cur = curves[curves["run"].isin(size.index[size == N])].sort_values("S")
        used += list(size.index[size == N])
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
    kept = {
        "measured": f"slope {slope:.2f} of ln B_crit on ln L, R² = {r2:.2f}",
        "met": bool(slope < 0 and r2 >= BCRIT_R2),
        "selection": Selection.of(
            pd.DataFrame({"run": used, "B": batch[used].to_numpy()}), ["B"], run="run"
        ),
    }
    if kept["met"]:
        reason = "B_crit grows as the loss falls, as a power"
        return Finding(8, "reproduced", evidence, reason, numbers, **kept)
    if slope < 0:
        return Finding(
            8, "partly", evidence, f"the trend is right but R² < {BCRIT_R2}", numbers, **kept
        )
    reason = "B_crit does not grow as the loss falls"
    return Finding(8, "not reproduced", evidence, reason, numbers, **kept)


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
    kept = {
        "measured": f"slope {slope:.2f} (95% {low:.2f} to {high:.2f})",
        "met": bool(high < 0),
        "selection": Selection.of(points, ["N"], run="run"),
    }
    if high < 0:
        return Finding(8, "reproduced", evidence,
                       "the noise scale grows as the loss falls, as a power", numbers, **kept)
    if slope < 0:
        return Finding(8, "partly", evidence,
                       "the trend is right but its interval includes no trend", numbers, **kept)
    return Finding(8, "not reproduced", evidence,
                   "the noise scale does not grow as the loss falls", numbers, **kept)
