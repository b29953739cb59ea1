"""Power and Kaplan laws by least squares on ln L from several starts, best kept; the rising
power law y = k·x^a by a line in log-log; and the checks that say when a fit is degenerate."""

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence

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
# An exponent starts no lower than this; one that ends at or below it makes its term a
# constant over the data (0.001 changes a term by 1% over 10 decades of x).
EXPONENT_FLOOR = 1e-3
# A scale constant more than this many decades from 1 has run off to 0 or ∞: the fitted
# term is flat, so the constant is not determined (Kaplan's N_c is 8.8e13, C_c 2.7e28 FLOP).
RUNAWAY_DECADES = 100
# A parameter that moves the fitted ln L by less than this anywhere in the data, when it
# changes by a factor e (a scale constant) or by 100% (an exponent), belongs to a term too
# small there to be measured: 0.1% of the loss, below the scatter of repeated runs.
NEGLIGIBLE_EFFECT = 1e-3
# Starts kept, besides the optimum, for warm-starting bootstrap refits (`warm_starts`).
N_WARM_STARTS = 2
# What SciPy's optimisers raise mid-search on data a law cannot describe (e.g. "array must
# not contain infs or NaNs" from a trust-region step whose model overflowed).
OPTIMISER_ERRORS = (ValueError, ArithmeticError, RuntimeError)


