"""Figures: the runs of a study, and fitted laws (data, fit and bootstrap band), in one style.

Built on `matplotlib.figure.Figure`, never pyplot, so no display or global state is
involved and PNGs are rendered by Agg wherever this runs.
"""

import html
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter, ScalarFormatter
from numpy.typing import ArrayLike

from analysis.allocation import compute_optimal, predict
from analysis.registry import LAWS
from analysis.result import Fit
from analysis.uncertainty import percentile_interval

N_CURVES = 5  # fitted curves drawn at this many quantiles of the other variable
# One figure size per kind (inches; saved at 100 dpi they fit the page's grid or width).
SIZE = {"single": (6.4, 4.4), "double": (12.8, 4.6)}
LEGEND_INSIDE = 5  # longer legends go beside the axes


def colours(values: pd.Series) -> dict:
    """One colour per distinct value, ordered along a sequential map."""
    distinct = sorted(values.dropna().unique())
    cmap = colormaps["viridis"]
    return {v: cmap(i / max(len(distinct) - 1, 1)) for i, v in enumerate(distinct)}


def log_axes(
    ax: Axes, xlabel: str, ylabel: str, title: str = "", log_y: bool = True, legend: bool = True
) -> None:
    """The house style, applied once the data are drawn: log axes whose labels never collide,
    grid, and a legend where it covers the least data."""
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, ax.dataLim.intervalx)
    if log_y:
        ax.set_yscale("log")
        _log_ticks(ax.yaxis, ax.dataLim.intervaly)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        add_legend(ax)


def add_legend(ax: Axes, handles: list | None = None) -> None:
    """A legend where it covers the least data, or beside the axes when it is long (more than
    `LEGEND_INSIDE` lines); none without labelled artists."""
    handles = handles or ax.get_legend_handles_labels()[0]
    if not handles:
        return
    lines = sum(str(h.get_label()).count("\n") + 1 for h in handles)
    if lines > LEGEND_INSIDE:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1),
                  borderaxespad=0)
    else:
        ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)


def _log_ticks(axis: Any, limits: np.ndarray) -> None:
    """Tick labels that never collide and never leave an axis with one label: under a decade
    (a loss), plain numbers at 1–8 × 10^k; up to 2.5 decades, 1, 2 and 5 × 10^k; beyond,
    the decades only. Minor ticks are never labelled."""
    low, high = (float(v) for v in limits)
    decades = np.log10(high / low) if 0 < low < high else np.inf
    if decades < 1:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)))
        axis.set_major_formatter(ScalarFormatter())
    elif decades <= 2.5:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    axis.set_minor_formatter(NullFormatter())


def figure_html(name: str, caption: str, wide: bool = False) -> str:
    """A figure with its caption (which runs and which fit it shows); `wide` figures (two
    panels) take a whole row of the page's grid."""
    e = html.escape
    image = f'<img src="{e(name)}" alt="{e(caption)}">'
    kind = ' class="wide-figure"' if wide else ""
    return f"<figure{kind}>{image}<figcaption>{e(caption)}</figcaption></figure>"


def loss_against(
    results: pd.DataFrame, x: str, colour_by: str, xlabel: str, series: list[str]
) -> Figure:
    """Final validation loss against one scale variable, a colour per value of another.

    Runs are joined by a line only within a series, one value of `colour_by` and of each
    column in `series` (the knobs that vary: batch size, depth, width), and only where x
    does not repeat in it, so unrelated runs are never connected.
    """
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    palette = colours(results[colour_by])
    labelled = set()
    for key, group in results.groupby([colour_by, *series], dropna=False):
        value = key[0] if isinstance(key, tuple) else key
        group = group.sort_values(x)
        joined = len(group) > 1 and group[x].is_unique
        ax.plot(
            group[x],
            group["loss"],
            "o-" if joined else "o",
            color=palette[value],
            label=None if value in labelled else f"{colour_by} = {value:.3g}",
        )
        labelled.add(value)
    log_axes(ax, xlabel, "final validation loss (nats/token)", legend=len(palette) <= 12)
    return fig


