"""The one plotting module: figures without pyplot state, log ticks that do not collide,
learning curves drawn per run with their lower envelope, and Kaplan's figures."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import laws, plots
from analysis.envelope import lower_envelope
from analysis.fit import fit_power
from tests.analysis.synthetic import TRUE_CHINCHILLA

SIZES = (1e6, 1e7, 1e8)


def _record(sizes: tuple[float, ...] = SIZES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A results table and its record curves (run_id, step, tokens, flops, val_loss)."""
    tokens = np.geomspace(1e7, 1e10, 20)
    results = pd.DataFrame({"run_id": [f"r{i}" for i in range(len(sizes))], "N": sizes})
    curves = pd.concat(
        pd.DataFrame({"run_id": f"r{i}", "step": tokens / 1e5, "tokens": tokens,
                      "flops": 6 * N * tokens,
                      "val_loss": laws.chinchilla(N, tokens, **TRUE_CHINCHILLA)})
        for i, N in enumerate(sizes)
    )
    return results, curves


def _tick_labels_collide(fig: Figure) -> list[str]:
    """The axes (by label) whose visible major tick labels overlap once drawn."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    colliding = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels()
                     if t.get_visible() and t.get_text()]
            if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                colliding.append(axis.get_label_text())
    return colliding


def _log_axes(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_xscale() == "log"]


def test_record_curves_are_drawn_per_run_with_their_lower_envelope():
    results, curves = _record()
    stray = curves[curves["run_id"] == "r0"].assign(run_id="not-in-results")
    fig = plots.learning_curves(results, pd.concat([curves, stray]), "flops", "compute")
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines[:3]] == ["N = 1e+06", "N = 1e+07", "N = 1e+08"]
    assert len(lines) == 4 and lines[3].get_label() == "frontier"
    table = curves.merge(results, on="run_id").rename(
        columns={"run_id": "run", "val_loss": "loss", "flops": "C"})
    np.testing.assert_allclose(lines[3].get_ydata(), lower_envelope(table)["loss"])
    by_tokens = plots.learning_curves(results, curves, "tokens", "tokens").axes[0]
    assert len(by_tokens.get_lines()) == 3  # no frontier over tokens
    assert not _tick_labels_collide(fig)


def test_kaplan_figures_are_figures_on_log_axes_with_readable_ticks():
    results, curves = _record()
    table = curves.merge(results, on="run_id").rename(
        columns={"run_id": "run", "val_loss": "loss", "flops": "C", "tokens": "D"})
    frontier = lower_envelope(table)
    fit = fit_power(frontier, x="C", offset=False)
    runs = results.assign(D=1e10, loss=[3.0, 2.8, 2.6], n_params=results["N"] * 1.1,
                          **{"model.n_layer": [2, 4, 8]})
    positions = pd.DataFrame({"run_id": np.repeat(results["run_id"], 8), "N": np.repeat(SIZES, 8),
                              "T": np.tile(np.arange(1, 9), 3), "loss": 3.0})
    noise = table.assign(noise_scale=1e4 / table["loss"] ** 5)
    figures = {
        "run_curves": plots.run_curves(table, "C", "compute C", frontier, fit, frontier),
        "power_law": plots.power_law(frontier, "C", fit, "compute C", "L(C)",
                                     context=frontier.iloc[:3]),
        "loss_vs_params": plots.loss_vs_params(runs, None, pd.Series(0, index=runs.index)),
        "per_position": plots.per_position(
            positions, pd.DataFrame({"N": SIZES, "icl_score": [-0.1, -0.2, -0.3]})),
        "noise_scale": plots.noise_scale(noise, -5.0, np.log(1e4)),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure) and _log_axes(fig), name
        assert not _tick_labels_collide(fig), name
        for ax in _log_axes(fig):  # every log axis carries two labels or more
            assert sum(bool(t.get_text()) for t in ax.xaxis.get_ticklabels()) >= 2, name
    assert tuple(figures["loss_vs_params"].get_size_inches()) == plots.SIZE["double"]
    assert tuple(figures["power_law"].get_size_inches()) == plots.SIZE["single"]


def test_a_power_law_is_drawn_out_to_the_predicted_points():
    N = np.geomspace(1e6, 1e8, 8)
    points = pd.DataFrame({"N": N, "loss": laws.power(N, 1e13, 0.08)})
    fit = fit_power(points, x="N", offset=False)
    fig = plots.power_law(points, "N", fit, "N", "L(N)", predicted=pd.DataFrame({"N": [1e10]}))
    (ax,) = fig.axes
    law = next(line for line in ax.get_lines() if line.get_label().startswith("pure form"))
    assert law.get_xdata().max() == pytest.approx(1e10)
    assert "predicted" in ax.get_legend_handles_labels()[1]


def test_the_module_never_touches_pyplot():
    code = (
        "import sys; from analysis import plots; from tests.analysis.test_plots import _record; "
        "r, c = _record(); plots.learning_curves(r, c, 'flops', 'C').savefig('/dev/null', "
        "format='png'); assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
