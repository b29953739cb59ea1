"""Compute-optimal allocation and predictions from fitted L(N, D) laws."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from analysis import laws, registry
from analysis.allocation import allocation_params, compute_optimal, predict
from analysis.registry import fit_law
from analysis.result import Fit, misallocation
from tests.analysis.synthetic import TRUE_CHINCHILLA, TRUE_KAPLAN_ND, kaplan_nd_table

CHINCHILLA_COMPUTE = 6 * 70e9 * 1.4e12


def _numeric_optimum(law: str, params: dict, C: float) -> float:
    """N minimising L(N, C/(6N)), by brute force in ln N."""
    res = minimize_scalar(
        lambda lnN: registry.evaluate(law, params, np.exp(lnN), C / (6 * np.exp(lnN))),
        bounds=(5, 40),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(np.exp(res.x))


@pytest.mark.parametrize(
    ("law", "params"), [("chinchilla", TRUE_CHINCHILLA), ("kaplan-nd", TRUE_KAPLAN_ND)]
)
def test_closed_form_matches_numeric_minimisation(law, params):
    p = allocation_params(law, params)
    assert p["a"] + p["b"] == pytest.approx(1.0)
    for C in (1e19, 1e22, 1e25):
        assert p["G"] * (C / 6) ** p["a"] == pytest.approx(
            _numeric_optimum(law, params, C), rel=1e-5
        )


def test_hoffmanns_printed_fit_gives_its_exponents():
    p = allocation_params(
        "chinchilla", {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    )
    assert p["a"] == pytest.approx(0.46, abs=0.01)  # Hoffmann: 0.46, from unrounded α, β


def test_epoch_refit_allocation_and_bands(epoch_grid_fit):
    alloc = compute_optimal(epoch_grid_fit)
    assert alloc.params["a"] == pytest.approx(0.514, abs=1e-3)  # README: a = β/(α+β) = 0.514
    row = alloc.at(CHINCHILLA_COMPUTE).iloc[0]
    assert row["N_opt"] * row["D_opt"] * 6 == pytest.approx(CHINCHILLA_COMPUTE)
    assert 15 < row["tokens_per_param"] < 25
    assert "N_opt_lo" not in row  # no bootstrap, no band


@pytest.fixture(scope="module")
def kaplan_nd_fit() -> Fit:
    """Kaplan eq 1.5 fitted on synthetic data, with 40 bootstrap draws."""
    return fit_law(kaplan_nd_table(), "kaplan-nd", n_bootstrap=40, seed=0)


def test_bands_come_from_bootstrap_draws(kaplan_nd_fit):
    fit = kaplan_nd_fit
    alloc = compute_optimal(fit)
    assert set(alloc.intervals) == {"G", "a", "b"}
    table = alloc.at([1e20, 1e22])
    assert (table["N_opt_lo"] < table["N_opt"]).all() and (table["N_opt"] < table["N_opt_hi"]).all()
    assert alloc.to_dict()["params"]["a"] == pytest.approx(alloc.params["a"])


def test_predict_with_interval_at_a_new_point(kaplan_nd_fit):
    out = predict(kaplan_nd_fit, [1e10], [1e11]).iloc[0]
    truth = laws.kaplan_nd(1e10, 1e11, **TRUE_KAPLAN_ND)
    assert out["loss_lo"] < out["loss"] < out["loss_hi"]
    assert out["loss"] == pytest.approx(truth, rel=0.01)


def test_predict_checks_the_number_of_inputs(epoch_grid_fit: Fit):
    with pytest.raises(ValueError, match=r"predicts from \('N', 'D'\), got 1 inputs"):
        predict(epoch_grid_fit, [1e9])


def test_allocation_needs_an_nd_law():
    with pytest.raises(ValueError, match="needs an L\\(N, D\\) law"):
        allocation_params("power", {})


def test_an_exponent_outside_zero_one_is_no_allocation():
    assert misallocation({"a": 0.46, "b": 0.54}) == ""
    assert misallocation({"a": 1.907, "b": -0.907}) == (
        "degenerate: a = 1.91, b = -0.907 outside (0, 1): N_opt or D_opt would shrink as "
        "compute grows"
    )


def test_a_kaplan_fit_whose_N_exponent_vanished_allocates_nothing():
    """α_N = 0 puts all compute into N (a = 1): degenerate, and no ZeroDivisionError."""
    params = TRUE_KAPLAN_ND | {"alpha_N": 0.0}
    fit = Fit("kaplan-nd", params, np.zeros(3), 3, ("N", "D"), status="ok")
    allocation = compute_optimal(fit)
    assert allocation.params["a"] == 1.0
    assert allocation.status.startswith("degenerate: a = 1, b = 0 outside (0, 1)")
    assert allocation.to_dict()["status"] == allocation.status
