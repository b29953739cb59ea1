"""The tables the Kaplan fits read: completed runs, the main series the scale laws are
fitted on, learning curves in canonical names, N and D levels, and transfer curves.
Selecting rows is kept apart from fitting so each law and finding starts from the same
checked tables.
"""

import numpy as np
import pandas as pd

from analysis.kaplan.constants import D_LEVEL_RATIO, N_LEVEL_RATIO
from analysis.table import FitInputError


def completed_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Completed runs with a finite positive loss; `early_loss` is best_val_loss where known."""
    if results is None or len(results) == 0:
        raise ValueError("results table is empty: no runs to report on")
    runs = results
    if "status" in runs:
        runs = runs[runs["status"] == "completed"]
    if "loss" in runs:
        loss = pd.to_numeric(runs["loss"], errors="coerce")
        runs = runs[np.isfinite(loss) & (loss > 0)]
        early = pd.to_numeric(runs.get("best_val_loss", runs["loss"]), errors="coerce")
        runs = runs.assign(early_loss=early.fillna(runs["loss"]))
    if "run_id" not in runs:
        runs = runs.assign(run_id=[f"run{i}" for i in range(len(runs))])
    return runs.reset_index(drop=True)


def main_series(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs the scale laws are fitted on: one batch size and one shape per size.

    A study also holds runs that vary what the laws hold fixed: batch sizes (finding 8) and
    depths at one N (finding 1). Kaplan fits N, D and C on runs of one batch size and one
    aspect ratio; so do we: the most common tokens per step, and within a group of depths
    at one N and D, the runs whose d_model / n_layer is closest to the series' median.
    """
    main = runs
    if "tokens_per_step" in main and main["tokens_per_step"].notna().any():
        main = main[main["tokens_per_step"] == main["tokens_per_step"].mode().iloc[0]]
    if not {"model.d_model", "model.n_layer", "N", "D"} <= set(main) or main.empty:
        return main.reset_index(drop=True)
    distance = np.abs(np.log(main["model.d_model"] / main["model.n_layer"])
                      - np.log(np.median(main["model.d_model"] / main["model.n_layer"])))
    group = [levels(main["N"], N_LEVEL_RATIO), levels(main["D"], D_LEVEL_RATIO)]
    closest = distance <= distance.groupby(group).transform("min") + 1e-9
    return main[closest].reset_index(drop=True)


def curve_table(curves: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame:
    """Learning curves of completed runs, in canonical names: run, N, S, D, C, loss (+ lr)."""
    if curves is None or len(curves) == 0:
        raise FitInputError("no learning curves")
    missing = [c for c in ("run_id", "step", "tokens", "flops", "val_loss") if c not in curves]
    if missing:
        raise FitInputError(f"curves lack column(s) {', '.join(missing)}")
    if "N" not in runs:
        raise FitInputError("results lack column 'N', so curves have no model size")
    table = curves.drop(columns=["N"], errors="ignore").merge(runs[["run_id", "N"]], on="run_id")
    table = table.rename(
        columns={"run_id": "run", "step": "S", "tokens": "D", "flops": "C", "val_loss": "loss"}
    )
    values = table[["S", "D", "C", "loss"]].apply(pd.to_numeric, errors="coerce")
    table = table.assign(**values)[(np.isfinite(values) & (values > 0)).all(axis=1)]
    if table.empty:
        raise FitInputError("no learning-curve evaluation with a loss belongs to a completed run")
    optional = [c for c in ("lr", "noise_scale") if c in table]
    return table[["run", "N", "S", "D", "C", "loss", *optional]]


def levels(values: pd.Series, ratio: float) -> pd.Series:
    """An integer level per value, increasing with it: a level starts at a value more than
    `ratio` times the previous level's first value, so near-equal N or D share one."""
    ids, start, level = {}, None, -1
    for v in np.sort(values.unique()):
        if start is None or v > start * ratio:
            level, start = level + 1, v
        ids[v] = level
    return values.map(ids)


def transfer_curves(
    curves: pd.DataFrame | None, runs: pd.DataFrame, column: str
) -> pd.DataFrame | None:
    """Completed runs' evaluations with both validation and `column` loss (run_id, N, step,
    val_loss, column), or None when the curves do not carry `column`."""
    needed = ["run_id", "val_loss", column]
    if curves is None or not set(needed) <= set(curves) or "N" not in runs:
        return None
    table = curves[[*needed, *(["step"] if "step" in curves else [])]]
    table = table.merge(runs[["run_id", "N"]], on="run_id")
    values = table[["val_loss", column]].apply(pd.to_numeric, errors="coerce")
    table = table.assign(**values)[(np.isfinite(values) & (values > 0)).all(axis=1)]
    return table if not table.empty else None