def fit_power(
    df: pd.DataFrame,
    x: str = "N",
    offset: bool = True,
    starts: Sequence[Sequence[float]] | None = None,
) -> Fit:
    """L = E + (x_c/x)^α, or Kaplan's pure (x_c/x)^α; the log-log line starts every search.

    `df` has columns `x` and `loss` (positive, one row per point); `starts` (rows of
    [E,] ln x_c, α) replace the default starts, as `warm_starts` gives for a bootstrap.
    Raises `FitInputError` for too few points or distinct x, and when the loss rises with
    x (a log-log slope ≥ 0): the law describes a falling quantity, and `fit_rising` fits
    a rising one. The status is `degenerate: …` when x_c runs off to 0 or ∞ or α ends at
    `EXPONENT_FLOOR` (`degenerate`), `failed: …` when SciPy raises from every start.
    """
    law = "power with offset" if offset else "power"
    require_points(law, len(df), 3 if offset else 2)
    lnx, lnL = np.log(df[x].to_numpy(float)), np.log(df["loss"].to_numpy(float))
    if np.unique(lnx).size < (3 if offset else 2):
        raise FitInputError(f"{law} needs more distinct values of '{x}', got {np.unique(lnx).size}")
    require_trend(lnx, lnL, x, rising=False)
    L = np.exp(lnL)
    if not offset:
        return _fit_log_space(
            "power",
            ("x_c", "alpha"),
            lambda t: t[1] * (t[0] - lnx),
            lnL,
            starts=starts or [_loglog_start(lnx, lnL)],
            lower=[-np.inf, 0.0],
            upper=[np.inf, np.inf],
            variables=(x,),
        )
    # E from a few fractions of the smallest loss; then the line through ln(L - E) vs ln x.
    starts = starts or [
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


def fit_kaplan_nd(df: pd.DataFrame, starts: Sequence[Sequence[float]] | None = None) -> Fit:
    """Kaplan eq 1.5, L(N, D), on columns N, D, loss; `FitInputError` under 5 points. The
    status names a degenerate optimum or a failed search, as for `fit_power`; `starts`
    (rows of ln N_c, ln D_c, α_N, α_D) replace the default grid."""
    require_points("kaplan-nd", len(df), 4)
    N, D, lnL = df["N"].to_numpy(float), df["D"].to_numpy(float), np.log(df["loss"].to_numpy(float))
    return _fit_log_space(
        "kaplan-nd",
        ("N_c", "D_c", "alpha_N", "alpha_D"),
        lambda t: np.log(laws.kaplan_nd(N, D, np.exp(t[0]), np.exp(t[1]), t[2], t[3])),
        lnL,
        starts=starts or _nd_starts(N, D, lnL),
        lower=[-np.inf, -np.inf, 0.0, 1e-6],
        upper=[np.inf] * 4,
        variables=("N", "D"),
    )


def fit_kaplan_ns(df: pd.DataFrame, starts: Sequence[Sequence[float]] | None = None) -> Fit:
    """Kaplan eq 1.6, L(N, S_min), on learning-curve columns N, S, loss; `FitInputError`
    under 5 points. The status names a degenerate optimum or a failed search; `starts`
    (rows of ln N_c, ln S_c, α_N, α_S) replace the default grid."""
    require_points("kaplan-ns", len(df), 4)
    N, S, lnL = df["N"].to_numpy(float), df["S"].to_numpy(float), np.log(df["loss"].to_numpy(float))
    return _fit_log_space(
        "kaplan-ns",
        ("N_c", "S_c", "alpha_N", "alpha_S"),
        lambda t: np.log(laws.kaplan_ns(N, S, np.exp(t[0]), np.exp(t[1]), t[2], t[3])),
        lnL,
        starts=starts or _ns_starts(N, S, lnL),
        lower=[-np.inf, -np.inf, 0.0, 0.0],
        upper=[np.inf] * 4,
        variables=("N", "S"),
    )


def fit_rising(df: pd.DataFrame, x: str = "C") -> Fit:
    """y = k·x^a on columns `x` and `loss` (y, positive), as a least-squares line in log-log.

    With multiplicative noise, y = k·x^a·ε and ln ε normal, least squares on ln y against
    ln x is the maximum-likelihood estimator, and it is unbiased and better behaved than
    nonlinear least squares on y (Xiao, White, Hooten & Durham 2011, "On the use of
    log-transformation vs. nonlinear regression for analyzing biological power laws",
    Ecology 92:1887–1894). Allocation tables fitted this way: Hoffmann et al. 2022's
    N_opt ∝ C^a. Standard errors are OLS's (k's by the delta method). Raises
    `FitInputError` for fewer than 3 points or 2 distinct x, and when y falls with x (a
    log-log slope ≤ 0): `fit_power` fits a falling quantity.
    """
    require_points("rising", len(df), 2)
    lnx, lny = np.log(df[x].to_numpy(float)), np.log(df["loss"].to_numpy(float))
    if np.unique(lnx).size < 2:
        raise FitInputError(f"rising needs 2 or more distinct values of '{x}', got 1")
    a, ln_k, se_a, se_ln_k = require_trend(lnx, lny, x, rising=True)
    k = float(np.exp(ln_k))
    residuals = lny - (ln_k + a * lnx)
    return Fit(
        law="rising",
        params={"k": k, "a": a},
        stderr={"k": k * se_ln_k, "a": se_a},
        residuals=residuals,
        n_points=len(lny),
        variables=(x,),
        diagnostics={
            "objective": float(residuals @ residuals),
            "loss_space": "ln y, least squares (a line in log-log)",
            "stderr_method": "ols",
        },
    )


def require_trend(
    lnx: np.ndarray, lny: np.ndarray, x: str, *, rising: bool
) -> tuple[float, float, float, float]:
    """The log-log OLS line (slope, intercept, their standard errors) when y moves with x
    the way the law needs: up for `rising`, down for `power`; else `FitInputError`."""
    line = ols(lnx, lny)
    if (line[0] > 0) != rising:
        law, form, other = (
            ("rising", "y = k·x^a describes a quantity that rises", "power: L = E + (x_c/x)^α")
            if rising
            else ("power", "L = E + (x_c/x)^α describes a quantity that falls", "rising: y = k·x^a")
        )
        raise FitInputError(
            f"{law}: {form} with x, and this one {'falls' if rising else 'rises'} with "
            f"'{x}' (log-log slope {line[0]:+.3g}); use --law {other}"
        )
    return line


def degenerate(
    params: Mapping[str, float],
    scales: Iterable[str],
    exponents: Iterable[str],
    negligible: Sequence[str] = (),
    ceiling: float = np.inf,
) -> str:
    """`degenerate: <why>` when a scale constant ran off to 0 or ∞ (beyond
    `RUNAWAY_DECADES`), an exponent ended at or below `EXPONENT_FLOOR` or at or above the
    search's `ceiling`, or the parameters named in `negligible` barely move the fit
    (`NEGLIGIBLE_EFFECT`); else "".

    Each makes a term constant or vanishing over the data, which the offset (or the other
    term) absorbs: the data do not determine its constant or exponent, whatever the
    objective.
    """
    why, named = [], set()
    for name in scales:
        decades = np.log10(params[name]) if params[name] > 0 else -np.inf
        if not abs(decades) <= RUNAWAY_DECADES:
            why.append(f"{name} ran off to {'∞' if decades > 0 else '0'} ({params[name]:.3g})")
            named.add(name)
    for name in exponents:
        if not EXPONENT_FLOOR < params[name] < ceiling * (1 - 1e-6):
            edge = EXPONENT_FLOOR if params[name] < ceiling else ceiling
            why.append(f"{name} = {params[name]:.3g} ended at its clamp {edge:g}")
            named.add(name)
    unmoved = [name for name in negligible if name not in named]
    if unmoved:
        why.append(
            f"changing {' or '.join(unmoved)} moves the fitted loss by < "
            f"{NEGLIGIBLE_EFFECT:.1%} anywhere in the data"
        )
    if not why:
        return ""
    return f"degenerate: {'; '.join(why)} (a term flat or vanishing over the data)"


def solve_each(
    solve: Callable[[np.ndarray], OptimizeResult], starts: Iterable[np.ndarray]
) -> tuple[list[tuple[np.ndarray, OptimizeResult]], list[str]]:
    """(start, result) of `solve` from every start; one on which SciPy raises
    (`OPTIMISER_ERRORS`) is recorded as `Type: message` and the others go on."""
    solved, errors = [], []
    for start in starts:
        try:
            solved.append((start, solve(start)))
        except OPTIMISER_ERRORS as error:
            errors.append(f"{type(error).__name__}: {error}")
    return solved, errors


def warm_starts(fit: Fit) -> list[list[float]]:
    """Starts for refitting `fit`'s law on a bootstrap resample: its optimum (scale constants
    as logarithms, as the fitters search them), then the `N_WARM_STARTS` starts that ended
    lowest. A resample's optimum lies near the full data's, so these replace the grid."""
    optimum = [np.log(v) if name in LOG_SCALED else v for name, v in fit.params.items()]
    return [optimum, *fit.diagnostics.get("best_starts", [])]


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
    alpha = max(-slope, EXPONENT_FLOOR)
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
    """Least squares on ln L from every start; keep the best, report how many starts agreed.

    A start that overflows is skipped and one on which SciPy raises is counted; when every
    start raises, the fit's status is `failed: …` with NaN parameters.
    """
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        finite = [  # a start can overflow; the others go on
            start
            for start in np.clip(np.asarray(starts, float), lower, upper)
            if np.isfinite(log_model(start)).all()
        ]
        solved, errors = solve_each(
            lambda start: least_squares(
                lambda t: log_model(t) - lnL, start, bounds=(lower, upper), x_scale="jac"
            ),
            finite,
        )
    solved.sort(key=lambda pair: pair[1].cost)
    runs = [run for _, run in solved]
    if not finite:
        raise FitInputError(f"{law}: no starting point gives a finite loss on this data")
    n = len(lnL)
    if not runs:
        why = f"SciPy's least_squares raised from all {len(errors)} starts ({errors[0]})"
        return Fit.failed(law, tuple(names), variables, n, why)
    best = runs[0]
    theta = best.x
    se_theta = _jacobian_stderr(best, n)
    params, stderr = {}, {}
    with np.errstate(over="ignore", invalid="ignore"):  # a runaway constant is reported below
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
        status=_status(best, params, _negligible(best, names)),
        diagnostics={
            "objective": float(2 * best.cost),
            "loss_space": "ln L, least squares",
            "iterations": int(best.nfev),
            "n_starts": len(starts),
            "n_failed_starts": len(errors),
            "n_at_best": int(
                sum(r.cost <= best.cost * (1 + SAME_OPTIMUM_RTOL) + 1e-15 for r in runs)
            ),
            "best_starts": [start.tolist() for start, _ in solved[:N_WARM_STARTS]],
            "stderr_method": "jacobian",
        },
    )


