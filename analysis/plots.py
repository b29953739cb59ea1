"""Figures, in one style: the runs of a study (final losses, learning curves), fitted laws
(data, fit and bootstrap band; `plot_fit` draws any law of `analysis.registry`), and the
Kaplan study's figures (loss against N with and without embeddings, L(D) and L(C) with
the points they were fitted on, per-position loss, the gradient noise scale, transfer), and
the transfer study's (Hernandez et al. 2021: D_T, the fraction of effective data from
fine-tuning, fine-tuned against from-scratch loss, forgetting).

Built on `matplotlib.figure.Figure`, never pyplot, so no display or global state is
involved and PNGs are rendered by Agg wherever this runs. Log axes get readable ticks from
`log_axes`; the report puts a caption under each figure (`figure_html`).
"""

import html
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter, ScalarFormatter
from numpy.typing import ArrayLike

from analysis import laws
from analysis.allocation import compute_optimal, predict
from analysis.envelope import lower_envelope
from analysis.registry import LAWS
from analysis.result import Fit
from analysis.uncertainty import percentile_interval

N_CURVES = 5  # fitted curves drawn at this many quantiles of the other variable
# One figure size per kind (inches; saved at 100 dpi they fit the page's grid or width).
SIZE = {"single": (6.4, 4.4), "double": (12.8, 4.6)}
LEGEND_INSIDE = 5  # longer legends go beside the axes
MAX_LEGEND = 12  # entries a legend lists at most
CMAP = colormaps["viridis"]  # sequential: model size, or any ordered value
MARKERS = "osD^vPX*hp<>d"  # one per D level, or per transfer corpus
RECORD_AXES = {"tokens": "D", "flops": "C", "step": "S"}  # record curve columns → law names


def colours(values: pd.Series) -> dict:
    """One colour per distinct value, ordered along a sequential map."""
    distinct = sorted(values.dropna().unique())
    return {v: CMAP(i / max(len(distinct) - 1, 1)) for i, v in enumerate(distinct)}


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
    """Tick labels that never collide and never leave an axis with one label: under a decade,
    plain numbers at 1–8 × 10^k for a loss, 1, 2, 3 and 5 × 10^k for large counts; up to 2.5
    decades, 1, 2 and 5 × 10^k; beyond, the decades only. Minor ticks are never labelled."""
    low, high = (float(v) for v in limits)
    decades = np.log10(high / low) if 0 < low < high else np.inf
    if decades < 1 and low >= 1e-3 and high < 1e4:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)))
        axis.set_major_formatter(ScalarFormatter())
    elif decades < 1:  # token counts: 2 × 10^5, not 0.2 under an offset "1e6"
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
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
    log_axes(ax, xlabel, "final validation loss (nats/token)", legend=len(palette) <= MAX_LEGEND)
    return fig


def learning_curves(
    results: pd.DataFrame, curves: pd.DataFrame, x: str, xlabel: str
) -> Figure:
    """Validation loss along training for every run of a results table (run_id, N), from its
    record's curves (run_id, `x` = tokens, flops or step, val_loss), coloured by N; with
    x = flops, their lower envelope: the compute-efficient frontier."""
    table = (
        curves.drop(columns=["N"], errors="ignore")
        .merge(results[["run_id", "N"]], on="run_id")
        .rename(columns={"run_id": "run", "val_loss": "loss", x: RECORD_AXES[x]})
    )
    x = RECORD_AXES[x]
    values = table[["N", x, "loss"]].apply(pd.to_numeric, errors="coerce")
    table = table.assign(**values)[(np.isfinite(values) & (values > 0)).all(axis=1)]
    frontier = lower_envelope(table) if x == "C" and not table.empty else None
    return run_curves(table, x, xlabel, frontier)


