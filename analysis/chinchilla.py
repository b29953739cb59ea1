"""Chinchilla Approach 3, E + A/N^α + B/D^β, fitted the way Hoffmann et al. and Epoch AI fit it.

The objective is Σ Huber_δ(LSE(a − α ln N, b − β ln D, e) − ln L) with A = e^a, B = e^b,
E = e^e and δ = 1e-3. `grid` runs L-BFGS-B from every point of the published 5^5 grid and
keeps the best; `varpro` profiles out (E, A, B) by non-negative least squares for each
(α, β) and searches only those two, which is far cheaper and better conditioned.
"""

import itertools
import time
from collections.abc import Callable
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import minimize, nnls
from threadpoolctl import threadpool_limits

from analysis.fit import (
    N_WARM_STARTS,
    NEGLIGIBLE_EFFECT,
    OPTIMISER_ERRORS,
    SAME_OPTIMUM_RTOL,
    degenerate,
    solve_each,
)
from analysis.result import Fit
from analysis.table import require_points

HUBER_DELTA = 1e-3
NAMES = ("E", "A", "B", "alpha", "beta")
# Hoffmann's grid as Epoch ran it (5 values each, 3,125 starts), in (a, b, e, α, β) order.
GRID = (
    (0, 5, 10, 15, 20),
    (0, 5, 10, 15, 20),
    (-1, -0.5, 0, 0.5, 1),
    (0, 0.5, 1, 1.5, 2),
    (0, 0.5, 1, 1.5, 2),
)
# A restart from the answer that lowers the summed objective by more than this fraction
# means the search stopped early (the averaged-Huber failure lowers it by ~8%).
RESTART_RTOL = 1e-3
# L-BFGS-B tolerances that run to the optimum. SciPy's defaults stop once an objective
# below 1 falls by less than 2e-9 in a step: enough from the 3,125-point grid, where the
# best start converges, not for a single start near the optimum (bootstrap refits).
TIGHT = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000}
VARPRO_GRID = np.linspace(0.05, 2.0, 14)  # coarse (α, β) grid that seeds the profile search
MAX_EXPONENT = 5.0  # VarPro searches α, β in [0, 5]; an exponent at 5 is stuck on its clamp
IRLS_STEPS = 20  # reweightings per (α, β); more move the answer < 0.05%


def published_grid() -> np.ndarray:
    """The 3,125 initial points, one (a, b, e, α, β) row each."""
    return np.array(list(itertools.product(*GRID)), dtype=float)


def huber_lse(
    theta: np.ndarray,
    lnN: np.ndarray,
    lnD: np.ndarray,
    lnL: np.ndarray,
    delta: float = HUBER_DELTA,
    scale: float = 1.0,
) -> tuple[float, np.ndarray]:
    """The Huber objective and its analytic gradient, vectorised over points; scale=1/n averages."""
    a, b, e, alpha, beta = theta
    t1, t2 = a - alpha * lnN, b - beta * lnD
    m = np.maximum(np.maximum(t1, t2), e)
    e1, e2, e3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
    s = e1 + e2 + e3
    r = m + np.log(s) - lnL
    psi = np.clip(r, -delta, delta)  # Huber's ψ: the derivative of each term in r
    q = psi / s
    w1, w2 = q * e1, q * e2
    grad = np.array([w1.sum(), w2.sum(), (q * e3).sum(), -(w1 @ lnN), -(w2 @ lnD)])
    return scale * float(np.sum(psi * (r - 0.5 * psi))), scale * grad


def log_prediction(theta: np.ndarray, lnN: np.ndarray, lnD: np.ndarray) -> np.ndarray:
    """ln L̂ = LSE(a − α ln N, b − β ln D, e)."""
    a, b, e, alpha, beta = theta
    return np.logaddexp(np.logaddexp(a - alpha * lnN, b - beta * lnD), e)


