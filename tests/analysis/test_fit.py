"""Power and Kaplan laws: recovery of known parameters, statuses and errors."""

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.fit import fit_kaplan_nd, fit_kaplan_ns, fit_power, ols
from analysis.table import FitInputError
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