def _jacobian_stderr(res: OptimizeResult, n: int) -> np.ndarray:
    """Standard errors of the searched parameters, shape (p,), from the Gauss-Newton
    covariance s²(JᵀJ)⁺ with s² = Σr²/(n − p) (Seber & Wild 1989, ch. 2).

    A column of J that overflowed (a constant run off to ∞ at a degenerate optimum, where the
    status already says so) has no standard error: NaN, and the others are computed without
    it, so that one runaway parameter cannot stop the fit (pinv's SVD raises on an inf)."""
    jac = np.asarray(res.jac, float)
    p = jac.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        usable = np.isfinite(jac).all(axis=0) & np.isfinite(np.square(jac).sum(axis=0))
    se = np.full(p, np.nan)
    if usable.any():
        J = jac[:, usable]
        cov = 2 * res.cost / (n - p) * np.linalg.pinv(J.T @ J)
        se[usable] = np.sqrt(np.clip(np.diag(cov), 0, None))
    return se


def _negligible(res: OptimizeResult, names: Sequence[str]) -> list[str]:
    """Parameters (not the offset E) whose change by a factor e (scale constants) or by 100%
    (exponents) moves the fitted ln L by less than `NEGLIGIBLE_EFFECT` at every point."""
    steps = [1.0 if name in LOG_SCALED else abs(t) for name, t in zip(names, res.x, strict=True)]
    effect = np.abs(res.jac).max(axis=0) * steps
    return [n for n, e in zip(names, effect, strict=True) if n != "E" and e < NEGLIGIBLE_EFFECT]


def _status(res: OptimizeResult, params: Mapping[str, float], negligible: Sequence[str]) -> str:
    """Say when the optimum is not a clean interior one, instead of returning it silently:
    a degenerate optimum first (a constant that ran off is also what stops the search)."""
    if not np.isfinite(res.x).all():
        return f"not_converged: {res.message}"
    exponents = [name for name in params if name.startswith("alpha")]
    scales = [name for name in params if name in LOG_SCALED]
    why = degenerate(params, scales, exponents, negligible)
    if why:
        return why
    if not res.success:
        return f"not_converged: {res.message}"
    hit = [name for name, active in zip(params, res.active_mask, strict=True) if active]
    return "hit_bound:" + ",".join(hit) if hit else "ok"
