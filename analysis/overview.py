"""The data section of a sweep report: what was run and what it measured, before any fit.

Works on any results table with the columns `scaling` writes (N, D, C, loss, status, run_id)
and, for learning curves, a curves table keyed by run_id (tokens, flops, val_loss).
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import ScalarFormatter

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


def _colors(values: pd.Series) -> dict:
    """One colour per distinct value, ordered along a sequential map."""
    distinct = sorted(values.dropna().unique())
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(len(distinct) - 1, 1)) for i, v in enumerate(distinct)}


def _log_axes(ax, xlabel: str) -> None:
    """Log-log axes with plain numbers on the loss axis (losses span well under a decade)."""
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="validation loss (nats/token)")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(True, which="both", alpha=0.3)


def _save(fig, ax, path: Path, xlabel: str, n_series: int) -> None:
    """Finish the axes (a legend only when it stays readable) and write the PNG."""
    _log_axes(ax, xlabel)
    if 1 < n_series <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(value: float) -> str:
    return f"{value:.3g}"


def plot_loss_vs(results: pd.DataFrame, x: str, color_by: str, path: Path, xlabel: str) -> None:
    """Final validation loss against one scale variable, a colour per value of another."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    colors = _colors(results[color_by])
    for value, group in results.groupby(color_by):
        group = group.sort_values(x)
        ax.plot(
            group[x], group["loss"], "o-", color=colors[value], label=f"{color_by}={_label(value)}"
        )
    _save(fig, ax, path, xlabel, n_series=len(colors))


def plot_learning_curves(
    results: pd.DataFrame, curves: pd.DataFrame, x: str, path: Path, xlabel: str
) -> None:
    """Validation loss along training for every run, coloured by N; with x = flops the lower
    envelope of these curves is the compute-efficient frontier."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    n_of_run = results.set_index("run_id")["N"]
    colors = _colors(n_of_run)
    labelled = set()
    for run, curve in curves.groupby("run_id"):
        if run not in n_of_run:
            continue
        n = n_of_run[run]
        ax.plot(
            curve[x],
            curve["val_loss"],
            "-",
            color=colors[n],
            alpha=0.8,
            label=None if n in labelled else f"N={_label(n)}",
        )
        labelled.add(n)
    if x == "flops" and not curves.empty:
        frontier = curves.sort_values(x)
        envelope = frontier["val_loss"].cummin()
        ax.plot(frontier[x], envelope, "k--", lw=1, label="frontier")
    _save(fig, ax, path, xlabel, n_series=len(labelled))


def write_overview(results: pd.DataFrame, curves: pd.DataFrame, out_dir: Path) -> str:
    """Write the data plots into `out_dir` and return the HTML section that shows them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = results[(results["status"] == "completed") & results["loss"].notna()]
    plots = []
    if not done.empty:
        for x, by, name, xlabel in (
            ("N", "D", "loss_vs_N.png", "non-embedding parameters N"),
            ("D", "N", "loss_vs_D.png", "training tokens D"),
            ("C", "N", "loss_vs_C.png", "training compute C (FLOPs)"),
        ):
            plot_loss_vs(done, x, by, out_dir / name, xlabel)
            plots.append(name)
    if not curves.empty:
        for x, name, xlabel in (
            ("tokens", "curves_tokens.png", "tokens"),
            ("flops", "curves_flops.png", "compute (FLOPs)"),
        ):
            plot_learning_curves(results, curves, x, out_dir / name, xlabel)
            plots.append(name)

    counts = results["status"].value_counts().to_dict()
    columns = [c for c in SUMMARY_COLUMNS if c in results]
    table = results[columns].sort_values([c for c in ("N", "D") if c in columns])
    images = "\n".join(f'<img src="{name}" alt="{name}" width="480">' for name in plots)
    return (
        "<section><h2>Runs</h2>"
        f"<p>{len(results)} runs: "
        + ", ".join(f"{html.escape(str(k))} {v}" for k, v in sorted(counts.items()))
        + f"</p>\n<div>{images}</div>\n"
        + table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", classes="runs")
        + "</section>"
    )


def write_report(
    results: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: Path,
    title: str,
    problems: list[str] | None = None,
    sections: list[str] | None = None,
) -> Path:
    """Write `out_dir/index.html`: the data section, then any further (fit) sections."""
    out_dir = Path(out_dir)
    body = [write_overview(results, curves, out_dir), *(sections or [])]
    if problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        body.append(f"<section><h2>Skipped run directories</h2><ul>{items}</ul></section>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table.runs{border-collapse:collapse;font-size:12px}"
        "table.runs td,table.runs th{border:1px solid #ccc;padding:2px 6px}"
        "img{margin:4px;border:1px solid #eee}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>" + "\n".join(body) + "</body></html>"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
