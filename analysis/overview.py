"""The runs of a study: what was run and what it measured, before any fit.

Works on any results table with the columns `scaling` writes (N, D, C, loss, status, run_id,
the run's config as dotted columns) and, for learning curves, a curves table keyed by run_id
(tokens, flops, val_loss). The table lists every run; the plots show the runs the study fits.
A run's `notes` flag what a reader of its loss must know: it repeats data (epochs > 1), or it
is not in the fits (another corpus or stage).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.plots import figure_html, learning_curves, loss_against
from analysis.table import PRETRAIN

SUMMARY_COLUMNS = [
    "run_id",
    "status",
    "N",
    "D",
    "C",
    "loss",
    "best_val_loss",
    "epochs",
    "tokens_per_s",
    "wall_s",
]
# Config prefixes whose varying fields tell a study's runs apart in the table.
KNOB_PREFIXES = ("model.", "train.", "optim.", "data.", "stage.")
# Knobs that make runs of one N (or D) different series: never joined by a line.
SERIES_KNOBS = ("train.batch_size", "model.n_layer", "model.d_model")


def knobs(results: pd.DataFrame) -> list[str]:
    """The config columns whose value differs between runs (batch size, depth, width, lr, …)."""
    return [
        c
        for c in results.columns
        if c.startswith(KNOB_PREFIXES) and results[c].astype(str).nunique() > 1
    ]


def write_overview(
    results: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: Path,
    *,
    fitted: pd.DataFrame | None = None,
) -> str:
    """Write the data plots into `out_dir` and return the HTML section that shows them.

    `fitted` holds the rows of `results` the study fits (default: all): the plots show
    those; the table lists every run, with a `notes` column where a run repeats data or is
    left out of the fits.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fitted = results if fitted is None else fitted
    subset = len(fitted) < len(results)
    if subset and "run_id" in curves:
        curves = curves[curves["run_id"].isin(fitted["run_id"])]
    done = fitted[(fitted["status"] == "completed") & fitted["loss"].notna()]
    which = "completed runs the fits use" if subset else "completed runs"
    varying = knobs(results)
    series = ", ".join(k for k in SERIES_KNOBS if k in varying)
    joined = f"lines join runs of one {{}}{f' and one {series}' if series else ''}"
    figures = []
    if not done.empty:
        for x, by, name, xlabel in (
            ("N", "D", "loss_vs_N.png", "non-embedding parameters N"),
            ("D", "N", "loss_vs_D.png", "training tokens D"),
            ("C", "N", "loss_vs_C.png", "training compute C (FLOPs)"),
        ):
            series = [k for k in SERIES_KNOBS if k in varying and k != x]
            loss_against(done, x, by, xlabel, series).savefig(out_dir / name, dpi=100)
            caption = (
                f"Final validation loss of the {len(done)} {which} against {x}; colour: "
                f"{by}; {joined.format(by)}. No fit."
            )
            figures.append(figure_html(name, caption))
    if not curves.empty:
        for x, name, xlabel in (
            ("tokens", "curves_tokens.png", "tokens"),
            ("flops", "curves_flops.png", "compute (FLOPs)"),
        ):
            learning_curves(fitted, curves, x, xlabel).savefig(out_dir / name, dpi=100)
            runs = "every run the fits use" if subset else "every run"
            caption = (
                f"Validation loss along training of {runs} with a curve, against {xlabel}; "
                "colour: N" + ("; dashed: their lower envelope." if x == "flops" else ".")
            )
            figures.append(figure_html(name, caption))

    counts = results["status"].value_counts().to_dict()
    groups = [c for c in ("stage", "corpus_cache") if c in results and _varies(results[c])]
    columns = [c for c in SUMMARY_COLUMNS if c in results]
    columns[2:2] = groups + varying  # what tells runs apart, right after the run's name
    table = results[columns].assign(notes=notes(results, fitted).to_numpy())
    if not table["notes"].any():
        table = table.drop(columns="notes")
    table = table.sort_values([c for c in ("N", "D") if c in columns])
    table = table.rename(columns=lambda c: c.split(".", 1)[1] if c in varying else c)
    return (
        "<section><h2>Runs</h2>"
        f"<p>{len(results)} runs: "
        + ", ".join(f"{html.escape(str(k))} {v}" for k, v in sorted(counts.items()))
        + ". Columns after the status are the settings that vary between runs. "
        "<code>loss</code> is the final validation loss (at the last step), "
        "<code>best_val_loss</code> the lowest of any evaluation; <code>epochs</code> counts "
        "passes over the run's train split, and a run of more than one is noted "
        "<q>repeats data</q>.</p>\n"
        + f'<div class="figures">{"".join(figures)}</div>\n<div class="wide">'
        + table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", classes="runs")
        + "</div></section>"
    )


def notes(results: pd.DataFrame, fitted: pd.DataFrame | None = None) -> pd.Series:
    """Per run, what a reader of its loss must know: "repeats data (N epochs)" where it
    trained on more than one epoch, "not fitted: …" where it completed but is not among
    `fitted` (another corpus or stage); "" otherwise."""
    out = [""] * len(results)
    if "epochs" in results:
        epochs = pd.to_numeric(results["epochs"], errors="coerce").to_numpy()
        for i in np.flatnonzero(epochs > 1):
            out[i] = f"repeats data ({epochs[i]:.3g} epochs)"
    if fitted is not None and {"run_id", "status"} <= set(results):
        left = (results["status"] == "completed") & ~results["run_id"].isin(fitted["run_id"])
        for i in np.flatnonzero(left.to_numpy()):
            out[i] = "; ".join(filter(None, [out[i], _why_not(results.iloc[i])]))
    return pd.Series(out, index=results.index, dtype=object)


def _why_not(run: pd.Series) -> str:
    """Why a completed run is not fitted: its stage, else its corpus."""
    stage = run.get("stage")
    if isinstance(stage, str) and stage != PRETRAIN:
        return f"not fitted: stage {stage}"
    return f"not fitted: corpus {run.get('corpus_cache')}"


def _varies(column: pd.Series) -> bool:
    return column.astype(str).nunique() > 1