def learning_curves(
    results: pd.DataFrame, curves: pd.DataFrame, x: str, xlabel: str
) -> Figure:
    """Validation loss along training for every run, coloured by N; with x = flops the lower
    envelope of these curves is the compute-efficient frontier."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    n_of_run = results.set_index("run_id")["N"]
    palette = colours(n_of_run)
    labelled = set()
    by_run = dict(tuple(curves.groupby("run_id")))
    for run, n in n_of_run.sort_values().items():  # legend entries in order of N
        if run not in by_run:
            continue
        curve = by_run[run]
        ax.plot(
            curve[x],
            curve["val_loss"],
            "-",
            color=palette[n],
            alpha=0.8,
            label=None if n in labelled else f"N = {n:.3g}",
        )
        labelled.add(n)
    if x == "flops" and not curves.empty:
        frontier = curves.sort_values(x)
        ax.plot(frontier[x], frontier["val_loss"].cummin(), "k--", lw=1, label="frontier")
    log_axes(ax, xlabel, "validation loss (nats/token)", legend=len(labelled) <= 12)
    return fig


def plot_fit(fit: Fit, df: pd.DataFrame, points: pd.DataFrame | None = None) -> Figure:
    """The figure for `fit` (its law's `plot` in `analysis.registry`), drawn over the table it
    was fitted on (canonical columns); with `points` (a column per variable of the law), the
    law is drawn out to them and its predictions there are marked."""
    return PLOTTERS[LAWS[fit.law].plot](fit, df, points)


def _span(*values: ArrayLike) -> np.ndarray:
    """A log grid from the smallest to the largest of `values`."""
    every = np.concatenate([np.ravel(np.asarray(v, float)) for v in values])
    return np.geomspace(every.min(), every.max(), 200)


def _mark_predictions(ax: Axes, fit: Fit, points: pd.DataFrame | None, along: str) -> None:
    """The predicted losses at `points` (with their intervals), plotted against `along`."""
    if points is None:
        return
    table = predict(fit, *points[list(fit.variables)].to_numpy().T)
    error = None
    if "loss_lo" in table:
        error = [table["loss"] - table["loss_lo"], table["loss_hi"] - table["loss"]]
    ax.errorbar(
        table[along], table["loss"], yerr=error, fmt="D", color="k", ms=5, label="predicted"
    )


def _plot_power(fit: Fit, df: pd.DataFrame, points: pd.DataFrame | None = None) -> Figure:
    """Loss (for `rising`, y) against x with the fitted law, out to the predicted points."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    x = fit.variables[0]
    ax.scatter(df[x], df["loss"], s=12, color="0.3", label="data")
    beyond = points[x] if points is not None else []
    _law_line(ax, fit, _span(df[x], beyond), color="C3", label="fit")
    _mark_predictions(ax, fit, points, x)
    _finish(ax, x, "y" if fit.law == "rising" else "loss", _title(fit))
    return fig


def _plot_two_variable(fit: Fit, df: pd.DataFrame, points: pd.DataFrame | None = None) -> Figure:
    """Loss against the second variable, coloured by N, with fitted curves at a few N (and at
    each predicted point's N, drawn out to it).

    For L(N, D) laws a second panel shows the compute-optimal N and D with their bands.
    """
    allocating = LAWS[fit.law].optimum is not None
    fig = Figure(figsize=SIZE["double" if allocating else "single"], layout="constrained")
    axes = fig.subplots(1, 2 if allocating else 1, squeeze=False)[0]
    ax, second = axes[0], fit.variables[1]
    lnN = np.log10(df["N"])
    colour = colormaps["viridis"]
    norm = (lnN - lnN.min()) / max(np.ptp(lnN), 1e-12)
    ax.scatter(df[second], df["loss"], s=10, c=colour(norm), alpha=0.8)
    grid = _span(df[second], points[second] if points is not None else [])
    extra = [] if points is None else list(np.log10(points["N"].unique()))
    for lnN_i in [*np.quantile(lnN, np.linspace(0, 1, N_CURVES)), *extra]:
        N = float(10**lnN_i)
        _law_line(
            ax,
            fit,
            np.full_like(grid, N),
            grid,
            along=grid,
            color=colour((np.log10(N) - lnN.min()) / max(np.ptp(lnN), 1e-12)),
            label=f"N = {N:.2g}",
        )
    _mark_predictions(ax, fit, points, second)
    _finish(ax, second, "loss", _title(fit))
    if allocating:
        _plot_allocation(axes[1], fit, df)
    return fig


def _plot_allocation(ax: Axes, fit: Fit, df: pd.DataFrame) -> None:
    """N_opt(C) and D_opt(C) with bootstrap bands, over the table's compute range."""
    C = 6 * df["N"] * df["D"]
    table = compute_optimal(fit).at(np.geomspace(C.min(), C.max() * 100, 200))
    for name, colour in (("N_opt", "C0"), ("D_opt", "C1")):
        ax.plot(table["C"], table[name], color=colour, label=name)
        if f"{name}_lo" in table:
            ax.fill_between(
                table["C"], table[f"{name}_lo"], table[f"{name}_hi"], color=colour, alpha=0.2
            )
    _finish(ax, "C = 6ND (FLOP)", "compute-optimal N, D", "compute-optimal allocation")


def _plot_isoflop(fit: Fit, df: pd.DataFrame, points: pd.DataFrame | None = None) -> Figure:
    """IsoFLOP profiles with their parabolas and vertices, then N* and D* against C."""
    fig = Figure(figsize=SIZE["double"], layout="constrained")
    left, right = fig.subplots(1, 2)
    budgets = fit.tables["budgets"]
    colour = colormaps["plasma"]
    for i, row in enumerate(budgets.itertuples()):
        c = colour(i / max(len(budgets) - 1, 1))
        points = df[df["C"] == row.C]
        left.scatter(points["N"], points["loss"], s=10, color=c)
        N = np.geomspace(points["N"].min(), points["N"].max(), 100)
        left.plot(
            N,
            row.loss_opt + row.curvature * np.log(N / row.N_opt) ** 2,
            color=c,
            label=f"C = {row.C:.1e}",
        )
        left.scatter([row.N_opt], [row.loss_opt], marker="x", color="k", zorder=3)
    _finish(left, "N (parameters)", "loss", "IsoFLOP profiles", log_y=False)
    C = np.geomspace(budgets["C"].min(), budgets["C"].max(), 100)
    for name, pre, exp, colour_ in (("N_opt", "k_N", "a", "C0"), ("D_opt", "k_D", "b", "C1")):
        right.scatter(budgets["C"], budgets[name], color=colour_)
        _power_line(right, fit, C, pre, exp, colour_, f"{name} ∝ C^{fit.params[exp]:.3f}")
    _finish(right, "C (FLOP)", "N*, D*", _title(fit))
    return fig


def _plot_envelope(fit: Fit, df: pd.DataFrame, points: pd.DataFrame | None = None) -> Figure:
    """All learning curves, their lower envelope and its power law (out to the predicted
    points); then N_opt against C."""
    fig = Figure(figsize=SIZE["double"], layout="constrained")
    left, right = fig.subplots(1, 2)
    for _, run in df.groupby("run", sort=False):
        run = run.sort_values("C")
        left.plot(run["C"], run["loss"], color="0.75", lw=0.8)
    env = fit.tables["envelope"]
    left.plot(env["C"], env["loss"], color="k", lw=1.5, label="envelope")
    beyond = points["C"] if points is not None else []
    _law_line(left, fit, _span(env["C"], beyond), color="C3", label="fit")
    _mark_predictions(left, fit, points, "C")
    _finish(left, "C (FLOP)", "loss", _title(fit))
    inner = env[env["interior"]]
    right.scatter(inner["C"], inner["N"], s=8, color="C0", label="envelope N")
    if np.isfinite(fit.params["a"]):
        _power_line(
            right, fit, env["C"].to_numpy(), "k_N", "a", "C0", f"N_opt ∝ C^{fit.params['a']:.3f}"
        )
    _finish(right, "C (FLOP)", "N_opt", "compute-optimal model size")
    return fig


# Figure kinds a law's registry entry names.
PLOTTERS = {
    "curve": _plot_power,
    "two-variable": _plot_two_variable,
    "isoflop": _plot_isoflop,
    "envelope": _plot_envelope,
}


def _law_line(
    ax: Axes,
    fit: Fit,
    *values: np.ndarray,
    along: np.ndarray | None = None,
    color: object,
    label: str,
) -> None:
    """The fitted law (and its bootstrap band) at `values`, plotted against `along`."""
    table = predict(fit, *values)
    x = values[0] if along is None else along
    ax.plot(x, table["loss"], color=color, label=label)
    if "loss_lo" in table:
        ax.fill_between(x, table["loss_lo"], table["loss_hi"], color=color, alpha=0.2)


def _power_line(
    ax: Axes, fit: Fit, C: np.ndarray, pre: str, exp: str, color: str, label: str
) -> None:
    """y = pre·C^exp and its bootstrap band."""
    ax.plot(C, fit.params[pre] * C ** fit.params[exp], color=color, label=label)
    if fit.samples is not None and len(fit.samples) > 1:
        draws = (
            fit.samples[pre].to_numpy()[:, None]
            * C[None, :] ** fit.samples[exp].to_numpy()[:, None]
        )
        ax.fill_between(C, *percentile_interval(draws), color=color, alpha=0.2)


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str, log_y: bool = True) -> None:
    log_axes(ax, xlabel, ylabel, title, log_y)


def _title(fit: Fit) -> str:
    """The law and its fitted parameters, compactly, and the status when it is not ok."""
    shown = ", ".join(f"{k}={v:.3g}" for k, v in fit.params.items())
    return "\n".join(filter(None, (f"{fit.law}: {shown}", fit.caveat())))
