"""Compute-optimal N and D from a fitted L(N, D), and loss predictions, with bootstrap bands."""

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from analysis import registry
from analysis.result import Fit, jsonable, misallocation, worst_status
from analysis.table import FLOPS_PER_TOKEN
from analysis.uncertainty import LEVEL, percentile_interval


def allocation_params(law: str, params: Mapping[str, float]) -> dict[str, float]:
    """G, a, b with N_opt = G·(C/k)^a, D_opt = (C/k)^b / G, minimising L(N, D) at C = k·N·D
    (the law's `optimum` in `analysis.registry`); ValueError for a law without one."""
    entry = registry.get(law)
    if entry.optimum is None:
        raise ValueError(f"compute-optimal allocation needs an L(N, D) law, not {law!r}")
    names = inspect.signature(entry.optimum).parameters
    # NumPy scalars: a degenerate fit's 0 gives inf, not a raise
    return entry.optimum(**{k: np.float64(params[k]) for k in names})


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
    out["loss"] = registry.evaluate(fit.law, fit.params, *arrays)
    if fit.samples is not None and len(fit.samples) > 1:
        draws = np.array(
            [registry.evaluate(fit.law, row, *arrays) for row in fit.samples.to_dict("records")]
        )
        level = fit.diagnostics.get("bootstrap", {}).get("level", LEVEL)
        out["loss_lo"], out["loss_hi"] = percentile_interval(draws, level)
    return out


def _split(G: Any, a: Any, b: Any, x: np.ndarray) -> tuple[Any, Any, Any]:
    """(N_opt, D_opt, D_opt/N_opt) at x = C/k: broadcasts over draws and computes."""
    N, D = G * x**a, x**b / G
    return N, D, D / N
