"""Power and Kaplan laws by least squares on ln L from several starts, best kept."""

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeResult, least_squares
from threadpoolctl import threadpool_limits

from analysis import laws
from analysis.result import Fit
from analysis.table import FitInputError, require_points

# Scale constants span tens of decades, so they are fitted as logarithms.
LOG_SCALED = frozenset({"x_c", "N_c", "D_c", "S_c"})
# Two starts reach the same optimum when their objectives agree to this relative tolerance.
SAME_OPTIMUM_RTOL = 1e-6


def fit_power(df: pd.DataFrame, x: str = "N", offset: bool = True) -> Fit:
    """L = E + (x_c/x)^α, or Kaplan's pure (x_c/x)^α; the log-log line starts every search."""
    law = "power with offset" if offset else "power"
    require_points(law, len(df), 3 if offset else 2)
    lnx, lnL = np.log(df[x].to_numpy(float)), np.log(df["loss"].to_numpy(float))
    if np.unique(lnx).size < (3 if offset else 2):
        raise FitInputError(f"{law} needs more distinct values of '{x}', got {np.unique(lnx).size}")
    L = np.exp(lnL)
    if not offset:
        return _fit_log_space(
            "power",
            ("x_c", "alpha"),
            lambda t: t[1] * (t[0] - lnx),
            lnL,
            starts=[_loglog_start(lnx, lnL)],
            lower=[-np.inf, 0.0],
            upper=[np.inf, np.inf],
            variables=(x,),
        )
    # E from a few fractions of the smallest loss; then the line through ln(L - E) vs ln x.
    starts = [
        [E, *_loglog_start(lnx, np.log(L - E))]
        for E in L.min() * np.array([0, 0.25, 0.5, 0.75, 0.9])
    ]
    return _fit_log_space(
        "power",
        ("E", "x_c", "alpha"),
        lambda t: np.log(laws.power(np.exp(lnx), np.exp(t[1]), t[2], t[0])),
        lnL,
        starts=starts,
        lower=[0.0, -np.inf, 0.0],
        upper=[L.max(), np.inf, np.inf],
        variables=(x,),
    )


def fit_kaplan_nd(df: pd.DataFrame) -> Fit:
    """Kaplan eq 1.5, L(N, D), on columns N, D, loss."""
    require_points("kaplan-nd", len(df), 4)
    N, D, lnL = df["N"].to_numpy(float), df["D"].to_numpy(float), np.log(df["loss"].to_numpy(float))
    return _fit_log_space(
        "kaplan-nd",
        ("N_c", "D_c", "alpha_N", "alpha_D"),
        lambda t: np.log(laws.kaplan_nd(N, D, np.exp(t[0]), np.exp(t[1]), t[2], t[3])),
        lnL,
        starts=_nd_starts(N, D, lnL),
        lower=[-np.inf, -np.inf, 0.0, 1e-6],
        upper=[np.inf] * 4,
        variables=("N", "D"),
    )


def fit_kaplan_ns(df: pd.DataFrame) -> Fit:
    """Kaplan eq 1.6, L(N, S_min), on learning-curve columns N, S, loss."""
    require_points("kaplan-ns", len(df), 4)
    N, S, lnL = df["N"].to_numpy(float), df["S"].to_numpy(float), np.log(df["loss"].to_numpy(float))
    return _fit_log_space(
        "kaplan-ns",
        ("N_c", "S_c", "alpha_N", "alpha_S"),
        lambda t: np.log(laws.kaplan_ns(N, S, np.exp(t[0]), np.exp(t[1]), t[2], t[3])),
        lnL,
        starts=_ns_starts(N, S, lnL),
        lower=[-np.inf, -np.inf, 0.0, 0.0],
        upper=[np.inf] * 4,
        variables=("N", "S"),
    )


def ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Slope, intercept and their standard errors (NaN with no residual degrees of freedom)."""
    X = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(x) - 2
    if dof < 1:
        return float(slope), float(intercept), float("nan"), float("nan")
    s2 = np.sum((y - X @ [slope, intercept]) ** 2) / dof
    se = np.sqrt(np.diag(s2 * np.linalg.inv(X.T @ X)))
    return float(slope), float(intercept), float(se[0]), float(se[1])


def _loglog_start(lnx: np.ndarray, lny: np.ndarray) -> list[float]:
    """(ln x_c, α) of the least-squares line ln y = α(ln x_c − ln x): exact for the pure form."""
    slope, intercept, *_ = ols(lnx, lny)
    alpha = max(-slope, 1e-3)
    return [intercept / alpha, alpha]


def _ns_starts(N: np.ndarray, S: np.ndarray, lnL: np.ndarray) -> list[list[float]]:
    """Starts splitting the median loss at the median point between the N and S terms."""
    lnN, lnS, lnL0 = np.median(np.log(N)), np.median(np.log(S)), np.median(lnL)
    return [
        [lnN + (np.log(share) + lnL0) / aN, lnS + (np.log(1 - share) + lnL0) / aS, aN, aS]
        for aN, aS, share in itertools.product((0.05, 0.1, 0.3), (0.3, 0.7, 1.5), (0.25, 0.75))
    ]


def _nd_starts(N: np.ndarray, D: np.ndarray, lnL: np.ndarray) -> list[list[float]]:
    """Starts splitting the bracket L^(1/α_D) at the median point between its two terms."""
    lnN, lnD, lnL0 = np.median(np.log(N)), np.median(np.log(D)), np.median(lnL)
    return [
        [lnN + (aD * np.log(share) + lnL0) / aN, lnD + np.log(1 - share) + lnL0 / aD, aN, aD]
        for aN, aD, share in itertools.product((0.05, 0.1, 0.3), (0.05, 0.1, 0.3), (0.25, 0.75))
    ]


@threadpool_limits.wrap(limits=1, user_api="blas")  # tiny BLAS calls: threads only cost
def _fit_log_space(
    law: str,
    names: Sequence[str],
    log_model: Callable[[np.ndarray], np.ndarray],
    lnL: np.ndarray,
    starts: Sequence[Sequence[float]],
    lower: Sequence[float],
    upper: Sequence[float],
    variables: tuple[str, ...],
) -> Fit:
    """Least squares on ln L from every start; keep the best, report how many starts agreed."""
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    runs = []
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for start in np.clip(np.asarray(starts, float), lower, upper):
            if np.isfinite(log_model(start)).all():  # a start can overflow; the others go on
                runs.append(
                    least_squares(
                        lambda t: log_model(t) - lnL, start, bounds=(lower, upper), x_scale="jac"
                    )
                )
    if not runs:
        raise FitInputError(f"{law}: no starting point gives a finite loss on this data")
    best = min(runs, key=lambda r: r.cost)
    n, p = len(lnL), len(names)
    theta = best.x
    cov = 2 * best.cost / (n - p) * np.linalg.pinv(best.jac.T @ best.jac)
    se_theta = np.sqrt(np.clip(np.diag(cov), 0, None))
    params, stderr = {}, {}
    for name, t, se in zip(names, theta, se_theta, strict=True):
        value = float(np.exp(t)) if name in LOG_SCALED else float(t)
        params[name] = value
        stderr[name] = float(value * se) if name in LOG_SCALED else float(se)  # delta method
    return Fit(
        law=law,
        params=params,
        stderr=stderr,
        residuals=-best.fun,
        n_points=n,
        variables=variables,
        status=_status(best, names),
        diagnostics={
            "objective": float(2 * best.cost),
            "loss_space": "ln L, least squares",
            "iterations": int(best.nfev),
            "n_starts": len(starts),
            "n_at_best": int(
                sum(r.cost <= best.cost * (1 + SAME_OPTIMUM_RTOL) + 1e-15 for r in runs)
            ),
            "stderr_method": "jacobian",
        },
    )


def _status(res: OptimizeResult, names: Sequence[str]) -> str:
    """Say when the optimum is not a clean interior one, instead of returning it silently."""
    if not res.success or not np.isfinite(res.x).all():
        return f"not_converged: {res.message}"
    hit = [name for name, active in zip(names, res.active_mask, strict=True) if active]
    return "hit_bound:" + ",".join(hit) if hit else "ok"
