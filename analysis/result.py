"""The fit result every fitter returns, so the CLI, report and bootstrap treat all laws alike."""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Fit:
    """Fitted parameters with uncertainties, residuals, and how the optimiser fared.

    `residuals` are observed minus fitted, in the space the law was fitted in (ln L for
    the loss laws, loss for IsoFLOP parabolas). `status` is "ok", "hit_bound:<param>" or
    "not_converged: <why>". `tables` holds per-budget or per-point detail; `samples`
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
            }
        )


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
