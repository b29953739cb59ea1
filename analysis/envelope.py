"""The lower envelope of learning curves over compute (Chinchilla Approach 1, Kaplan's L(C_min))."""

import numpy as np
import pandas as pd

from analysis.fit import fit_power, ols
from analysis.result import Fit, misallocation, worst_status
from analysis.table import FLOPS_PER_TOKEN, FitInputError

N_GRID = 200  # log-spaced compute values at which the envelope is read


def lower_envelope(curves: pd.DataFrame, n_grid: int = N_GRID) -> pd.DataFrame:
    """The lowest loss any run reached at each compute, and the run and N that reached it.

    Each run's curve is interpolated in log-log space inside its own compute range only,
    so no run is credited with compute it never spent.
    """
    runs = list(curves.groupby("run", sort=False))
    grid = np.geomspace(curves["C"].min(), curves["C"].max(), n_grid)
    log_loss = np.full((len(runs), n_grid), np.inf)
    for i, (_, run) in enumerate(runs):
        run = run.sort_values("C")
        C = run["C"].to_numpy(float)
        inside = (grid >= C[0]) & (grid <= C[-1])
        log_loss[i, inside] = np.interp(np.log(grid[inside]), np.log(C), np.log(run["loss"]))
    best = np.argmin(log_loss, axis=0)
    covered = np.isfinite(log_loss.min(axis=0))
    N = np.array([run["N"].iloc[0] for _, run in runs], dtype=float)
    return pd.DataFrame(
        {
            "C": grid[covered],
            "loss": np.exp(log_loss.min(axis=0)[covered]),
            "N": N[best[covered]],
            "run": [runs[i][0] for i in best[covered]],
        }
    )


def fit_envelope(
    curves: pd.DataFrame,
    *,
    offset: bool = True,
    n_grid: int = N_GRID,
    flops_per_token: float = FLOPS_PER_TOKEN,
) -> Fit:
    """A power law in C on the envelope of curves (columns run, N, C, loss), and N_opt ∝ C^a.

    The law's parameters are named as for `power` (E, x_c, alpha with x = C). Both fits use
    only compute where the envelope's run is neither the smallest nor the largest model: at
    the ends the optimum may lie outside the sizes trained and the envelope sits above the
    frontier. D_opt = C/(k·N_opt) gives b. Runs must go past their compute-optimal length:
    a run cut short cannot win where it would have, which biases N_opt upwards. Envelope
    points are not independent, so standard errors come from the bootstrap over runs.
    The status is the power law's (`fit_power`), or `degenerate: …` when a or b lies
    outside (0, 1). Raises `FitInputError` with fewer than 2 runs, fewer than 2 interior
    sizes on the envelope, or an envelope that rises with C.
    """
    n_runs = curves["run"].nunique()
    if n_runs < 2:
        raise FitInputError(f"envelope needs at least 2 runs, found {n_runs}")
    env = lower_envelope(curves, n_grid)
    env["interior"] = (env["N"] > curves["N"].min()) & (env["N"] < curves["N"].max())
    inner = env[env["interior"]]
    if inner["N"].nunique() < 2:
        raise FitInputError(
            "envelope needs the lowest curve to come from 2 or more sizes strictly between the "
            f"smallest and largest trained, found {inner['N'].nunique()}: train sizes on both "
            "sides of the optimum"
        )
    law = fit_power(inner, x="C", offset=offset)
    lnC, lnN = np.log(inner["C"].to_numpy()), np.log(inner["N"].to_numpy())
    a, ln_kN, *_ = ols(lnC, lnN)
    b, ln_kD, *_ = ols(lnC, lnC - np.log(flops_per_token) - lnN)
    params = law.params | {"a": a, "b": b, "k_N": float(np.exp(ln_kN)), "k_D": float(np.exp(ln_kD))}
    return Fit(
        law="envelope",
        params=params,
        residuals=law.residuals,
        n_points=len(inner),
        variables=("C",),
        status=worst_status(law.status, misallocation({"a": a, "b": b})),
        diagnostics=law.diagnostics
        | {
            "n_runs": n_runs,
            "n_grid": len(env),
            "flops_per_token": flops_per_token,
            "stderr_method": "none (envelope points are not independent: bootstrap over runs)",
        },
        tables={"envelope": env},
    )
