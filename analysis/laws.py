"""The functional forms as plain NumPy functions; parameter names are the JSON contract."""

from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike

Array = np.ndarray


def power(x: ArrayLike, x_c: float, alpha: float, E: float = 0.0) -> Array:
    """L = E + (x_c/x)^α; E = 0 is Kaplan's pure form (eqs 1.1–1.3)."""
    return E + np.exp(alpha * (np.log(x_c) - np.log(x)))


def rising(x: ArrayLike, k: float, a: float) -> Array:
    """y = k·x^a, a quantity that grows with x (N_opt ∝ C^a, Hoffmann et al. 2022 Table 3)."""
    return k * np.exp(a * np.log(x))


def kaplan_nd(
    N: ArrayLike, D: ArrayLike, N_c: float, D_c: float, alpha_N: float, alpha_D: float
) -> Array:
    """L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D, Kaplan eq 1.5 (summed in log space)."""
    inner = np.logaddexp(alpha_N / alpha_D * (np.log(N_c) - np.log(N)), np.log(D_c) - np.log(D))
    return np.exp(alpha_D * inner)


def kaplan_ns(
    N: ArrayLike, S: ArrayLike, N_c: float, S_c: float, alpha_N: float, alpha_S: float
) -> Array:
    """L(N, S) = (N_c/N)^α_N + (S_c/S)^α_S, Kaplan eq 1.6 for learning curves."""
    return np.exp(alpha_N * (np.log(N_c) - np.log(N))) + np.exp(alpha_S * (np.log(S_c) - np.log(S)))


def chinchilla(
    N: ArrayLike, D: ArrayLike, E: float, A: float, B: float, alpha: float, beta: float
) -> Array:
    """L(N, D) = E + A/N^α + B/D^β, Hoffmann et al. 2022 Approach 3."""
    return E + A * np.exp(-alpha * np.log(N)) + B * np.exp(-beta * np.log(D))


# Law name → (form, parameter names it fits). `envelope` fits a power law in C.
FORMS: dict[str, tuple[Callable[..., Array], tuple[str, ...]]] = {
    "power": (power, ("E", "x_c", "alpha")),
    "rising": (rising, ("k", "a")),
    "envelope": (power, ("E", "x_c", "alpha")),
    "kaplan-nd": (kaplan_nd, ("N_c", "D_c", "alpha_N", "alpha_D")),
    "kaplan-ns": (kaplan_ns, ("N_c", "S_c", "alpha_N", "alpha_S")),
    "chinchilla": (chinchilla, ("E", "A", "B", "alpha", "beta")),
}


def evaluate(law: str, params: Mapping[str, float], *variables: ArrayLike) -> Array:
    """The law's loss at the given inputs (in its variables' order), for prediction and plots."""
    if law not in FORMS:
        raise ValueError(f"{law} has no loss form to evaluate (forms: {', '.join(FORMS)})")
    form, names = FORMS[law]
    return form(*variables, **{k: params[k] for k in names if k in params})
