"""Power, rising and Kaplan laws: recovery of known parameters, statuses and errors."""

import numpy as np
import pandas as pd
import pytest

from analysis import fit as fit_module
from analysis import laws
from analysis.fit import fit_kaplan_nd, fit_kaplan_ns, fit_power, fit_rising, ols
from analysis.registry import fit_law
from analysis.table import FitInputError, select
from tests.analysis.conftest import DATA
from tests.analysis.synthetic import (
    TRUE_KAPLAN_ND,
    TRUE_KAPLAN_NS,
    kaplan_nd_table,
    kaplan_ns_curves,
    noisy,
)


def _power_table(E: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    N = np.geomspace(1e6, 1e11, 40)
    return pd.DataFrame({"N": N, "loss": noisy(laws.power(N, 8.8e13, 0.076, E), rng, 0.003)})


def test_pure_power_recovers_kaplan_constants():
    fit = fit_power(_power_table(0.0), offset=False)
    assert fit.ok
    assert set(fit.params) == {"x_c", "alpha"}
    assert fit.params["alpha"] == pytest.approx(0.076, abs=3 * fit.stderr["alpha"] + 1e-4)
    assert np.log(fit.params["x_c"]) == pytest.approx(np.log(8.8e13), abs=0.5)
    assert fit.n_points == 40 and fit.residuals.shape == (40,)


def test_power_with_offset_recovers_E():
    truth = laws.power(np.geomspace(1e6, 1e11, 40), 1e10, 0.3, 1.7)
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"D": np.geomspace(1e6, 1e11, 40), "loss": noisy(truth, rng, 0.003)})
    fit = fit_power(df, x="D")
    assert fit.ok, fit.status
    assert fit.variables == ("D",)
    assert fit.params["E"] == pytest.approx(1.7, abs=0.05)
    assert fit.params["alpha"] == pytest.approx(0.3, abs=0.03)
    assert fit.diagnostics["n_at_best"] >= 1 and fit.diagnostics["n_starts"] == 5


def test_offset_fit_on_pure_law_says_E_hit_its_bound():
    N = np.geomspace(1e6, 1e11, 20)
    fit = fit_power(pd.DataFrame({"N": N, "loss": laws.power(N, 8.8e13, 0.076)}))
    assert fit.status == "hit_bound:E"
    assert fit.params["E"] == pytest.approx(0.0, abs=1e-9)


def test_power_needs_more_points_than_parameters():
    df = _power_table(1.0).head(3)
    with pytest.raises(FitInputError, match="power with offset needs >= 4 points, got 3"):
        fit_power(df)
    assert fit_power(df, offset=False).n_points == 3


def test_kaplan_nd_recovers_published_constants():
    fit = fit_kaplan_nd(kaplan_nd_table())
    assert fit.ok, fit.status
    assert fit.params["alpha_N"] == pytest.approx(TRUE_KAPLAN_ND["alpha_N"], rel=0.03)
    assert fit.params["alpha_D"] == pytest.approx(TRUE_KAPLAN_ND["alpha_D"], rel=0.05)
    for name in ("N_c", "D_c"):
        assert np.log(fit.params[name]) == pytest.approx(np.log(TRUE_KAPLAN_ND[name]), abs=0.5)
        assert fit.stderr[name] > 0


def test_kaplan_ns_recovers_published_constants():
    fit = fit_kaplan_ns(kaplan_ns_curves())
    assert fit.ok, fit.status
    assert fit.params["alpha_N"] == pytest.approx(TRUE_KAPLAN_NS["alpha_N"], rel=0.03)
    assert fit.params["alpha_S"] == pytest.approx(TRUE_KAPLAN_NS["alpha_S"], rel=0.05)
    assert fit.params["S_c"] == pytest.approx(TRUE_KAPLAN_NS["S_c"], rel=0.1)


def test_kaplan_forms_need_five_points():
    with pytest.raises(FitInputError, match="kaplan-nd needs >= 5 points, got 4"):
        fit_kaplan_nd(kaplan_nd_table().head(4))
    with pytest.raises(FitInputError, match="kaplan-ns needs >= 5 points, got 2"):
        fit_kaplan_ns(kaplan_ns_curves().head(2))


def test_ols_standard_errors_match_textbook():
    x = np.arange(10.0)
    y = 2 * x + 1 + np.array([0.1, -0.1] * 5)
    slope, intercept, se_slope, _ = ols(x, y)
    assert slope == pytest.approx(2, abs=0.02) and intercept == pytest.approx(1, abs=0.1)
    resid = y - (slope * x + intercept)
    assert se_slope == pytest.approx(np.sqrt(resid @ resid / 8 / np.sum((x - x.mean()) ** 2)))
    assert np.isnan(ols(x[:2], y[:2])[2])


def test_power_needs_x_to_vary():
    df = pd.DataFrame({"N": [1e9] * 6, "loss": np.linspace(2.5, 3.0, 6)})
    with pytest.raises(
        FitInputError, match="power with offset needs more distinct values of 'N', got 1"
    ):
        fit_power(df)


