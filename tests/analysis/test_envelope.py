"""The lower envelope of learning curves (Approach 1, Kaplan's L(C_min))."""

import numpy as np
import pandas as pd
import pytest

from analysis.envelope import fit_envelope, lower_envelope
from analysis.registry import fit_law
from analysis.table import FitInputError
from tests.analysis.synthetic import TRUE_CHINCHILLA, learning_curves, noisy


def test_envelope_takes_the_lowest_run_and_interpolates_inside_each_run_only():
    curves = pd.DataFrame(
        {
            "run": ["small"] * 3 + ["big"] * 2,
            "N": [1.0] * 3 + [10.0] * 2,
            "C": [1.0, 10.0, 100.0, 10.0, 1000.0],
            "loss": [4.0, 3.0, 2.9, 3.5, 2.0],
        }
    )
    env = lower_envelope(curves, n_grid=4)  # C = 1, 10, 100, 1000
    assert env["C"].tolist() == pytest.approx([1.0, 10.0, 100.0, 1000.0])
    assert env["run"].tolist() == ["small", "small", "big", "big"]
    assert env["loss"].iloc[0] == 4.0  # only the small run has spent C = 1
    assert env["loss"].iloc[2] == pytest.approx((3.5 * 2.0) ** 0.5)  # log-log midpoint


def test_recovers_the_compute_optimal_law():
    fit = fit_envelope(learning_curves())
    p = TRUE_CHINCHILLA
    a = p["beta"] / (p["alpha"] + p["beta"])
    assert fit.ok, fit.status
    # L_opt(C) = E + K·C^(−αβ/(α+β)) exactly, for continuous N.
    assert fit.params["alpha"] == pytest.approx(
        p["alpha"] * p["beta"] / (p["alpha"] + p["beta"]), rel=0.03
    )
    assert fit.params["E"] == pytest.approx(p["E"], abs=0.02)
    # 16 discrete sizes make N_opt(C) a staircase: a is recovered to about 0.02.
    assert fit.params["a"] == pytest.approx(a, abs=0.03)
    assert fit.params["a"] + fit.params["b"] == pytest.approx(1.0)
    assert fit.tables["envelope"]["interior"].sum() == fit.n_points


def test_pure_form_has_no_offset():
    fit = fit_envelope(learning_curves(), offset=False)
    assert "E" not in fit.params and fit.params["alpha"] > 0


def test_needs_two_runs_and_an_interior_optimum():
    curves = learning_curves()
    with pytest.raises(FitInputError, match="envelope needs at least 2 runs, found 1"):
        fit_envelope(curves[curves["run"] == "r0"])
    two = curves[curves["run"].isin(["r0", "r1"])]
    with pytest.raises(FitInputError, match="strictly between the smallest and largest"):
        fit_envelope(two)


def test_bootstrap_resamples_whole_runs():
    fit = fit_law(learning_curves(), "envelope", n_bootstrap=30, seed=1)
    assert fit.diagnostics["bootstrap"]["unit"] == "run"
    assert fit.diagnostics["bootstrap"]["used"] >= 25
    lo, hi = fit.intervals["a"]
    assert lo < fit.params["a"] < hi


def test_an_envelope_that_does_not_fall_is_degenerate_not_ok():
    """Curves all at one loss: the envelope is noise, and its power law runs off."""
    curves = learning_curves()
    curves["loss"] = noisy(np.full(len(curves), 3.0), np.random.default_rng(1), 0.003)
    fit = fit_envelope(curves)
    assert fit.status.startswith("degenerate: x_c ran off to 0"), fit.status
    assert not fit.usable
