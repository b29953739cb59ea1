"""IsoFLOP profiles (Approach 2) on Llama 3 and Chinchilla points, and on synthetic data."""

import numpy as np
import pandas as pd
import pytest

from analysis.api import fit_law
from analysis.isoflop import fit_isoflop
from analysis.table import FitInputError
from tests.analysis.conftest import isoflop_experiment
from tests.analysis.synthetic import TRUE_CHINCHILLA, isoflop_table

LLAMA = "llama_3__raw_loss"
CHINCHILLA = "epochai_chinchilla__massivetext__chinchilla"


def test_llama3_reproduces_the_papers_exponents(isoflops):
    data = isoflop_experiment(isoflops, LLAMA)
    fit = fit_isoflop(data)
    assert fit.ok and fit.n_points == 133
    # Open-Athena: a = 0.4632, b = 0.5368; the paper's D* = 0.29·C^0.53; our re-check 0.299.
    assert fit.params["a"] == pytest.approx(0.4632, abs=5e-4)
    assert fit.params["b"] == pytest.approx(0.5368, abs=5e-4)
    assert fit.params["k_D"] == pytest.approx(0.299, abs=0.002)
    budgets = fit.tables["budgets"]
    assert budgets["n_kept"].tolist() == [16, 17, 16, 16, 18, 14, 12, 12, 6, 6]
    assert budgets["vertex_in_range"].all()


def test_llama3_extrapolates_to_the_papers_405b_budget(isoflops):
    fit = fit_isoflop(isoflop_experiment(isoflops, LLAMA))
    tokens = fit.params["k_D"] * 3.8e25 ** fit.params["b"]
    assert tokens == pytest.approx(16.55e12, rel=0.05)  # the paper: 16.55T tokens, 402B params


@pytest.mark.parametrize(
    ("experiment", "a"),
    [(CHINCHILLA, 0.495), ("ml_scalefit__massivetext__chinchilla", 0.513)],
)
def test_chinchilla_subsets_match_hoffmanns_approach_2(isoflops, experiment, a):
    fit = fit_isoflop(isoflop_experiment(isoflops, experiment))
    assert fit.params["a"] == pytest.approx(a, abs=1e-3)
    assert 0.462 <= fit.params["a"] <= 0.534  # Hoffmann Table 2's interval around a = 0.49
    assert fit.params["a"] + fit.params["b"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("experiment", "low", "high", "dropped"),
    [
        ("marin_202603__comma__llama_2", 0.40, 0.42, 0),
        ("marin_202603__nemotron__llama_2", 0.41, 0.43, 1),
        ("misfitting__fineweb_c4__transformer", 0.51, 0.53, 4),
    ],
)
def test_other_sources_match_the_readme_regression_values(isoflops, experiment, low, high, dropped):
    fit = fit_isoflop(isoflop_experiment(isoflops, experiment))
    assert low <= fit.params["a"] <= high
    assert len(fit.diagnostics["dropped_budgets"]) == dropped
    assert all("not convex" in why for why in fit.diagnostics["dropped_budgets"].values())


def test_table_flops_per_token_matches_six_on_this_file(isoflops):
    data = isoflop_experiment(isoflops, LLAMA)
    own = fit_isoflop(data, flops_per_token=None)
    assert own.diagnostics["flops_per_token"] == "table"
    assert own.params["b"] == pytest.approx(fit_isoflop(data).params["b"], abs=0.02)


def test_recovers_synthetic_exponents():
    fit = fit_isoflop(isoflop_table())
    p = TRUE_CHINCHILLA
    assert fit.params["a"] == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]), abs=0.01)
    assert fit.params["b"] == pytest.approx(p["alpha"] / (p["alpha"] + p["beta"]), abs=0.01)
    assert fit.stderr["a"] < 0.01


def test_mad_threshold_rejects_an_outlier_and_reports_it():
    df = isoflop_table()
    df.loc[3, "loss"] += 0.5
    plain, robust = fit_isoflop(df), fit_isoflop(df, mad_threshold=3.5)
    kept = robust.tables["budgets"]["n_kept"]
    assert kept.iloc[0] == 8  # the corrupted point is in the smallest budget
    assert plain.tables["budgets"]["n_kept"].sum() == len(df)
    truth = fit_isoflop(isoflop_table()).params["a"]
    assert abs(robust.params["a"] - truth) < abs(plain.params["a"] - truth)


def test_single_budget_is_a_clear_error():
    df = isoflop_table()
    with pytest.raises(FitInputError, match="isoflop needs at least 2 budgets, found 1"):
        fit_isoflop(df[df["C"] == df["C"].iloc[0]])


def test_budgets_too_small_for_a_parabola_are_dropped_and_named():
    df = isoflop_table()
    small = df["C"] == df["C"].max()
    df = pd.concat([df[~small], df[small].head(2)])
    fit = fit_isoflop(df)
    assert fit.diagnostics["n_budgets"] == 6
    assert list(fit.diagnostics["dropped_budgets"].values()) == [
        "2 distinct N (a parabola needs 3)"
    ]


def test_bootstrap_resamples_within_budgets(isoflops):
    fit = fit_law(isoflop_experiment(isoflops, LLAMA), "isoflop", n_bootstrap=100, seed=0)
    assert fit.diagnostics["bootstrap"]["unit"] == "rows within C"
    lo, hi = fit.intervals["a"]
    assert lo < fit.params["a"] < hi and hi - lo < 0.15
    assert np.isfinite(fit.stderr["a"])


def test_vertex_far_outside_the_sizes_sampled_is_dropped_and_near_is_flagged():
    def budget(C: float, centre: float, offsets: np.ndarray) -> pd.DataFrame:
        lnN = np.log(centre) + offsets
        return pd.DataFrame(
            {"C": C, "N": np.exp(lnN), "loss": 2 + 0.05 * (lnN - np.log(centre)) ** 2}
        )

    inside = np.linspace(-1, 1, 5)
    df = pd.concat(
        [
            budget(1e19, 1e8, inside),
            budget(1e20, 3e8, inside + 1.2),  # vertex 0.1 of the range below the smallest N
            budget(1e21, 1e9, inside),
            budget(1e22, 3e9, inside + 4.0),  # vertex 1.5 ranges below: never turned up
        ]
    )
    fit = fit_isoflop(df)
    assert fit.diagnostics["dropped_budgets"] == {
        "1e+22": "vertex 1.5 ranges outside the sizes sampled"
    }
    assert fit.tables["budgets"]["vertex_in_range"].tolist() == [True, False, True]
    assert fit.diagnostics["vertices_out_of_range"] == 1