@pytest.mark.parametrize(
    ("csv", "x", "y"),
    [
        ("chinchilla_table3.csv", "flops", "params"),  # N_opt ∝ C^0.50
        ("cerebras_gpt_downstream.csv", "C", "downstream_avg"),  # accuracy rises with C
        ("chinchilla_isoflop_1e20_right_arm.csv", "N", "loss"),  # past the IsoFLOP optimum
    ],
)
@pytest.mark.parametrize("offset", [True, False])
def test_power_refuses_a_quantity_that_rises(csv, x, y, offset):
    df = select(pd.read_csv(DATA / csv), [x, "loss"], {"loss": y})
    with pytest.raises(FitInputError, match=f"this one rises with '{x}'.*use --law rising"):
        fit_power(df, x=x, offset=offset)


@pytest.mark.parametrize("seed", [0, 6])  # two noise draws whose log-log slope is negative
@pytest.mark.parametrize("offset", [True, False])
def test_power_on_a_flat_loss_is_degenerate_not_ok(seed, offset):
    N = np.geomspace(1e6, 1e9, 12)
    loss = noisy(np.full_like(N, 3.0), np.random.default_rng(seed), 0.01)
    df = pd.DataFrame({"N": N, "loss": loss})
    fit = fit_power(df, offset=offset)
    assert fit.status.startswith("degenerate: x_c ran off to ∞"), fit.status
    assert not fit.usable


def test_rising_reproduces_hoffmann_table3(table3):
    df = select(table3, ["flops", "loss"], {"loss": "params"})
    fit = fit_law(df, "rising", x="flops", n_bootstrap=200, seed=0)
    assert fit.ok and fit.variables == ("flops",)
    # Approach 1: a = 0.50 (0.488–0.502); the table's own log-log slope is 0.498.
    assert fit.params["a"] == pytest.approx(0.498, abs=5e-4)
    lo, hi = fit.intervals["a"]
    assert 0.48 < lo < fit.params["a"] < hi < 0.52
    # N_opt at the table's 5.76e23-FLOP row (Chinchilla itself: 67B in the table, 70B trained)
    assert fit.params["k"] * 5.76e23 ** fit.params["a"] == pytest.approx(6.7e10, rel=0.05)
    tokens = fit_rising(select(table3, ["flops", "loss"], {"loss": "tokens"}), x="flops")
    assert fit.params["a"] + tokens.params["a"] == pytest.approx(1.0, abs=0.01)


def test_rising_recovers_a_synthetic_law_and_refuses_a_falling_one():
    C = np.geomspace(1e18, 1e24, 15)
    df = pd.DataFrame({"C": C, "loss": noisy(0.1 * C**0.46, np.random.default_rng(0), 0.02)})
    fit = fit_rising(df)
    assert fit.params["a"] == pytest.approx(0.46, abs=3 * fit.stderr["a"])
    assert np.log(fit.params["k"]) == pytest.approx(np.log(0.1), abs=3 * fit.stderr["k"] / 0.1)
    with pytest.raises(FitInputError, match=r"this one falls with 'C'.*use --law power"):
        fit_rising(df.assign(loss=1 / df["loss"]))


def test_kaplan_nd_on_a_flat_loss_is_degenerate_despite_starts_that_raise():
    """SciPy raises from some starts on this table ("array must not contain infs or
    NaNs"); the others go on, and the optimum they reach is named degenerate."""
    table = kaplan_nd_table()
    table["loss"] = noisy(np.full(len(table), 3.0), np.random.default_rng(0))
    fit = fit_kaplan_nd(table)
    assert fit.status.startswith("degenerate: N_c ran off to ∞"), fit.status
    assert fit.diagnostics["n_failed_starts"] >= 1


def test_a_jacobian_column_that_overflowed_has_no_stderr_and_spares_the_others():
    """At a runaway optimum a column of J can be ∞ (on some CPUs the flat-loss fit above ends
    there): that parameter's standard error is NaN, the others are those of J without it."""
    from scipy.optimize import OptimizeResult

    J = np.array([[1.0, np.inf, 0.0], [0.0, 1.0, 2.0], [1.0, 1e200, 1.0], [2.0, 0.0, 1.0]])
    se = fit_module._jacobian_stderr(OptimizeResult(jac=J, cost=0.5), n=4)
    kept = J[:, [0, 2]]
    expected = np.sqrt(np.diag(2 * 0.5 / (4 - 3) * np.linalg.inv(kept.T @ kept)))
    assert np.isnan(se[1]) and se[[0, 2]] == pytest.approx(expected)


def test_kaplan_ns_whose_loss_ignores_steps_is_degenerate():
    curves = kaplan_ns_curves()
    curves["loss"] = noisy((TRUE_KAPLAN_NS["N_c"] / curves["N"]) ** 0.077, np.random.default_rng(0))
    fit = fit_kaplan_ns(curves)
    assert fit.status.startswith("degenerate: changing S_c or alpha_S moves the fitted loss"), (
        fit.status
    )


def test_every_start_raising_gives_a_failed_status(monkeypatch):
    def raises(*args, **kwargs):
        raise ValueError("array must not contain infs or NaNs")

    monkeypatch.setattr(fit_module, "least_squares", raises)
    fit = fit_kaplan_nd(kaplan_nd_table())
    assert fit.status == (
        "failed: SciPy's least_squares raised from all 18 starts "
        "(ValueError: array must not contain infs or NaNs)"
    )
    assert np.isnan(list(fit.params.values())).all() and not fit.usable
