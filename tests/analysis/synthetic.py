"""Synthetic tables drawn from each law with known parameters and seeded noise."""

import itertools

import numpy as np
import pandas as pd

from analysis import laws

# Chinchilla-like truth for synthetic tables.
TRUE_CHINCHILLA = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
# Kaplan's published constants (eqs 1.5 and 1.6) as truth.
TRUE_KAPLAN_ND = {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103}
TRUE_KAPLAN_NS = {"N_c": 6.5e13, "S_c": 2.1e3, "alpha_N": 0.077, "alpha_S": 0.76}


def noisy(values: np.ndarray, rng: np.random.Generator, sigma: float = 0.005) -> np.ndarray:
    """Multiplicative log-normal noise, as real losses scatter."""
    return values * np.exp(rng.normal(0.0, sigma, np.shape(values)))


def chinchilla_table(seed: int = 0, sigma: float = 0.005) -> pd.DataFrame:
    """A grid of (N, D) runs with Chinchilla-law losses."""
    rng = np.random.default_rng(seed)
    N, D = map(np.ravel, np.meshgrid(np.geomspace(5e7, 1e10, 10), np.geomspace(1e9, 3e11, 10)))
    loss = noisy(laws.chinchilla(N, D, **TRUE_CHINCHILLA), rng, sigma)
    return pd.DataFrame({"N": N, "D": D, "C": 6 * N * D, "loss": loss})


def isoflop_table(
    seed: int = 0, sigma: float = 0.002, budgets: int = 7, sizes: int = 9
) -> pd.DataFrame:
    """IsoFLOP profiles from the Chinchilla law: `sizes` sizes from 1/8 to 8 times each
    budget's optimum, at `budgets` budgets from 1e18 to 1e22 FLOPs."""
    rng = np.random.default_rng(seed)
    p = TRUE_CHINCHILLA
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    a = p["beta"] / (p["alpha"] + p["beta"])
    rows = []
    for C in np.geomspace(1e18, 1e22, budgets):
        for N in G * (C / 6) ** a * np.geomspace(1 / 8, 8, sizes):
            rows.append({"C": C, "N": N, "D": C / (6 * N)})
    df = pd.DataFrame(rows)
    df["loss"] = noisy(laws.chinchilla(df["N"], df["D"], **p), rng, sigma)
    return df


def learning_curves(seed: int = 0, sigma: float = 0.003) -> pd.DataFrame:
    """Runs of 16 sizes evaluated along training, scored with the Chinchilla law at each D.

    Each run goes from 1 to 400 tokens per parameter, well past its compute-optimal ~50,
    so the envelope is not cut short; columns run, N, S (steps of 2^19 tokens), D, C, loss.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i, N in enumerate(np.geomspace(1e7, 3e10, 16)):
        for D in N * np.geomspace(1, 400, 40):
            rows.append({"run": f"r{i}", "N": N, "S": D / 2**19, "D": D, "C": 6 * N * D})
    df = pd.DataFrame(rows)
    df["loss"] = noisy(laws.chinchilla(df["N"], df["D"], **TRUE_CHINCHILLA), rng, sigma)
    return df


def kaplan_nd_table(params: dict[str, float] = TRUE_KAPLAN_ND, seed: int = 0) -> pd.DataFrame:
    """An (N, D) grid of losses from Kaplan's eq 1.5."""
    rng = np.random.default_rng(seed)
    N, D = map(np.ravel, np.meshgrid(np.geomspace(1e6, 3e9, 8), np.geomspace(3e7, 3e10, 8)))
    return pd.DataFrame({"N": N, "D": D, "loss": noisy(laws.kaplan_nd(N, D, **params), rng)})


def kaplan_ns_curves(params: dict[str, float] = TRUE_KAPLAN_NS, seed: int = 0) -> pd.DataFrame:
    """Learning curves from Kaplan's eq 1.6, one run per N."""
    rng = np.random.default_rng(seed)
    rows = list(
        itertools.product(enumerate(np.geomspace(1e6, 3e9, 8)), np.geomspace(1e3, 2.5e5, 25))
    )
    df = pd.DataFrame([{"run": f"r{i}", "N": N, "S": S} for (i, N), S in rows])
    df["loss"] = noisy(laws.kaplan_ns(df["N"], df["S"], **params), rng)
    return df


def demo_sweep(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results and curves shaped like `make demo`'s: 4 sizes × 3 token budgets, 2 more depths
    at one size and 2 more batch sizes, 12 evaluations per run, Chinchilla-law losses."""
    rng = np.random.default_rng(seed)
    specs = [(N, D, 4, 64) for N in (1e7, 3e7, 1e8, 3e8) for D in (2e9, 5e9, 1.2e10)]
    specs += [(1e8, 5e9, depth, 64) for depth in (2, 8)]
    specs += [(1e8, 5e9, 4, batch) for batch in (16, 256)]
    rows, curves = [], []
    for i, (N, D, depth, batch) in enumerate(specs):
        run = f"L{depth}-B{batch}-N{N:.0e}-D{D:.0e}-{i}"
        tokens = np.geomspace(D / 100, D, 12)
        loss = noisy(laws.chinchilla(N, tokens, **TRUE_CHINCHILLA), rng, 0.003)
        curves.append(
            pd.DataFrame(
                {"run_id": run, "step": tokens / (batch * 2048), "tokens": tokens,
                 "flops": 6 * N * tokens, "val_loss": loss}
            )
        )
        rows.append(
            {"run_id": run, "status": "completed", "N": N, "n_params": 1.05 * N, "D": D,
             "C": 6 * N * D, "loss": loss[-1], "best_val_loss": loss.min(), "epochs": D / 5e10,
             "wall_s": N * D / 1e16, "tokens_per_step": batch * 2048, "model.n_layer": depth,
             "model.d_model": np.sqrt(N / (12 * depth)), "train.batch_size": batch}
        )
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)