def run_curves(
    curves: pd.DataFrame,
    x: str,
    xlabel: str,
    frontier: pd.DataFrame | None = None,
    fit: Fit | None = None,
    fitted: pd.DataFrame | None = None,
) -> Figure:
    """Every run's validation loss against `x` (columns run, N, `x`, loss), coloured by N;
    over compute, the lower envelope (`frontier`: C, loss) and a fitted L(C) over the points
    it was fitted on (`fitted`)."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    size = curves.groupby("run")["N"].first().sort_values()  # legend entries in order of N
    norm = _log_norm(size)
    labelled: set[str] = set()
    for run, curve in sorted(curves.groupby("run"), key=lambda item: size[item[0]]):
        label = f"N = {size[run]:.2g}"
        shown = label not in labelled and len(labelled) < MAX_LEGEND
        labelled.add(label)
        curve = curve.sort_values(x)
        ax.plot(curve[x], curve["loss"], color=CMAP(norm(size[run])), lw=0.9, alpha=0.8,
                label=label if shown else None)
    if frontier is not None:
        ax.plot(frontier["C"], frontier["loss"], color="k", lw=1.6, ls="--", label="frontier")
    if fit is not None and fitted is not None:
        C = np.geomspace(fitted["C"].min(), fitted["C"].max(), 100)
        label = _labelled(fit, f"L(C) fit, α_C = {fit.params['alpha']:.3f}")
        _law_line(ax, fit, C, color="C3", label=label)
    log_axes(ax, xlabel, "validation loss (nats/token)")
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
    x = fit.variables[0]
    ylabel = "y" if fit.law == "rising" else "loss"
    return power_law(df, x, fit, x, _title(fit), predicted=points, ylabel=ylabel)


def _plot_two_variable(fit: Fit, df: pd.DataFrame, points: pd.DataFrame | None = None) -> Figure:
    """Loss against the second variable, coloured by N, with fitted curves at a few N (and at
    each predicted point's N, drawn out to it).

    For L(N, D) laws a second panel shows the compute-optimal N and D with their bands.
    """
    allocating = LAWS[fit.law].optimum is not None
    fig = Figure(figsize=SIZE["double" if allocating else "single"], layout="constrained")
    axes = fig.subplots(1, 2 if allocating else 1, squeeze=False)[0]
    ax, second = axes[0], fit.variables[1]
    norm = _log_norm(df["N"])
    ax.scatter(df[second], df["loss"], s=10, c=CMAP(norm(df["N"])), alpha=0.8)
    grid = _span(df[second], points[second] if points is not None else [])
    extra = [] if points is None else list(points["N"].unique())
    for N in [*10 ** np.quantile(np.log10(df["N"]), np.linspace(0, 1, N_CURVES)), *extra]:
        N = float(N)
        _law_line(ax, fit, np.full_like(grid, N), grid, along=grid, color=CMAP(norm(N)),
                  label=f"N = {N:.2g}")
    _mark_predictions(ax, fit, points, second)
    log_axes(ax, second, "loss", _title(fit))
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
    log_axes(ax, "C = 6ND (FLOP)", "compute-optimal N, D", "compute-optimal allocation")


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
    log_axes(left, "N (parameters)", "loss", "IsoFLOP profiles", log_y=False)
    C = np.geomspace(budgets["C"].min(), budgets["C"].max(), 100)
    for name, pre, exp, colour_ in (("N_opt", "k_N", "a", "C0"), ("D_opt", "k_D", "b", "C1")):
        right.scatter(budgets["C"], budgets[name], color=colour_)
        _power_line(right, fit, C, pre, exp, colour_, f"{name} ∝ C^{fit.params[exp]:.3f}")
    log_axes(right, "C (FLOP)", "N*, D*", _title(fit))
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
    log_axes(left, "C (FLOP)", "loss", _title(fit))
    inner = env[env["interior"]]
    right.scatter(inner["C"], inner["N"], s=8, color="C0", label="envelope N")
    if np.isfinite(fit.params["a"]):
        _power_line(
            right, fit, env["C"].to_numpy(), "k_N", "a", "C0", f"N_opt ∝ C^{fit.params['a']:.3f}"
        )
    log_axes(right, "C (FLOP)", "N_opt", "compute-optimal model size")
    return fig


def _plot_transfer(fit: Fit, df: pd.DataFrame, points: pd.DataFrame | None = None) -> Figure:
    """Effective data transferred D_T against fine-tuning data D_F, a colour per N, with the
    fitted D_T = k·D_F^α·N^β and its bootstrap band at each N; hollow: runs outside the
    low-data fit. Runs with D_T ≤ 0 (ossified) have no place on log axes: `transfer_losses`
    shows them."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    runs = fit.tables["runs"]
    norm = _log_norm(runs["N"].dropna())
    for N, group in runs[runs["D_T"] > 0].groupby("N"):
        colour = CMAP(norm(N))
        inside, outside = group[group["in_fit"]], group[~group["in_fit"]]
        ax.scatter(inside["D_F"], inside["D_T"], s=18, color=colour, label=f"N = {N:.3g}")
        ax.scatter(outside["D_F"], outside["D_T"], s=18, facecolors="none", edgecolors=colour)
        _transfer_line(ax, fit, _span(group["D_F"]), N, colour)
    log_axes(ax, "fine-tuning data D_F (tokens)", "effective data transferred D_T (tokens)",
             _title(fit))
    return fig


def _transfer_line(ax: Axes, fit: Fit, D_F: np.ndarray, N: float, color: object) -> None:
    """D_T = k·D_F^α·N^β at one N, and its bootstrap band."""
    p = fit.params
    if not np.isfinite(p["k"]):
        return
    ax.plot(D_F, p["k"] * D_F ** p["alpha"] * N ** p["beta"], color=color)
    if fit.samples is not None and len(fit.samples) > 1:
        s = fit.samples
        draws = (s["k"].to_numpy()[:, None] * D_F[None, :] ** s["alpha"].to_numpy()[:, None]
                 * N ** s["beta"].to_numpy()[:, None])
        ax.fill_between(D_F, *percentile_interval(draws), color=color, alpha=0.2)


# Figure kinds a law's registry entry names.
PLOTTERS = {
    "curve": _plot_power,
    "two-variable": _plot_two_variable,
    "isoflop": _plot_isoflop,
    "envelope": _plot_envelope,
    "transfer": _plot_transfer,
}


def _law_line(
    ax: Axes,
    fit: Fit,
    *values: np.ndarray,
    along: np.ndarray | None = None,
    color: object,
    label: str,
    ls: str = "-",
) -> None:
    """The fitted law (and its bootstrap band) at `values`, plotted against `along`."""
    table = predict(fit, *values)
    x = values[0] if along is None else along
    ax.plot(x, table["loss"], color=color, ls=ls, label=label)
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


def _title(fit: Fit) -> str:
    """The law and its fitted parameters, compactly, and the status when it is not ok."""
    shown = ", ".join(f"{k}={v:.3g}" for k, v in fit.params.items())
    return "\n".join(filter(None, (f"{fit.law}: {shown}", fit.caveat())))


# Kaplan's figures: one per finding that has one (`analysis.kaplan.section` captions them).


def loss_vs_params(runs: pd.DataFrame, fit: Fit | None, levels: pd.Series) -> Figure:
    """Loss against non-embedding N and against all parameters, a colour per depth, a marker
    per D level (`levels`), and the fitted L(N) on the first panel (Kaplan Fig. 6)."""
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
            ax.scatter(group[x], group["loss"], s=28, color=palette[layers],
                       marker=MARKERS[int(level) % len(MARKERS)])
        log_axes(ax, label, "final validation loss (nats/token)", legend=False)
    if fit is not None:
        N = np.geomspace(runs["N"].min(), runs["N"].max(), 100)
        label = _labelled(fit, f"L(N) fit, α = {fit.params['alpha']:.3f}")
        _law_line(axes[0], fit, N, color="C3", label=label)
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


def power_law(
    points: pd.DataFrame,
    x: str,
    fit: Fit,
    xlabel: str,
    title: str,
    *,
    pure: Fit | None = None,
    context: pd.DataFrame | None = None,
    predicted: pd.DataFrame | None = None,
    ylabel: str = "loss (nats/token)",
) -> Figure:
    """The points a one-variable law was fitted on (columns `x`, loss) and its fit; with
    `pure`, Kaplan's pure form dashed; `context` (other runs, the rest of a frontier) in
    grey; the law drawn out to the `predicted` points and their predictions marked."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    if context is not None and not context.empty:
        ax.scatter(context[x], context["loss"], s=10, color="0.75", label="not fitted")
    ax.scatter(points[x], points["loss"], s=18, color="0.2", label="fitted points")
    grid = _span(points[x], predicted[x] if predicted is not None else [])
    _law_line(ax, fit, grid, color="C3", label=_describe(fit))
    if pure is not None and pure is not fit:
        _law_line(ax, pure, grid, color="C0", label=_describe(pure), ls="--")
    _mark_predictions(ax, fit, predicted, x)
    log_axes(ax, xlabel, ylabel, title)
    return fig


def per_position(positions: pd.DataFrame, scores: pd.DataFrame) -> Figure:
    """Loss against context position T per run (columns run_id, N, T, loss), coloured by N,
    then the ICL score against N (`scores`: N, icl_score)."""
    fig = Figure(figsize=SIZE["double"], layout="constrained")
    left, right = fig.subplots(1, 2)
    size = positions.groupby("run_id")["N"].first()
    norm = _log_norm(size)
    for run, rows in positions.groupby("run_id", sort=False):
        rows = rows.sort_values("T")
        left.plot(rows["T"], rows["loss"], color=CMAP(norm(size[run])), lw=0.9,
                  label=f"N = {size[run]:.2g}")
    log_axes(left, "context position T", "validation loss (nats/token)",
             legend=len(size) <= MAX_LEGEND)
    right.scatter(scores["N"], scores["icl_score"], color="C3")
    right.axhline(0, color="0.6", lw=0.8)
    log_axes(right, "non-embedding parameters N", "ICL score (nats)",
             "loss(late position) − loss(early position)", log_y=False)
    return fig


def noise_scale(points: pd.DataFrame, slope: float, intercept: float) -> Figure:
    """The gradient noise scale at every evaluation against the loss there (columns N, loss,
    noise_scale; Kaplan Fig. 10's B_crit(L)), coloured by N, with the robust power-law line
    B = B_*·L^slope (`intercept` = ln B_*)."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    norm = _log_norm(points["N"])
    ax.scatter(points["loss"], points["noise_scale"], c=CMAP(norm(points["N"])), s=18,
               edgecolors="0.2", linewidths=0.3)
    L = np.geomspace(points["loss"].min(), points["loss"].max(), 50)
    ax.plot(L, np.exp(intercept) * L**slope, color="C3",
            label=f"B_noise ∝ L^{slope:.2f} (Theil–Sen)")
    log_axes(ax, "validation loss (nats/token)", "gradient noise scale B_simple (tokens)",
             "critical batch size: grows as the loss falls (Kaplan: L^-4.8)")
    _size_bar(fig, norm, ax)
    return fig


def transfer(
    runs: pd.DataFrame, fits: dict[str, dict], curves: pd.DataFrame | None = None
) -> Figure:
    """Loss on another distribution against in-distribution validation loss (Kaplan Fig. 8),
    on linear axes, where a constant offset is a line of slope 1.

    Left: each completed run's final losses (`runs`: N, loss and one column per key of
    `fits`), coloured by N, a marker per transfer column; the line of slope 1 through the
    mean offset and the least-squares line (`fits`: slope, intercept, offset_mean). Right,
    with `curves` (run_id, N, val_loss and the first column of `fits`): the same during
    training, a line per run, the final points on top.
    """
    panels = 2 if curves is not None else 1
    fig = Figure(figsize=SIZE["double" if panels == 2 else "single"], layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, panels))
    norm = _log_norm(runs["N"])
    ax = axes[0]
    for i, (column, fit) in enumerate(fits.items()):
        both = runs[["N", "loss", column]].apply(pd.to_numeric, errors="coerce").dropna()
        ax.scatter(both["loss"], both[column], c=CMAP(norm(both["N"])), s=30,
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
            right.plot(curve["val_loss"], curve[column], color=CMAP(norm(curve["N"].iloc[0])),
                       lw=0.9, alpha=0.8)
        final = runs[["N", "loss", column]].apply(pd.to_numeric, errors="coerce").dropna()
        right.scatter(final["loss"], final[column], c=CMAP(norm(final["N"])), s=30,
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
    _size_bar(fig, norm, axes[-1])
    fig.suptitle("Kaplan Fig. 8: transfer tracks in-distribution loss with a constant offset",
                 fontsize=10)
    return fig


def _log_norm(N: pd.Series) -> LogNorm:
    """A log colour scale over model sizes; one size still gets a scale of nonzero width."""
    return LogNorm(N.min(), max(N.max(), N.min() * 1.001))


def _size_bar(fig: Figure, norm: LogNorm, ax: Axes) -> None:
    """The colour bar of model size beside `ax`."""
    fig.colorbar(ScalarMappable(norm, CMAP), ax=ax, label="non-embedding parameters N")


def _describe(fit: Fit) -> str:
    """'offset form, α = …' or 'pure form, α = …' for a power law, else 'fit'; the status
    under it when it is not ok."""
    if "alpha" not in fit.params:
        return _labelled(fit, "fit")
    form = "offset form" if "E" in fit.params else "pure form (Kaplan's)"
    return _labelled(fit, f"{form}, α = {fit.params['alpha']:.3f}")


def _labelled(fit: Fit, label: str) -> str:
    """A legend label, with the fit's status under it when it is not ok."""
    return "\n".join(filter(None, (label, fit.caveat(40))))


# The transfer study's figures (Hernandez et al. 2021; `analysis.transfer.section` captions
# them), from a transfer `Fit`: its runs table (one row per fine-tune) and from-scratch runs.


def transfer_fraction(fit: Fit) -> Figure:
    """The fraction of effective data from fine-tuning, D_F/D_E, against D_F, a colour per N,
    with what the fitted law implies, D_F/(D_F + k·D_F^α·N^β), and the low-data cut
    dotted; hollow: runs outside the fit."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    runs, p = fit.tables["runs"], fit.params
    norm = _log_norm(runs["N"].dropna())
    for N, group in runs[runs["fraction"] > 0].groupby("N"):
        colour = CMAP(norm(N))
        inside, outside = group[group["in_fit"]], group[~group["in_fit"]]
        ax.scatter(inside["D_F"], inside["fraction"], s=18, color=colour, label=f"N = {N:.3g}")
        ax.scatter(outside["D_F"], outside["fraction"], s=18, facecolors="none",
                   edgecolors=colour)
        if np.isfinite(p["k"]):
            D_F = _span(group["D_F"])
            transferred = p["k"] * D_F ** p["alpha"] * N ** p["beta"]
            ax.plot(D_F, D_F / (D_F + transferred), color=colour)
    cut = fit.diagnostics["cut"]["max_fraction"]
    ax.axhline(cut, color="0.4", ls=":", lw=1, label=f"cut D_F/D_E = {cut:g}")
    log_axes(ax, "fine-tuning data D_F (tokens)", "fraction from fine-tuning D_F/D_E",
             "pre-training's share of the effective data shrinks as D_F grows")
    return fig


def transfer_losses(fit: Fit) -> Figure:
    """Fine-tuned loss against D_F (dots joined per N) and the from-scratch law L(N, D) at
    the same N (dashed; crosses: the from-scratch runs), a colour per N. A dot above its
    dashed line is a pre-trained model worse than training from scratch on the same data
    (ossified), ringed in red."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    runs, scratch = fit.tables["runs"].dropna(subset=["loss"]), fit.tables["scratch"]
    norm = _log_norm(pd.concat([runs["N"], scratch["N"]]))
    law = fit.diagnostics["scratch"]["params"]
    D = _span(runs["D_F"], scratch["D"])
    for N, group in runs.groupby("N"):
        group = group.sort_values("D_F")
        ax.plot(group["D_F"], group["loss"], "o-", ms=4, color=CMAP(norm(N)), label=f"N = {N:.3g}")
        if np.isfinite(law["E"]):
            ax.plot(D, laws.chinchilla(N, D, **law), "--", lw=1, color=CMAP(norm(N)))
    ax.scatter(scratch["D"], scratch["loss"], marker="x", s=16, c=CMAP(norm(scratch["N"])))
    if "ossified" in runs:
        worse = runs[runs["ossified"].astype(bool)]
        ax.scatter(worse["D_F"], worse["loss"], s=70, facecolors="none", edgecolors="C3",
                   label="ossified: worse than\nfrom scratch")
    log_axes(ax, "data D_F or D (tokens)", "loss on the target (nats/token)",
             "fine-tuned (dots) and from scratch (dashed: fit, x: runs)")
    return fig


def forgetting(table: pd.DataFrame) -> Figure:
    """The loss on the source corpus after fine-tuning against D_F (`table`: N, D_F, before,
    after), a colour per N, with the parent's loss before fine-tuning dashed at each N."""
    fig = Figure(figsize=SIZE["single"], layout="constrained")
    ax = fig.subplots()
    norm = _log_norm(table["N"])
    for N, group in table.groupby("N"):
        group = group.sort_values("D_F")
        colour = CMAP(norm(N))
        ax.plot(group["D_F"], group["after"], "o-", ms=4, color=colour, label=f"N = {N:.3g}")
        for before in group["before"].dropna().unique():
            ax.axhline(before, color=colour, ls="--", lw=1)
    log_axes(ax, "fine-tuning data D_F (tokens)", "loss on the source (nats/token)",
             "forgetting: after fine-tuning (dots), parent before (dashed)")
    return fig


def overopt_curves(points: pd.DataFrame, fits: dict[float, Fit], form: str, title: str) -> Figure:
    """Gao et al. 2022's overoptimization curves: gold (left, with the fitted R(d) of `form`,
    "bon" or "rl") and proxy reward (right), both relative to the initial policy, against
    d = √KL, a colour per RM size. `points`: rm_size, d, gold, proxy, and rm_run (best-of-n)
    or run (RL), whose points are joined by a line."""
    from analysis.overopt.fit import LAWS

    fig = Figure(figsize=SIZE["double"], layout="constrained")
    gold_ax, proxy_ax = fig.subplots(1, 2)
    norm = _log_norm(points["rm_size"])
    series = "run" if "run" in points else "rm_run"
    for j, ((size, name), group) in enumerate(points.groupby(["rm_size", series])):
        group = group.sort_values("d")
        colour, marker = CMAP(norm(size)), MARKERS[j % len(MARKERS)]
        gold_ax.plot(group["d"], group["gold"], marker + ":", ms=4, lw=0.8, color=colour)
        proxy_ax.plot(group["d"], group["proxy"], marker + "-", ms=4, color=colour,
                      label=f"{name} (N = {size:,.0f})")
    for size, fit in fits.items():
        d = np.linspace(0, points["d"].max() * 1.05, 100)
        gold_ax.plot(d, LAWS[form](d, **fit.params), color=CMAP(norm(size)), lw=2,
                     label=f"fit, RM N = {size:,.0f}: α {fit.params['alpha']:.3g}, "
                           f"β {fit.params['beta']:.3g}")
    for ax, what in ((gold_ax, "gold"), (proxy_ax, "proxy")):
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("d = √KL(π‖π_init) (√nats)")
        ax.set_ylabel(f"{what} reward − initial policy's")
        ax.grid(True, alpha=0.3)
    gold_ax.set_title(f"{title}: gold (markers) and the fitted R(d)", fontsize=10)
    proxy_ax.set_title(f"{title}: proxy, the reward model optimised", fontsize=10)
    add_legend(gold_ax)
    add_legend(proxy_ax)
    return fig


def overopt_trend(fits: dict[str, dict[float, Fit]]) -> Figure:
    """α and β of each form ("bon", "rl": `fits[form][rm_size]`) against RM size, with their
    bootstrap intervals: Gao et al. 2022's figures 3 and 4."""
    fig = Figure(figsize=SIZE["double"], layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, param in zip(axes, ("alpha", "beta"), strict=True):
        for i, (form, by_size) in enumerate(sorted(fits.items())):
            sizes = sorted(by_size)
            values = np.array([by_size[s].params[param] for s in sizes])
            ci = np.array([by_size[s].intervals.get(param, (v, v))
                           for s, v in zip(sizes, values, strict=True)]).reshape(-1, 2)
            ax.errorbar(sizes, values, yerr=np.abs(ci.T - values), fmt="os"[i % 2] + "-",
                        capsize=3, color=f"C{i}", label=f"{param}_{form}")
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, ax.dataLim.intervalx)
        ax.set_xlabel("reward model N (non-embedding parameters)")
        ax.set_ylabel(param)
        ax.grid(True, alpha=0.3)
        add_legend(ax)
    fig.suptitle("coefficients against RM size (Gao: larger RMs, larger α_bon, smaller β)",
                 fontsize=10)
    return fig
