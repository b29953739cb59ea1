"""The runs of a study: what was run and what it measured, before any fit.

Works on any results table with the columns `scaling` writes (N, D, C, loss, status, run_id,
the run's config as dotted columns) and, for learning curves, a curves table keyed by run_id
(tokens, flops, val_loss).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from analysis.plots import figure_html, learning_curves, loss_against

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


def write_overview(results: pd.DataFrame, curves: pd.DataFrame, out_dir: Path) -> str:
    """Write the data plots into `out_dir` and return the HTML section that shows them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = results[(results["status"] == "completed") & results["loss"].notna()]
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
                f"Final validation loss of the {len(done)} completed runs against {x}; colour: "
                f"{by}; {joined.format(by)}. No fit."
            )
            figures.append(figure_html(name, caption))
    if not curves.empty:
        for x, name, xlabel in (
            ("tokens", "curves_tokens.png", "tokens"),
            ("flops", "curves_flops.png", "compute (FLOPs)"),
        ):
            learning_curves(results, curves, x, xlabel).savefig(out_dir / name, dpi=100)
            caption = (
                f"Validation loss along training of every run with a curve, against {xlabel}; "
                "colour: N" + ("; dashed: their lower envelope." if x == "flops" else ".")
            )
            figures.append(figure_html(name, caption))

    counts = results["status"].value_counts().to_dict()
    columns = [c for c in SUMMARY_COLUMNS if c in results]
    columns[2:2] = varying  # the knobs that tell runs apart, right after the run's name
    table = results[columns].sort_values([c for c in ("N", "D") if c in columns])
    table = table.rename(columns=lambda c: c.split(".", 1)[1] if c in varying else c)
    return (
        "<section><h2>Runs</h2>"
        f"<p>{len(results)} runs: "
        + ", ".join(f"{html.escape(str(k))} {v}" for k, v in sorted(counts.items()))
        + ". Columns after the status are the settings that vary between runs.</p>\n"
        + f'<div class="figures">{"".join(figures)}</div>\n<div class="wide">'
        + table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", classes="runs")
        + "</div></section>"
    )