def fit_chinchilla(
    df: pd.DataFrame,
    *,
    method: Literal["grid", "varpro"] = "grid",
    reduction: Literal["sum", "mean"] = "sum",
    starts: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
    lbfgs_options: dict | None = None,
) -> Fit:
    """Approach 3 on columns N, D, loss; `starts` (rows of a, b, e, α, β) replace the grid.

    `lbfgs_options` go to L-BFGS-B (default: SciPy's, as Epoch ran it). `reduction="mean"`
    averages the Huber terms instead of summing them; it exists to show the failure
    Besiroglu et al. (2024) traced in Hoffmann et al.: L-BFGS-B stops early. Raises
    `FitInputError` for 5 points or fewer; when SciPy raises from every start, the status
    is `failed: …` with NaN parameters.
    """
    require_points("chinchilla", len(df), 5)
    if method not in ("grid", "varpro"):
        raise ValueError(f"unknown chinchilla method {method!r} (use 'grid' or 'varpro')")
    lnN, lnD = np.log(df["N"].to_numpy(float)), np.log(df["D"].to_numpy(float))
    lnL = np.log(df["loss"].to_numpy(float))
    data = (lnN, lnD, lnL, delta)
    began = time.perf_counter()
    try:
        if method == "grid":
            scale = 1.0 if reduction == "sum" else 1.0 / len(lnL)
            grid = published_grid() if starts is None else starts
            theta, diagnostics = _grid_search(data, grid, scale, lbfgs_options)
        else:
            theta, diagnostics = _varpro(data, starts)
        restart = _restart(theta, data)
    except OPTIMISER_ERRORS as error:
        why = f"SciPy raised {type(error).__name__}: {error}"
        return Fit.failed("chinchilla", NAMES, ("N", "D"), len(lnL), why)
    objective, grad = huber_lse(theta, *data)
    diagnostics |= {
        "method": method,
        "reduction": reduction,
        "delta": delta,
        "objective": objective,
        "restart_objective": restart,
        "grad_max": float(np.abs(grad).max()),
        "seconds": time.perf_counter() - began,
    }
    a, b, e, alpha, beta = theta
    with np.errstate(over="ignore"):  # a runaway constant is reported by the status
        values = np.exp(e), np.exp(a), np.exp(b), alpha, beta
    params = {name: float(value) for name, value in zip(NAMES, values, strict=True)}
    return Fit(
        law="chinchilla",
        params=params,
        residuals=lnL - log_prediction(theta, lnN, lnD),
        n_points=len(lnL),
        variables=("N", "D"),
        status=_status(params, diagnostics, float(np.exp(lnL.min())), _shares(theta, lnN, lnD)),
        diagnostics=diagnostics,
    )


def bootstrap_refit(fit: Fit) -> Callable[[pd.DataFrame], Fit]:
    """How a bootstrap resample is refitted: from `warm_starts`, with tight tolerances.

    A resample's optimum lies near the full-data one, so the optimum and the few grid
    starts that did best replace the 3,125-point grid. Under SciPy's default tolerances a
    refit begun at the optimum stops almost at once and the bootstrap collapses onto it
    (A's 95% interval was 478.2–478.4 instead of ~300–700); `TIGHT` runs each to the end.
    """
    method = fit.diagnostics["method"]
    return partial(fit_chinchilla, method=method, starts=warm_starts(fit), lbfgs_options=TIGHT)


FLOOR_START = 1e-6  # E of a warm start from a fit whose E sits at 0


def warm_starts(fit: Fit) -> np.ndarray:
    """The fit's optimum, then the grid starts that ended lowest, as (a, b, e, α, β) rows."""
    p = fit.params
    # E at its bound 0 (VarPro): start just above it, since the grid's e = ln E has no -inf
    floor = max(p["E"], FLOOR_START)
    optimum = [np.log(p["A"]), np.log(p["B"]), np.log(floor), p["alpha"], p["beta"]]
    return np.array([optimum, *fit.diagnostics.get("best_starts", [])], dtype=float)


@threadpool_limits.wrap(limits=1, user_api="blas")  # tiny BLAS calls: threads only cost
def _grid_search(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, float],
    starts: np.ndarray,
    scale: float,
    options: dict | None,
) -> tuple[np.ndarray, dict]:
    """L-BFGS-B from every start; the best is kept. A start on which SciPy raises is
    counted; RuntimeError when every start does."""
    solved, errors = solve_each(
        lambda x0: minimize(
            huber_lse, x0, args=(*data, scale), jac=True, method="L-BFGS-B", options=options
        ),
        np.atleast_2d(starts),
    )
    if not solved:
        raise RuntimeError(f"L-BFGS-B raised from all {len(errors)} starts ({errors[0]})")
    solved_starts, runs = np.array([x0 for x0, _ in solved]), [run for _, run in solved]
    ends = np.array([r.fun for r in runs])
    order = np.argsort(ends, kind="stable")
    best = runs[order[0]]
    return best.x, {
        "iterations": int(best.nit),
        "median_iterations": float(np.median([r.nit for r in runs])),
        "n_starts": len(runs) + len(errors),
        "n_failed_starts": len(errors),
        "n_at_best": int(np.sum(ends <= ends[order[0]] * (1 + SAME_OPTIMUM_RTOL))),
        "converged": bool(best.success),
        "message": str(best.message),
        "best_starts": solved_starts[order[:N_WARM_STARTS]].tolist(),
    }


