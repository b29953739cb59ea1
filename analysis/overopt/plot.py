"""The overoptimization section's DPO figure: gold reward against d = √KL per β, drawn as
`analysis.plots.overopt_curves` draws the RL runs (fitting stays in `fit`)."""

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from analysis.overopt.fit import DpoCurve, rl_law
from analysis.plots import CMAP, MARKERS, SIZE, add_legend


def dpo_curves(curves: dict[float, DpoCurve]) -> Figure:
    """DPO's overoptimization curves, a colour per β (`fit_dpo`'s curves, at least one): gold
    reward relative to the first evaluation (left; open circle: the peak; line: R_RL(d)
    where fitted) and the held-out preference accuracy, DPO's own objective (right), against
    d = √KL(π‖π_ref). Each run's points are joined in order of step: a sampled KL need not
    grow monotonically."""
    fig = Figure(figsize=SIZE["double"], layout="constrained")
    gold_ax, accuracy_ax = fig.subplots(1, 2)
    betas = sorted(curves)
    norm = LogNorm(betas[0], max(betas[-1], betas[0] * 1.001))  # one β still gets a scale
    d = np.linspace(0, max(c.points["d"].max() for c in curves.values()) * 1.05, 100)
    for j, beta in enumerate(betas):
        curve = curves[beta]
        colour, marker = CMAP(norm(beta)), MARKERS[j % len(MARKERS)]
        for i, (_, run) in enumerate(curve.points.groupby("run")):
            run = run.sort_values("step")
            label = f"β = {beta:g}" if i == 0 else None
            gold_ax.plot(run["d"], run["gold"], marker + ":", ms=4, lw=0.8, color=colour)
            accuracy_ax.plot(run["d"], run["val_accuracy"], marker + "-", ms=4, color=colour,
                             label=label)
        gold_ax.plot(curve.peak["d"], curve.peak["gold"], "o", ms=11, mfc="none", mew=1.2,
                     color=colour)
        if curve.fit is not None:
            gold_ax.plot(d, rl_law(d, **curve.fit.params), color=colour, lw=2,
                         label=f"fit, β = {beta:g}: α {curve.fit.params['alpha']:.3g}, "
                               f"β_RL {curve.fit.params['beta']:.3g}")
    gold_ax.axhline(0, color="0.6", lw=0.8)
    accuracy_ax.axhline(0.5, color="0.6", lw=0.8)
    for ax in (gold_ax, accuracy_ax):
        ax.set_xlabel("d = √KL(π‖π_ref) (√nats)")
        ax.grid(True, alpha=0.3)
        add_legend(ax)
    gold_ax.set_ylabel("gold reward − initial policy's")
    accuracy_ax.set_ylabel("held-out preference accuracy")
    gold_ax.set_title("DPO: gold (markers; circled: the peak) and the fitted R_RL(d)",
                      fontsize=10)
    accuracy_ax.set_title("DPO: its own objective, the implicit reward's accuracy",
                          fontsize=10)
    return fig
