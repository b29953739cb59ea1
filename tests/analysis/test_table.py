"""Loading tables and the clear errors for bad input."""

import numpy as np
import pandas as pd
import pytest

from analysis.table import FitInputError, derive, load_table, require_points, select


def test_load_csv_and_parquet_agree(tmp_path):
    df = pd.DataFrame({"N": [1e6, 2e6], "loss": [3.0, 2.9]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(
        load_table(tmp_path / "t.csv"), load_table(tmp_path / "t.parquet")
    )


def test_load_rejects_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(FitInputError, match="no such file"):
        load_table(tmp_path / "absent.csv")
    (tmp_path / "t.xlsx").write_text("")
    with pytest.raises(FitInputError, match=r"unsupported table format '\.xlsx'"):
        load_table(tmp_path / "t.xlsx")


def test_select_renames_to_canonical_names():
    df = pd.DataFrame({"params": [1e6, 2e6], "tokens": [1e9, 2e9], "loss": [3.0, 2.9]})
    out = select(df, ["N", "D", "loss"], {"N": "params", "D": "tokens"})
    assert list(out.columns) == ["N", "D", "loss"]
    assert out["N"].tolist() == [1e6, 2e6]


def test_missing_column_is_named_with_the_columns_present():
    df = pd.DataFrame({"N": [1.0], "loss": [2.0]})
    with pytest.raises(FitInputError, match=r"missing column 'D' \(columns: N, loss\)"):
        select(df, ["N", "D", "loss"])
    with pytest.raises(FitInputError, match=r"missing column 'tokens' \(for D\)"):
        select(df, ["N", "D", "loss"], {"D": "tokens"})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.0, "column 'N' has non-positive values"),
        (-1.0, "non-positive"),
        (np.nan, "column 'N' has missing or non-finite values"),
        (np.inf, "non-finite"),
    ],
)
def test_bad_values_are_named(value, message):
    df = pd.DataFrame({"N": [1e6, value], "loss": [3.0, 2.9]})
    with pytest.raises(FitInputError, match=message):
        select(df, ["N", "loss"])


def test_non_numeric_column_is_named():
    df = pd.DataFrame({"N": ["small", "large"], "loss": [3.0, 2.9]})
    with pytest.raises(FitInputError, match="column 'N' is not numeric"):
        select(df, ["N", "loss"])


def test_run_ids_may_be_strings():
    df = pd.DataFrame({"run": ["a", "b"], "N": [1e6, 2e6], "loss": [3.0, 2.9]})
    assert select(df, ["run", "N", "loss"])["run"].tolist() == ["a", "b"]


def test_derive_uses_six_flops_per_token():
    df = pd.DataFrame({"N": [1e6], "C": [6e15]})
    assert derive(df, "D")["D"].iloc[0] == pytest.approx(1e9)
    tokens = pd.DataFrame({"N": [1e6], "D": [1e9]})
    assert derive(tokens, "C")["C"].iloc[0] == pytest.approx(6e15)
    with pytest.raises(FitInputError, match="already present"):
        derive(derive(df, "D"), "D")


def test_require_points_names_law_and_counts():
    require_points("power", 3, 2)
    with pytest.raises(FitInputError, match="power with offset needs >= 4 points, got 3"):
        require_points("power with offset", 3, 3)
