"""Seeded bootstrap over rows, runs and strata."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from analysis.fit import fit_kaplan_nd, fit_kaplan_ns, fit_power, warm_starts
from analysis.registry import fit_law
from analysis.uncertainty import bootstrap, percentile_interval, resample
from tests.analysis.synthetic import TRUE_KAPLAN_NS, kaplan_nd_table, kaplan_ns_curves


def test_row_resample_keeps_size_and_draws_with_replacement():
    df = pd.DataFrame({"x": np.arange(100)})
    out = resample(df, np.random.default_rng(0))
    assert len(out) == 100 and out["x"].nunique() < 100


def test_run_resample_keeps_whole_runs_and_relabels_copies():
    df = pd.DataFrame({"run": np.repeat(["a", "b", "c"], [2, 3, 4]), "i": np.arange(9)})
    out = resample(df, np.random.default_rng(1), unit="run")
    assert out["run"].nunique() == 3  # three draws, each its own label
    sizes = sorted(out.groupby("run").size().tolist())
    assert all(size in (2, 3, 4) for size in sizes)


def test_strata_resample_keeps_each_stratum_size():
    df = pd.DataFrame({"C": np.repeat([1.0, 2.0], [3, 7]), "i": np.arange(10)})
    out = resample(df, np.random.default_rng(2), strata="C")
    assert out.groupby("C").size().tolist() == [3, 7]
    assert set(out.loc[out["C"] == 1.0, "i"]) <= {0, 1, 2}


def test_percentile_interval_is_the_central_95_percent():
    lo, hi = percentile_interval(np.arange(1001.0))
    assert (lo, hi) == pytest.approx((25.0, 975.0))


def test_failed_refits_are_counted_not_used():
    df = pd.DataFrame({"N": np.geomspace(1e6, 1e9, 6), "loss": np.geomspace(4, 2, 6)})
    fit = fit_power(df, offset=False)
    out = bootstrap(fit, df, lambda d: fit_power(d.head(2), offset=False), k=10, seed=0)
    assert out.diagnostics["bootstrap"] == {
        "k": 10,
        "used": 0,
        "failed": 10,
        "at_bound": 0,
        "degenerate": 0,
        "failures": {"FitInputError: power needs >= 3 points, got 2": 10},
        "seed": 0,
        "level": 0.95,
        "unit": "row",
    }
    assert out.intervals == {}


def test_refits_that_raise_are_counted_with_their_reason_and_degenerate_ones_kept():
    df = pd.DataFrame({"N": np.geomspace(1e6, 1e9, 6), "loss": np.geomspace(4, 2, 6)})
    fit = fit_power(df, offset=False)
    calls = iter(range(100))

    def refit(d: pd.DataFrame):
        i = next(calls)
        if i % 3 == 0:  # as SciPy's least_squares raises mid-step on some data
            raise ValueError("array must not contain infs or NaNs")
        again = fit_power(d, offset=False)
        return replace(again, status="degenerate: x_c ran off to ∞") if i % 3 == 1 else again

    out = bootstrap(fit, df, refit, k=9, seed=0)
    summary = out.diagnostics["bootstrap"]
    assert (summary["used"], summary["failed"], summary["degenerate"]) == (6, 3, 3)
    assert summary["failures"] == {"ValueError: array must not contain infs or NaNs": 3}
    assert len(out.samples) == 6 and set(out.intervals) == {"x_c", "alpha"}


def test_kaplan_ns_bootstrap_over_runs_covers_the_truth():
    fit = fit_law(kaplan_ns_curves(), "kaplan-ns", n_bootstrap=40, seed=0)
    assert fit.diagnostics["bootstrap"]["unit"] == "run"
    for name in ("alpha_N", "alpha_S"):
        lo, hi = fit.intervals[name]
        assert lo < fit.params[name] < hi
        assert lo - 0.01 < TRUE_KAPLAN_NS[name] < hi + 0.01, name


def test_every_law_bootstraps_with_the_same_seed_to_the_same_draws():
    df = kaplan_ns_curves()
    one = fit_law(df, "kaplan-ns", n_bootstrap=4, seed=9).samples
    two = fit_law(df, "kaplan-ns", n_bootstrap=4, seed=9).samples
    pd.testing.assert_frame_equal(one, two)
    assert fit_law(df, "kaplan-ns", n_bootstrap=4, seed=10).samples.iloc[0, 0] != pytest.approx(
        one.iloc[0, 0], rel=1e-12
    )


@pytest.mark.parametrize(
    ("fitter", "table", "unit"),
    [(fit_kaplan_nd, kaplan_nd_table(), None), (fit_kaplan_ns, kaplan_ns_curves(), "run")],
)
def test_warm_started_refits_reach_the_optimum_of_the_whole_grid(fitter, table, unit):
    """Bootstrap refits start from the fit's optimum and its 2 best starts, not 18."""
    fit = fitter(table)
    starts = warm_starts(fit)
    assert len(starts) == 3 and len(fit.diagnostics["best_starts"]) == 2
    rng = np.random.default_rng(7)
    for _ in range(4):
        sample = resample(table, rng, unit)
        warm, full = fitter(sample, starts=starts), fitter(sample)
        assert warm.diagnostics["objective"] <= full.diagnostics["objective"] * (1 + 1e-6)
