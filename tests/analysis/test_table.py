"""Loading tables and the clear errors for bad input."""

import numpy as np
import pandas as pd
import pytest

from analysis.table import (
    FitInputError,
    derive,
    load_table,
    pretraining_scope,
    require_points,
    select,
    study_cost,
)


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


def _runs(corpora, stages=None, status=None):
    n = len(corpora)
    return pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(n)],
            "status": status or ["completed"] * n,
            "stage": stages or ["pretrain"] * n,
            "corpus_cache": corpora,
            "N": np.geomspace(1e6, 1e8, n),
            "loss": np.linspace(4.0, 3.0, n),
        }
    )


def test_select_refuses_rows_of_several_corpora_naming_them():
    runs = _runs(["prose-bpe4096-aa", "stdlib-bpe4096-bb", "stdlib-bpe4096-bb"])
    with pytest.raises(FitInputError) as error:
        select(runs, ["N", "loss"])
    message = str(error.value)
    assert "column 'corpus_cache' holds 2 corpora" in message
    assert "prose-bpe4096-aa, stdlib-bpe4096-bb" in message and "\n" not in message
    one = select(runs[runs["corpus_cache"] == "stdlib-bpe4096-bb"], ["N", "loss"])
    assert len(one) == 2
    # a run without a corpus (failed before reading data) is not a second corpus
    runs.loc[0, "corpus_cache"] = None
    assert len(select(runs, ["N", "loss"])) == 3


def test_scope_fits_the_largest_corpus_of_pretraining_runs():
    runs = _runs(
        ["b", "b", "a", "a", "c", "c", "c", "c"],
        stages=["pretrain"] * 4 + ["finetune", "finetune", "sft", "pretrain"],
        status=["completed"] * 7 + ["failed"],
    )
    scope = pretraining_scope(runs)
    # a and b have 2 completed pretraining runs each: the tie goes to the first by name
    assert scope.corpus == "a" and not scope.chosen and scope.completed == 2
    assert scope.corpora == {"a": 2, "b": 2} and scope.left_out == {"b": 2}
    assert scope.stages == {"finetune": 2, "sft": 1}
    assert scope.runs["run_id"].tolist() == ["r2", "r3"]
    chosen = pretraining_scope(runs, "b")
    assert chosen.chosen and chosen.runs["run_id"].tolist() == ["r0", "r1"]


def test_scope_names_the_corpora_when_asked_for_an_unknown_one():
    runs = _runs(["a", "a", "b"])
    with pytest.raises(
        FitInputError,
        match=r"no completed pretraining run on corpus 'z'; "
        r"corpus_cache values: a \(2 runs\), b \(1 runs\)",
    ):
        pretraining_scope(runs, "z")
    with pytest.raises(FitInputError, match="no column 'corpus_cache'"):
        pretraining_scope(runs.drop(columns="corpus_cache"), "a")


def test_scope_of_a_table_without_stage_or_corpus_is_every_row():
    runs = _runs(["a", "a"]).drop(columns=["stage", "corpus_cache"])
    scope = pretraining_scope(runs)
    assert scope.corpus is None and len(scope.runs) == 2 and not scope.left_out


def test_study_cost_counts_each_trunk_once_and_each_branch_as_its_cooldown():
    # two trunks (of 8 and 16 FLOPs), each with two branches; one independent run of 5
    runs = pd.DataFrame({
        "flops": [2.0, 4.0, 3.0, 6.0, 5.0],
        "C": [6.0, 12.0, 9.0, 22.0, 5.0],  # a branch's path_flops: trunk prefix + cooldown
        "branch_of": ["t1", "t1", "t2", "t2", None],
        "trunk_flops": [8.0, 8.0, 16.0, 16.0, np.nan],
    })
    cost = study_cost(runs)
    assert (cost.spent, cost.independent) == (2 + 4 + 3 + 6 + 5 + 8 + 16, 54.0)
    assert (cost.branches, cost.trunks) == (4, 2) and cost.share == pytest.approx(44 / 54)
    plain = study_cost(runs.drop(columns=["branch_of", "trunk_flops"]).iloc[4:])
    assert (plain.spent, plain.independent, plain.branches) == (5.0, 5.0, 0)

