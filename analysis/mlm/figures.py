"""The masked-vs-causal section's figures, in the house style of `analysis.plots`: each
objective's L(N) and L(D) with its fit, masked_positions_loss against N and D per objective,
and the loss against the mask rate per size."""

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis import plots
from analysis.allocation import predict
from analysis.mlm.fit import CAUSAL, LIKE_FOR_LIKE, ObjectiveFits

LOSS = "validation loss, own objective (nats/token)"
COMMON = "masked_positions_loss (nats/token)"


def palette(objectives: list[str]) -> dict[str, str]:
    """One colour per objective, causal first, the same in every figure of the section."""
    ordered = sorted(objectives, key=lambda o: (o != CAUSAL, o))
    return {objective: f"C{i}" for i, objective in enumerate(ordered)}


def laws_figure(fits: dict[str, ObjectiveFits]) -> Figure:
    """L(N) at the largest D (left) and L(D) at the largest N (right): each objective's points
    and fitted power law with its bootstrap band, a colour per objective."""
    fig = Figure(figsize=plots.SIZE["double"], layout="constrained")
    axes = fig.subplots(1, 2)
    colour = palette(list(fits))
    for ax, key, x, xlabel in ((axes[0], "L(N)", "N", "non-embedding parameters N"),
                               (axes[1], "L(D)", "D", "tokens read D")):
        for objective, fitted in fits.items():
            law = fitted.laws[key]
            if law.points is None:
                continue
            ax.scatter(law.points[x], law.points["loss"], s=22, color=colour[objective])
            if law.fit is not None and law.fit.usable:
                grid = np.geomspace(law.points[x].min(), law.points[x].max(), 100)
                _band(ax, predict(law.fit, grid), grid, colour[objective],
                      f"{objective}: α = {law.fit.params['alpha']:.3f}")
        plots.log_axes(ax, xlabel, LOSS, f"{key}, each objective's own loss")
    return fig


def like_for_like_figure(rows: pd.DataFrame) -> Figure:
    """masked_positions_loss against N at the largest D (left) and against D at the largest N
    (right), a colour per objective: the same held-out tokens scored by every run."""
    fig = Figure(figsize=plots.SIZE["double"], layout="constrained")
    axes = fig.subplots(1, 2)
    colour = palette(list(rows["objective"].unique()))
    for ax, along, xlabel in ((axes[0], "N", "non-embedding parameters N"),
                              (axes[1], "D", "tokens read D")):
        for objective, group in rows[rows["along"] == along].groupby("objective"):
            group = group.sort_values(along)
            ax.plot(group[along], group[LIKE_FOR_LIKE], "o-", color=colour[objective],
                    label=objective)
        other = "D" if along == "N" else "N"
        plots.log_axes(ax, xlabel, COMMON, f"against {along} at the largest {other}")
    return fig


def mask_rate_figure(rows: pd.DataFrame) -> Figure:
    """Loss against the mask rate, a colour per size: val_loss at each run's own rate (left)
    and, where recorded, masked_positions_loss on the common positions (right)."""
    common = rows[LIKE_FOR_LIKE].notna().any()
    fig = Figure(figsize=plots.SIZE["double" if common else "single"], layout="constrained")
    axes = fig.subplots(1, 2 if common else 1, squeeze=False)[0]
    colour = plots.colours(rows["N"])
    panels = [(axes[0], "val_loss", LOSS, "at each run's own mask rate")]
    if common:
        panels.append((axes[1], LIKE_FOR_LIKE, COMMON, "on the positions common to every run"))
    for ax, column, ylabel, title in panels:
        for N, group in rows.groupby("N"):
            ax.plot(group["mask_rate"], group[column], "o-", color=colour[N],
                    label=f"N = {N:.3g}, D = {group['D'].median():.3g}")
        ax.set_xlabel("mask rate (stage.mask_rate)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        plots.add_legend(ax)
    return fig


def _band(ax: Axes, table: pd.DataFrame, x: np.ndarray, colour: str, label: str) -> None:
    """A fitted loss (`analysis.allocation.predict`'s table) and its bootstrap band."""
    ax.plot(x, table["loss"], color=colour, label=label)
    if "loss_lo" in table:
        ax.fill_between(x, table["loss_lo"], table["loss_hi"], color=colour, alpha=0.2)
