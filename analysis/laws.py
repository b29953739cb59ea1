"""The functional forms as plain NumPy functions, and the compute-optimal split of the L(N, D)
forms; parameter names are the JSON contract. `analysis.registry` says which law uses which."""

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


def chinchilla_optimum(E: float, A: float, B: float, alpha: float, beta: float) -> dict:
    """G, a, b of N_opt = G·(C/k)^a, D_opt = (C/k)^b / G (Hoffmann eq 4): G = (αA/(βB))^(1/(α+β)),
    a = β/(α+β)."""
    with np.errstate(all="ignore"):  # a degenerate fit's 0 gives inf, not a raise
        G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        a = beta / (alpha + beta)
    return {"G": float(G), "a": float(a), "b": float(1 - a)}


def kaplan_nd_optimum(N_c: float, D_c: float, alpha_N: float, alpha_D: float) -> dict:
    """G, a, b as for `chinchilla_optimum`, for Kaplan eq 1.5: with p = α_N/α_D,
    G = (p·N_c^p/D_c)^(1/(1+p)), a = 1/(1+p)."""
    with np.errstate(all="ignore"):
        ratio = alpha_N / alpha_D
        G = np.exp((np.log(ratio) + ratio * np.log(N_c) - np.log(D_c)) / (1 + ratio))
        a = 1 / (1 + ratio)
    return {"G": float(G), "a": float(a), "b": float(1 - a)}
