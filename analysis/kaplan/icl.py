"""Loss per context position: Kaplan's per-position law L(T) fitted per run, and the
in-context-learning score of Olsson et al. It reads its own table (`positions`) and
feeds no finding, so it stands apart from the scale laws.
"""

from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import fit_power, ols
from analysis.kaplan.constants import ICL_POSITIONS
from analysis.table import FitInputError


def per_position_icl(positions: pd.DataFrame, runs: pd.DataFrame) -> dict[str, Any]:
    """Kaplan's per-position law L(T) = L_∞ + (T_c/T)^α_T per run, and the ICL score.

    T counts positions from 1 (0-based positions are shifted). The score is the loss at
    0.8·n_ctx minus the loss at 0.1·n_ctx (Olsson et al. use tokens 500 and 50), read off
    the run's losses interpolated in log T; n_ctx is model.n_ctx, else the largest T.
    The median α_T is over the runs whose fit gave an estimate (`Fit.usable`).
    """
    missing = [c for c in ("run_id", "position", "loss") if c not in positions]
    if missing or "N" not in runs:
        return {"status": f"skipped: missing column(s) {', '.join(missing or ['N'])}"}
    table = positions.drop(columns=["N"], errors="ignore").merge(runs[["run_id", "N"]], on="run_id")
    table = table[np.isfinite(table["loss"]) & (table["loss"] > 0)]
    if table.empty:
        return {"status": "skipped: no per-position loss belongs to a completed run"}
    shift = 1 if (table["position"] == 0).any() else 0
    table = table.assign(T=table["position"] + shift)
    n_ctx = (
        pd.to_numeric(runs.set_index("run_id")["model.n_ctx"], errors="coerce")
        if "model.n_ctx" in runs
        else None
    )
    rows = []
    for run, group in table.groupby("run_id", sort=False):
        group = group.groupby("T", as_index=False)["loss"].mean()
        context = float(n_ctx[run]) if n_ctx is not None and n_ctx[run] > 0 else group["T"].max()
        early, late = (np.log(f * context) for f in ICL_POSITIONS)
        lnT, lnL = np.log(group["T"]), np.log(group["loss"])
        row = {
            "run_id": run,
            "N": table.loc[table["run_id"] == run, "N"].iloc[0],
            "n_ctx": context,
            "icl_score": float(np.diff(np.exp(np.interp([early, late], lnT, lnL)))[0]),
        }
        try:
            fit = fit_power(group, x="T", offset=True)
            row |= {"status": fit.status, "usable": fit.usable, "alpha_T": fit.params["alpha"]}
            row |= {"T_c": fit.params["x_c"], "L_inf": fit.params["E"]}
        except FitInputError as error:
            row["status"] = f"skipped: {error}"
        rows.append(row)
    scores = pd.DataFrame(rows)
    out: dict[str, Any] = {
        "status": "ok",
        "definition": f"T = position + {shift}; score = L({ICL_POSITIONS[1]}·n_ctx) − "
        f"L({ICL_POSITIONS[0]}·n_ctx)",
        "runs": scores.to_dict(orient="records"),
        "table": table,
        "scores": scores,
    }
    if scores["N"].nunique() >= 2:
        slope, _, se, _ = ols(np.log10(scores["N"].to_numpy(float)), scores["icl_score"].to_numpy())
        out |= {"score_slope_per_decade_N": slope, "score_slope_stderr": se}
    fitted = (  # runs whose fit raised have no `usable` (NaN)
        scores.loc[scores["usable"].eq(True), "alpha_T"]
        if "usable" in scores
        else pd.Series(dtype=float)
    )
    out["alpha_T_median"] = float(fitted.median()) if len(fitted) else None
    return out
