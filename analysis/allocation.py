"""Compute-optimal N and D from a fitted L(N, D), and loss predictions, with bootstrap bands."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from analysis import laws
from analysis.result import Fit, jsonable, worst_status
from analysis.table import FLOPS_PER_TOKEN
from analysis.uncertainty import LEVEL, percentile_interval


def allocation_params(law: str, params: dict[str, float]) -> dict[str, float]:
    """G, a, b with N_opt = G·(C/k)^a, D_opt = (C/k)^b / G, minimising L(N, D) at C = k·N·D.

    Chinchilla (Hoffmann eq 4): G = (αA/(βB))^(1/(α+β)), a = β/(α+β).
    Kaplan eq 1.5, with p = α_N/α_D: G = (p·N_c^p/D_c)^(1/(1+p)), a = 1/(1+p).
    """
    p = {k: np.float64(v) for k, v in params.items()}  # a degenerate fit's 0 gives inf, not a raise
    with np.errstate(all="ignore"):
        if law == "chinchilla":
            alpha, beta = p["alpha"], p["beta"]
            G = (alpha * p["A"] / (beta * p["B"])) ** (1 / (alpha + beta))
            a = beta / (alpha + beta)
        elif law == "kaplan-nd":
            ratio = p["alpha_N"] / p["alpha_D"]
            G = np.exp((np.log(ratio) + ratio * np.log(p["N_c"]) - np.log(p["D_c"])) / (1 + ratio))
            a = 1 / (1 + ratio)
        else:
            raise ValueError(f"compute-optimal allocation needs an L(N, D) law, not {law!r}")
    return {"G": float(G), "a": float(a), "b": float(1 - a)}


def misallocation(exponents: Mapping[str, float]) -> str:
    """`degenerate: …` naming each exponent of N_opt ∝ C^a, D_opt ∝ C^b outside (0, 1), else "".

    With C = k·N·D, a + b = 1: an exponent outside (0, 1) makes the other negative, so
    N_opt or D_opt would shrink as compute grows, which no loss that falls in both N and D
    allows (Hoffmann et al. 2022 eq 4: a = β/(α+β)). It comes from optima the data did not
    bracket, not from the law.
    """
    outside = [f"{name} = {value:.3g}" for name, value in exponents.items() if not 0 < value < 1]
    if not outside:
        return ""
    return (
        f"degenerate: {', '.join(outside)} outside (0, 1): N_opt or D_opt would shrink as "
        "compute grows"
    )


@dataclass(frozen=True)
class Allocation:
    """The compute-optimal split of a fitted L(N, D), with intervals from its bootstrap draws."""

    law: str
    params: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    samples: pd.DataFrame | None
    flops_per_token: float = FLOPS_PER_TOKEN
    level: float = LEVEL
    status: str = "ok"  # the fit's, or `degenerate: …` when a or b lies outside (0, 1)

    def at(self, C: ArrayLike) -> pd.DataFrame:
        """N_opt, D_opt and tokens per parameter at each compute C, with interval columns."""
        C = np.atleast_1d(np.asarray(C, float))
        out = pd.DataFrame({"C": C})
        p = self.params
        point = _split(p["G"], p["a"], p["b"], C / self.flops_per_token)
        draws = None
        if self.samples is not None and len(self.samples) > 1:
            s = self.samples
            draws = _split(
                *(s[k].to_numpy()[:, None] for k in ("G", "a", "b")),
                C[None, :] / self.flops_per_token,
            )
        for i, name in enumerate(("N_opt", "D_opt", "tokens_per_param")):
            out[name] = point[i]
            if draws is not None:
                out[f"{name}_lo"], out[f"{name}_hi"] = percentile_interval(draws[i], self.level)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return jsonable(
            {
                "law": self.law,
                "params": self.params,
                "status": self.status,
                "flops_per_token": self.flops_per_token,
                "intervals": {k: list(v) for k, v in self.intervals.items()},
            }
        )


def compute_optimal(fit: Fit, flops_per_token: float = FLOPS_PER_TOKEN) -> Allocation:
    """The allocation implied by `fit`, propagated through each of its bootstrap draws; its
    status is the fit's, or `degenerate: …` when a or b lies outside (0, 1)."""
    level = fit.diagnostics.get("bootstrap", {}).get("level", LEVEL)
    samples, intervals = None, {}
    if fit.samples is not None and len(fit.samples) > 1:
        samples = pd.DataFrame(
            [allocation_params(fit.law, row) for row in fit.samples.to_dict("records")]
        )
        low, high = percentile_interval(samples.to_numpy(float), level)
        intervals = {
            n: (float(lo), float(hi)) for n, lo, hi in zip(samples, low, high, strict=True)
        }
    params = allocation_params(fit.law, fit.params)
    status = worst_status(fit.status, misallocation({"a": params["a"], "b": params["b"]}))
    return Allocation(fit.law, params, intervals, samples, flops_per_token, level, status)


def predict(fit: Fit, *values: ArrayLike) -> pd.DataFrame:
    """The fitted loss at new inputs (in the order of `fit.variables`), with interval columns.

    The interval is the spread of the fitted law over bootstrap draws: uncertainty in the
    law itself, not the scatter of a single new run around it.
    """
    arrays = [np.atleast_1d(np.asarray(v, float)) for v in values]
    if len(arrays) != len(fit.variables):
        raise ValueError(f"{fit.law} predicts from {fit.variables}, got {len(arrays)} inputs")
    out = pd.DataFrame(dict(zip(fit.variables, arrays, strict=True)))
    out["loss"] = laws.evaluate(fit.law, fit.params, *arrays)
    if fit.samples is not None and len(fit.samples) > 1:
        draws = np.array(
            [laws.evaluate(fit.law, row, *arrays) for row in fit.samples.to_dict("records")]
        )
        level = fit.diagnostics.get("bootstrap", {}).get("level", LEVEL)
        out["loss_lo"], out["loss_hi"] = percentile_interval(draws, level)
    return out


def _split(G: Any, a: Any, b: Any, x: np.ndarray) -> tuple[Any, Any, Any]:
    """(N_opt, D_opt, D_opt/N_opt) at x = C/k: broadcasts over draws and computes."""
    N, D = G * x**a, x**b / G
    return N, D, D / N