@threadpool_limits.wrap(limits=1, user_api="blas")  # tiny BLAS calls: threads only cost
def _varpro(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, float], starts: np.ndarray | None
) -> tuple[np.ndarray, dict]:
    """Search (α, β) only, with (E, A, B) solved exactly-enough for each by Huber-IRLS NNLS."""
    if starts is None:
        seeds = list(itertools.product(VARPRO_GRID, VARPRO_GRID))
    else:
        seeds = [tuple(s[3:5]) for s in np.atleast_2d(starts)]
    seed = min(seeds, key=lambda ab: _profile(ab, data))
    res = minimize(
        _profile,
        seed,
        args=(data,),
        method="Nelder-Mead",
        bounds=[(0, MAX_EXPONENT)] * 2,
        options={"xatol": 1e-7, "fatol": 1e-14, "maxiter": 2000},
    )
    theta = _profiled_theta(res.x, data)
    return theta, {
        "iterations": int(res.nit),
        "n_starts": len(seeds),
        "n_at_best": 1,
        "converged": bool(res.success),
        "message": str(res.message),
    }


def _profile(ab: np.ndarray, data: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> float:
    """The Huber objective at (α, β) with (E, A, B) profiled out."""
    return huber_lse(_profiled_theta(ab, data), *data)[0]


def _profiled_theta(
    ab: np.ndarray, data: tuple[np.ndarray, np.ndarray, np.ndarray, float]
) -> np.ndarray:
    """(a, b, e, α, β) with E, A, B ≥ 0 from NNLS, reweighted towards the Huber loss on ln L.

    Relative residuals (L̂ − L)/L stand in for ln L̂ − ln L; IRLS weights min(1, δ/|r|)
    turn the squares into Huber terms. Columns are normalised for conditioning.
    """
    lnN, lnD, lnL, delta = data
    alpha, beta = ab
    L = np.exp(lnL)
    X = np.stack([np.ones_like(lnN), np.exp(-alpha * lnN), np.exp(-beta * lnD)], axis=1)
    norms = np.linalg.norm(X, axis=0)
    X = X / norms
    w = 1 / L
    coef = np.zeros(3)
    for _ in range(IRLS_STEPS):
        new, _ = nnls(X * w[:, None], L * w)
        r = np.log(np.maximum(X @ new, 1e-300)) - lnL
        w = np.sqrt(np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))) / L
        if np.abs(new - coef).max() <= 1e-8 * np.abs(new).max():
            break
        coef = new
    E, A, B = new / norms
    with np.errstate(divide="ignore"):
        return np.array([np.log(A), np.log(B), np.log(E), alpha, beta])


@threadpool_limits.wrap(limits=1, user_api="blas")  # tiny BLAS calls: threads only cost
def _restart(theta: np.ndarray, data: tuple[np.ndarray, np.ndarray, np.ndarray, float]) -> float:
    """The summed objective after one more L-BFGS-B run from `theta`.

    The gradient is no test of convergence here: with δ = 1e-3 most points sit on the
    Huber's linear arm and converged fits keep gradients of 1e-4; a restart with `TIGHT`
    tolerances is the test (SciPy's defaults are what end the averaged fit early).
    """
    res = minimize(huber_lse, theta, args=data, jac=True, method="L-BFGS-B", options=TIGHT)
    return float(res.fun)


def _shares(theta: np.ndarray, lnN: np.ndarray, lnD: np.ndarray) -> dict[str, float]:
    """The largest share of the fitted loss that A/N^α and B/D^β each reach over the data."""
    a, b, e, alpha, beta = theta
    log_terms = np.stack([a - alpha * lnN, b - beta * lnD, np.full_like(lnN, e)])
    with np.errstate(invalid="ignore"):  # a term at -inf throughout has share 0
        shares = np.exp(log_terms - np.logaddexp.reduce(log_terms, axis=0))
    return {
        "A": float(np.nanmax(shares[0], initial=0)),
        "B": float(np.nanmax(shares[1], initial=0)),
    }


def _status(
    params: dict[str, float], diagnostics: dict, min_loss: float, shares: dict[str, float]
) -> str:
    """Name what makes the optimum untrustworthy: a degenerate term, early stopping, E = 0.

    An exponent at `MAX_EXPONENT` is on VarPro's clamp (for the grid, past any published
    one): its term fits the smallest sizes' noise. A term whose share of the loss stays
    below `NEGLIGIBLE_EFFECT` (changing its constant by a factor e moves ln L by that
    share) is not measured. The restart decides convergence, not the optimiser's own flag:
    under `TIGHT` tolerances L-BFGS-B ends ~2% of refits at the optimum with an "ABNORMAL"
    line search.
    """
    negligible = [
        name
        for term, exponent in (("A", "alpha"), ("B", "beta"))
        if shares[term] < NEGLIGIBLE_EFFECT
        for name in (term, exponent)
    ]
    why = degenerate(params, ("A", "B"), ("alpha", "beta"), negligible, MAX_EXPONENT)
    if why:
        return why
    drop = 1 - diagnostics["restart_objective"] / diagnostics["objective"]
    if drop > RESTART_RTOL:
        return (
            f"not_converged: a restart from the answer lowers the summed objective by "
            f"{drop:.1%} (the search stopped early)"
        )
    return "hit_bound:E" if not params["E"] > 1e-6 * min_loss else "ok"
