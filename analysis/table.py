"""Results tables in, checked canonical columns out: every fit fails early, naming the problem."""

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

CANONICAL = ("N", "D", "C", "S", "loss", "run")
FLOPS_PER_TOKEN = 6.0  # training C ≈ 6·N·D (Kaplan 2020, Hoffmann 2022)


class FitInputError(ValueError):
    """A table or request a fit cannot use; the message names the column, value or count."""


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet results table, so users' own tables work as well as ours."""
    path = Path(path)
    if not path.is_file():
        raise FitInputError(f"no such file: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix.lower() in (".csv", ".txt"):
        return pd.read_csv(path)
    raise FitInputError(f"unsupported table format {path.suffix!r} (use .csv or .parquet)")


def select(
    df: pd.DataFrame,
    required: Iterable[str],
    columns: Mapping[str, str] | None = None,
    positive: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Rename the user's columns to canonical names and check them, so fitters can trust them.

    `columns` maps a canonical name (N, D, C, S, loss, run, or any other) to the table's
    column; unmapped names are looked up as themselves. Numeric required columns other
    than `run` must be finite and, unless `positive` says otherwise, strictly positive.
    """
    columns = dict(columns or {})
    required = list(required)
    missing = [name for name in required if columns.get(name, name) not in df.columns]
    if missing:
        name = missing[0]
        col = columns.get(name, name)
        shown = f"'{col}'" if col == name else f"'{col}' (for {name})"
        raise FitInputError(f"missing column {shown} (columns: {', '.join(map(str, df.columns))})")
    out = pd.DataFrame({name: df[columns.get(name, name)].to_numpy() for name in required})
    checked = [n for n in required if n != "run"] if positive is None else list(positive)
    for name in checked:
        col = columns.get(name, name)
        values = pd.to_numeric(out[name], errors="coerce").to_numpy(dtype=float)
        if np.isnan(values).any() and not pd.api.types.is_numeric_dtype(out[name]):
            raise FitInputError(f"column '{col}' is not numeric")
        if not np.isfinite(values).all():
            raise FitInputError(f"column '{col}' has missing or non-finite values")
        if (values <= 0).any():
            raise FitInputError(f"column '{col}' has non-positive values")
        out[name] = values
    return out


def derive(df: pd.DataFrame, target: str, flops_per_token: float = FLOPS_PER_TOKEN) -> pd.DataFrame:
    """Add D = C/(k·N) or C = k·N·D, the convention Epoch and Chinchilla use when one is absent."""
    if target not in ("D", "C"):
        raise FitInputError(f"can derive 'D' or 'C', not {target!r}")
    if target in df.columns:
        raise FitInputError(f"column '{target}' already present; not deriving it")
    out = df.copy()
    if target == "D":
        out["D"] = out["C"] / (flops_per_token * out["N"])
    else:
        out["C"] = flops_per_token * out["N"] * out["D"]
    return out


def require_points(law: str, n_points: int, n_params: int) -> None:
    """Refuse fits with no residual degrees of freedom: their errors would be meaningless."""
    if n_points <= n_params:
        raise FitInputError(f"{law} needs >= {n_params + 1} points, got {n_points}")
