"""Figures of the Kaplan findings report: loss against N with and without embeddings (Kaplan
Fig. 6), learning curves with the compute-efficient frontier, L(D), L(C), per-position loss,
and transfer loss against in-distribution loss (Kaplan Fig. 8).

Built on `matplotlib.figure.Figure`, never pyplot, like `analysis.plots`.
"""

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.allocation import predict
from analysis.plots import SIZE, add_legend, colours, log_axes
from analysis.result import Fit

MARKERS = "osD^vPX*hp<>d"  # one per D level in the loss-against-N figure
MAX_LEGEND = 12


def loss_vs_params(runs: pd.DataFrame, fit: Fit | None, levels: pd.Series) -> Figure:
    """Loss against non-embedding N and against all parameters, a colour per depth, a marker
    per D level (`levels`), and the fitted L(N) on the first panel."""
    fig = Figure(figsize=SIZE["double"], layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    depth = runs["model.n_layer"] if "model.n_layer" in runs else pd.Series(0, index=runs.index)
    palette = colours(depth)
    for ax, x, label in (
        (axes[0], "N", "non-embedding parameters N"),
        (axes[1], "n_params", "all parameters (embeddings included)"),
    ):
        if x not in runs:
            ax.text(0.5, 0.5, f"no column '{x}'", transform=ax.transAxes, ha="center")
            continue
        for (layers, level), group in runs.groupby([depth, levels]):
            ax.scatter(
                group[x],
                group["loss"],
                s=28,
                color=palette[layers],
                marker=MARKERS[int(level) % len(MARKERS)],
            )
        _finish(ax, label, "final validation loss (nats/token)")
    if fit is not None:
        N = np.geomspace(runs["N"].min(), runs["N"].max(), 100)
        _law_line(axes[0], fit, N, "C3", _labelled(fit, f"L(N) fit, α = {fit.params['alpha']:.3f}"))
    handles = []
    if "model.n_layer" in runs and len(palette) <= MAX_LEGEND:
        handles += [
            Line2D([], [], ls="", marker="o", color=c, label=f"n_layer = {v:g}")
            for v, c in palette.items()
        ]
    for level, group in runs.groupby(levels):
        marker = MARKERS[int(level) % len(MARKERS)]
        D = group["D"].median()
        handles.append(Line2D([], [], ls="", marker=marker, color="0.4", label=f"D ≈ {D:.2g}"))
    if len(handles) <= 2 * MAX_LEGEND:
        add_legend(axes[1], handles=handles)
    add_legend(axes[0])
    fig.suptitle(
        "Kaplan Fig. 6: without embeddings, depths should fall on one curve (colour: n_layer)",
        fontsize=10,
    )
    return fig


def learning_curves(
    curves: pd.DataFrame,
    x: str,
    xlabel: str,
    frontier: pd.DataFrame | None = None,
    fit: Fit | None = None,
    fitted: pd.DataFrame | None = None,
) -> Figure:
    """Every run's validation loss against `x` (D or C), coloured by N; over compute, the
    lower envelope (the compute-efficient frontier) and L(C) over the points it was fitted on."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    lnN = np.log10(curves.groupby("run")["N"].first())
    colour = colormaps["viridis"]
    span = max(float(np.ptp(lnN)), 1e-12)
    labelled: set[str] = set()
    for run, curve in curves.groupby("run", sort=False):
        curve = curve.sort_values(x)
        label = f"N = {10 ** lnN[run]:.2g}"
        if label in labelled or len(labelled) >= MAX_LEGEND:
            label = None
        labelled.add(label)
        ax.plot(
            curve[x],
            curve["loss"],
            color=colour((lnN[run] - lnN.min()) / span),
            lw=0.9,
            alpha=0.8,
            label=label,
        )
    if frontier is not None:
        ax.plot(frontier["C"], frontier["loss"], color="k", lw=1.6, ls="--", label="frontier")
    if fit is not None and fitted is not None:
        C = np.geomspace(fitted["C"].min(), fitted["C"].max(), 100)
        _law_line(ax, fit, C, "C3", _labelled(fit, f"L(C) fit, α_C = {fit.params['alpha']:.3f}"))
    _finish(ax, xlabel, "validation loss (nats/token)")
    add_legend(ax)
    return fig


def power_law(
    points: pd.DataFrame,
    x: str,
    fit: Fit,
    pure: Fit | None,
    xlabel: str,
    title: str,
    context: pd.DataFrame | None = None,
) -> Figure:
    """The points a power law was fitted on, its fit, Kaplan's pure form, and any context
    (other runs, or the rest of the frontier) in grey."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    if context is not None and not context.empty:
        ax.scatter(context[x], context["loss"], s=10, color="0.75", label="not fitted")
    ax.scatter(points[x], points["loss"], s=18, color="0.2", label="fitted points")
    grid = np.geomspace(points[x].min(), points[x].max(), 200)
    _law_line(ax, fit, grid, "C3", _describe(fit))
    if pure is not None and pure is not fit:
        _law_line(ax, pure, grid, "C0", _describe(pure), ls="--")
    _finish(ax, xlabel, "loss (nats/token)")
    ax.set_title(title, fontsize=10)
    add_legend(ax)
    return fig


def per_position(positions: pd.DataFrame, scores: pd.DataFrame) -> Figure:
    """Loss against context position per run (coloured by N), then the ICL score against N."""
    fig = Figure(figsize=SIZE["double"], layout="constrained")
    left, right = fig.subplots(1, 2)
    lnN = np.log10(positions.groupby("run_id")["N"].first())
    span = max(float(np.ptp(lnN)), 1e-12)
    for run, rows in positions.groupby("run_id", sort=False):
        rows = rows.sort_values("T")
        c = colormaps["viridis"]((lnN[run] - lnN.min()) / span)
        left.plot(rows["T"], rows["loss"], color=c, lw=0.9, label=f"N = {10 ** lnN[run]:.2g}")
    _finish(left, "context position T", "validation loss (nats/token)")
    if len(lnN) <= MAX_LEGEND:
        add_legend(left)
    right.scatter(scores["N"], scores["icl_score"], color="C3")
    right.axhline(0, color="0.6", lw=0.8)
    log_axes(
        right,
        "non-embedding parameters N",
        "ICL score (nats)",
        "loss(late position) − loss(early position)",
        log_y=False,
    )
    return fig


def noise_scale(points: pd.DataFrame, slope: float, intercept: float) -> Figure:
    """The gradient noise scale at every evaluation against the loss there (Kaplan Fig. 10's
    B_crit(L)), coloured by N, with the robust power-law line B = B_*·L^slope."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    norm = LogNorm(points["N"].min(), max(points["N"].max(), points["N"].min() * 1.001))
    ax.scatter(points["loss"], points["noise_scale"], c=colormaps["viridis"](norm(points["N"])),
               s=18, edgecolors="0.2", linewidths=0.3)
    L = np.geomspace(points["loss"].min(), points["loss"].max(), 50)
    ax.plot(L, np.exp(intercept) * L**slope, color="C3",
            label=f"B_noise ∝ L^{slope:.2f} (Theil–Sen)")
    ax.set_yscale("log")
    log_axes(ax, "validation loss (nats/token)", "gradient noise scale B_simple (tokens)")
    fig.colorbar(ScalarMappable(norm, colormaps["viridis"]), ax=ax,
                 label="non-embedding parameters N")
    ax.set_title("critical batch size: grows as the loss falls (Kaplan: L^-4.8)", fontsize=10)
    return fig


def transfer(
    runs: pd.DataFrame, fits: dict[str, dict], curves: pd.DataFrame | None = None
) -> Figure:
    """Loss on another distribution against in-distribution validation loss (Kaplan Fig. 8).

    Left: each completed run's final losses (`runs`: loss and one column per key of `fits`),
    coloured by N, a marker per transfer column; the line of slope 1 through the mean offset
    (a constant offset) and the least-squares line (`fits`: slope, intercept, offset_mean).
    Right, with `curves` (run_id, N, val_loss and the first column of `fits`): the same
    during training, a line per run, the final points on top.
    """
    panels = 2 if curves is not None else 1
    fig = Figure(figsize=SIZE["double" if panels == 2 else "single"], layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, panels))
    norm = LogNorm(runs["N"].min(), max(runs["N"].max(), runs["N"].min() * 1.001))
    cmap = colormaps["viridis"]
    ax = axes[0]
    for i, (column, fit) in enumerate(fits.items()):
        both = runs[["N", "loss", column]].apply(pd.to_numeric, errors="coerce").dropna()
        ax.scatter(both["loss"], both[column], c=cmap(norm(both["N"])), s=30,
                   marker=MARKERS[i % len(MARKERS)], edgecolors="0.2", linewidths=0.4,
                   label=f"{column} (final)")
        L = np.linspace(both["loss"].min(), both["loss"].max(), 50)
        ax.plot(L, L + fit["offset_mean"], color=f"C{2 * i}", ls="--",
                label=f"slope 1, offset {fit['offset_mean']:.3f}")
        ax.plot(L, fit["intercept"] + fit["slope"] * L, color=f"C{2 * i + 1}",
                label=f"fit, slope {fit['slope']:.2f}")
    ax.set_title("final losses, one point per run", fontsize=10)
    if curves is not None:
        column = next(iter(fits))
        right = axes[1]
        for _, curve in curves.groupby("run_id", sort=False):
            curve = curve.sort_values("step") if "step" in curve else curve
            right.plot(curve["val_loss"], curve[column], color=cmap(norm(curve["N"].iloc[0])),
                       lw=0.9, alpha=0.8)
        final = runs[["N", "loss", column]].apply(pd.to_numeric, errors="coerce").dropna()
        right.scatter(final["loss"], final[column], c=cmap(norm(final["N"])), s=30,
                      edgecolors="0.2", linewidths=0.4, zorder=3)
        L = np.linspace(curves["val_loss"].min(), curves["val_loss"].max(), 50)
        right.plot(L, L + fits[column]["offset_mean"], color="C0", ls="--",
                   label="slope 1 through the final offset")
        right.set_title(f"during training ({column}); points: final", fontsize=10)
    for a in axes:
        a.set(xlabel="in-distribution validation loss (nats/token)",
              ylabel="transfer loss (nats/token)")
        a.grid(True, alpha=0.3)
        add_legend(a)
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes[-1], label="non-embedding parameters N")
    fig.suptitle("Kaplan Fig. 8: transfer tracks in-distribution loss with a constant offset",
                 fontsize=10)
    return fig


def _law_line(ax: Axes, fit: Fit, x: np.ndarray, colour: str, label: str, ls: str = "-") -> None:
    """The fitted law at `x`, with its bootstrap band when it has one."""
    table = predict(fit, x)
    ax.plot(x, table["loss"], color=colour, ls=ls, label=label)
    if "loss_lo" in table:
        ax.fill_between(x, table["loss_lo"], table["loss_hi"], color=colour, alpha=0.2)


def _describe(fit: Fit) -> str:
    """'offset form, α = …' or 'pure form, α = …', and the status when it is not ok."""
    form = "offset form" if "E" in fit.params else "pure form (Kaplan's)"
    return _labelled(fit, f"{form}, α = {fit.params['alpha']:.3f}")


def _labelled(fit: Fit, label: str) -> str:
    """A legend label, with the fit's status under it when it is not ok."""
    return "\n".join(filter(None, (label, fit.caveat(40))))


def _finish(ax: Axes, xlabel: str, ylabel: str) -> None:
    log_axes(ax, xlabel, ylabel, legend=False)
