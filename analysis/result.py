"""The fit result every fitter returns, so the CLI, report and bootstrap treat all laws alike."""

import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# Statuses from worst to best; a fit's status starts with one of them.
STATUSES = (
    "failed",  # the optimiser raised on every start: the parameters are NaN
    "degenerate",  # the data do not determine the law (a scale constant at 0 or ∞, ...)
    "not_converged",  # the optimiser stopped short of an optimum
    "hit_bound",  # a clean optimum on a bound, e.g. E = 0 (Kaplan's pure form)
    "ok",
)
NO_ESTIMATE = STATUSES[:3]  # statuses whose parameters are no estimate of the law
# Bootstrap draws an L(N, D) fit keeps in its JSON (the first ones: draws are exchangeable),
# at 7 significant digits: enough for scaling-predict's intervals, a few kB per fit.
KEPT_SAMPLES = 200
PREDICTS_FROM = ("N", "D")  # the variables of the fits whose draws are kept


def worst_status(*statuses: str) -> str:
    """The worst of `statuses` in the order of `STATUSES` (empty strings are ignored)."""
    given = [s for s in statuses if s] or ["ok"]
    return min(given, key=lambda s: [s.startswith(p) for p in STATUSES].index(True))


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
class Fit:
    """Fitted parameters with uncertainties, residuals, and how the optimiser fared.

    `residuals` are observed minus fitted, in the space the law was fitted in (ln L for
    the loss laws, loss for IsoFLOP parabolas). `status` is one of `STATUSES`, with the
    reason after the colon. `tables` holds per-budget or per-point detail; `samples`
    holds bootstrap draws of the parameters (one row per resample) when there are any.
    """

    law: str
    params: dict[str, float]
    residuals: np.ndarray
    n_points: int
    variables: tuple[str, ...]
    status: str = "ok"
    stderr: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    samples: pd.DataFrame | None = None

    @property
    def ok(self) -> bool:
        """Whether the numbers can be used as they stand."""
        return self.status == "ok"

    @property
    def usable(self) -> bool:
        """Whether the parameters estimate the law: ok or on a bound, not degenerate,
        unconverged or failed."""
        return not self.status.startswith(NO_ESTIMATE)

    def caveat(self, width: int = 55) -> str:
        """"" for an ok fit, else its status in brackets, wrapped at `width` characters: for
        plot titles and legends, so a figure never shows a fit the data did not determine
        without saying so."""
        return "" if self.ok else textwrap.fill(f"[{self.status}]", width)

    @classmethod
    def failed(
        cls, law: str, names: tuple[str, ...], variables: tuple[str, ...], n_points: int, why: str
    ) -> "Fit":
        """A fit whose optimiser raised: NaN parameters and status `failed: <why>`."""
        return cls(
            law=law,
            params=dict.fromkeys(names, float("nan")),
            residuals=np.full(n_points, np.nan),
            n_points=n_points,
            variables=variables,
            status=f"failed: {why}",
        )

    def summary(self) -> pd.DataFrame:
        """One row per parameter: value, standard error and interval, for tables and reports."""
        rows = {
            name: {
                "value": value,
                "stderr": self.stderr.get(name, np.nan),
                "lo": self.intervals.get(name, (np.nan, np.nan))[0],
                "hi": self.intervals.get(name, (np.nan, np.nan))[1],
            }
            for name, value in self.params.items()
        }
        return pd.DataFrame.from_dict(rows, orient="index")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (NaN and inf become null, so the output is strict JSON)."""
        return jsonable(
            {
                "law": self.law,
                "params": self.params,
                "stderr": self.stderr,
                "intervals": {k: list(v) for k, v in self.intervals.items()},
                "status": self.status,
                "n_points": self.n_points,
                "variables": list(self.variables),
                "diagnostics": self.diagnostics,
                "tables": {k: v.to_dict(orient="records") for k, v in self.tables.items()},
                "residuals": self.residuals,
                **self._kept_samples(),
            }
        )

    def _kept_samples(self) -> dict[str, Any]:
        """{"samples": {param: [draws]}} for an L(N, D) fit with bootstrap draws, else {}:
        what `analysis.predict` reads for its intervals."""
        if self.samples is None or len(self.samples) < 2 or tuple(self.variables) != PREDICTS_FROM:
            return {}
        kept = self.samples.iloc[:KEPT_SAMPLES]
        return {"samples": {k: [float(f"{v:.7g}") for v in kept[k]] for k in kept.columns}}


def jsonable(obj: Any) -> Any:
    """Recursively turn NumPy scalars and arrays into plain Python, non-finite floats into None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj
