"""The functional forms against hand-computed values."""

import numpy as np
import pytest

from analysis import laws, registry


def test_power_is_kaplan_pure_form_without_offset():
    # Kaplan eq 1.1: L(N) = (8.8e13 / N)^0.076; at N = 1e9 that is 8.8e4^0.076.
    assert laws.power(1e9, 8.8e13, 0.076) == pytest.approx(8.8e4**0.076)
    assert laws.power(1e9, 8.8e13, 0.076, E=1.5) == pytest.approx(1.5 + 8.8e4**0.076)


def test_kaplan_nd_reduces_to_each_single_variable_law():
    p = {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103}
    # Infinite data: (N_c/N)^α_N; infinite model: (D_c/D)^α_D.
    assert laws.kaplan_nd(1e9, 1e30, **p) == pytest.approx((6.4e13 / 1e9) ** 0.076)
    assert laws.kaplan_nd(1e30, 1e10, **p) == pytest.approx((1.8e13 / 1e10) ** 0.103)
    both = ((6.4e13 / 1e9) ** (0.076 / 0.103) + 1.8e13 / 1e10) ** 0.103
    assert laws.kaplan_nd(1e9, 1e10, **p) == pytest.approx(both)


def test_kaplan_ns_and_chinchilla_are_sums_of_terms():
    assert laws.kaplan_ns(1e9, 1e4, 6.5e13, 2.1e3, 0.077, 0.76) == pytest.approx(
        (6.5e13 / 1e9) ** 0.077 + (2.1e3 / 1e4) ** 0.76
    )
    assert laws.chinchilla(1e9, 2e10, 1.69, 406.4, 410.7, 0.34, 0.28) == pytest.approx(
        1.69 + 406.4 / 1e9**0.34 + 410.7 / 2e10**0.28
    )


def test_evaluate_takes_parameters_by_name_and_broadcasts():
    params = {"E": 1.0, "A": 400.0, "B": 400.0, "alpha": 0.3, "beta": 0.3}
    N = np.array([1e8, 1e9])
    out = registry.evaluate("chinchilla", params, N, 1e10)
    assert out.shape == (2,)
    assert out[0] > out[1]
    assert registry.evaluate("power", {"x_c": 8.8e13, "alpha": 0.076}, 1e9) == pytest.approx(
        laws.power(1e9, 8.8e13, 0.076)
    )


def test_evaluate_refuses_laws_without_a_loss_form():
    with pytest.raises(ValueError, match="isoflop has no loss form"):
        registry.evaluate("isoflop", {"a": 0.5}, 1e20)
