"""Counting conventions (kaplan, standard, total): N and C from a table's counts, known
exponents under each, old records, and one-line errors from scaling-fit and scaling-report."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.cli import main
from analysis.counting import (
    counted_n,
    elasticity,
    recount,
    recount_curves,
    relabelled_exponent,
)
from analysis.kaplan import exponent_by_convention
from analysis.table import FitInputError
from scaling.cli import report
from scaling.flops import record_counts
from scaling.record import write_metrics, write_summary
from scaling.results import collect

HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
A_KAPLAN = 0.28 / (0.34 + 0.28)
# N under the other conventions as an exact power of the non-embedding count, N' = K·N^e: the
# loss is then a Chinchilla law in N' too, with alpha' = alpha/e, so a' = e·beta/(alpha + e·beta)
K_STANDARD, E_STANDARD = 1e5, 0.5
K_TOTAL, E_TOTAL = 2e4, 0.75


def _counts() -> pd.DataFrame:
    """Two runs' counts by hand: a tied 4,000-parameter unembedding and a 200-parameter wpe."""
    return pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "n_params_nonembed": [1000, 8000],
            "n_params_unembed": [4000, 8000],
            "n_params": [5200, 16400],
            "D": [1e4, 2e4],
            "N": [1.0, 1.0],  # the table's own N, replaced
            "C": [1.0, 1.0],
        }
    )


@pytest.mark.parametrize(
    ("name", "N"),
    [("kaplan", [1000, 8000]), ("standard", [5000, 16000]), ("total", [5200, 16400])],
)
def test_each_convention_counts_n_and_c_equals_six_n_d(name, N):
    counted = recount(_counts(), name)
    assert counted["N"].tolist() == N
    assert counted["C"].tolist() == [6 * N[0] * 1e4, 6 * N[1] * 2e4]


def test_unknown_conventions_and_missing_counts_are_named():
    with pytest.raises(FitInputError, match=r"unknown counting convention 'chinchilla' "
                                            r"\(choose from kaplan, standard, total\)"):
        counted_n(_counts(), "chinchilla")
    with pytest.raises(FitInputError, match="--count standard needs column 'n_params_unembed'"):
        counted_n(_counts().drop(columns="n_params_unembed"), "standard")
    with pytest.raises(FitInputError, match="needs column 'tokens' for D"):
        recount(_counts(), "kaplan", d="tokens")


def test_a_run_without_a_count_gets_no_n_and_the_others_keep_theirs():
    table = _counts().assign(n_params_unembed=[np.nan, 8000])
    assert counted_n(table, "standard").tolist()[1] == 16000
    assert np.isnan(counted_n(table, "standard").iloc[0])
    assert counted_n(table, "kaplan").tolist() == [1000, 8000]


def test_curves_are_recounted_at_each_evaluation():
    curves = pd.DataFrame({"run_id": ["a", "a", "b"], "tokens": [10.0, 20.0, 10.0],
                           "flops": [0.0, 0.0, 0.0]})
    out = recount_curves(curves, _counts(), "standard")
    assert out["flops"].tolist() == [6 * 5000 * 10, 6 * 5000 * 20, 6 * 16000 * 10]


def test_relabelling_a_power_law_in_n_gives_the_expected_exponent():
    N = np.geomspace(1e6, 1e9, 5)
    table = pd.DataFrame({"n_params_nonembed": N, "n_params_unembed": K_STANDARD * N**0.5 - N})
    assert elasticity(table, "standard", "kaplan") == pytest.approx(E_STANDARD)
    # N' ∝ N^e and C' ∝ C^(1 + (e - 1)·a) with N ∝ C^a
    assert relabelled_exponent(0.5, 0.5) == pytest.approx(0.25 / 0.75)
    assert relabelled_exponent(0.7, 1.0) == pytest.approx(0.7)


def _chinchilla_runs() -> pd.DataFrame:
    """An (N, D) grid whose loss is Hoffmann's law in the non-embedding count, with the
    unembedding and total counts exact powers of it (see K_STANDARD, K_TOTAL)."""
    N, D = map(np.ravel, np.meshgrid(np.geomspace(1e6, 1e9, 8), np.geomspace(1e8, 1e11, 8)))
    return pd.DataFrame(
        {
            "run_id": [f"r{i}" for i in range(N.size)],
            "n_params_nonembed": N,
            "n_params_unembed": K_STANDARD * N**E_STANDARD - N,
            "n_params": K_TOTAL * N**E_TOTAL,
            "tokens": D,
            "loss": laws.chinchilla(N, D, **HOFFMANN),
        }
    )


def _expected_a(e: float) -> float:
    return e * HOFFMANN["beta"] / (HOFFMANN["alpha"] + e * HOFFMANN["beta"])


@pytest.mark.parametrize(
    ("name", "e"), [("kaplan", 1.0), ("standard", E_STANDARD), ("total", E_TOTAL)]
)
def test_scaling_fit_count_gives_each_conventions_known_exponent(capsys, tmp_path, name, e):
    path = tmp_path / "runs.parquet"
    _chinchilla_runs().to_parquet(path)
    code = main([str(path), "--law", "chinchilla", "--method", "varpro", "--D", "tokens",
                 "--count", name, "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["count"]["name"] == name
    assert result["params"]["alpha"] == pytest.approx(HOFFMANN["alpha"] / e, rel=1e-3)
    assert result["allocation"]["params"]["a"] == pytest.approx(_expected_a(e), abs=1e-3)
    # the known gap: kaplan 0.452, standard 0.292, total 0.382
    assert result["allocation"]["params"]["a"] - A_KAPLAN == pytest.approx(
        _expected_a(e) - A_KAPLAN, abs=2e-3)


def test_the_reports_exponents_under_each_convention_from_the_same_runs():
    runs = _chinchilla_runs().rename(columns={"tokens": "D"})
    runs = runs.assign(N=runs["n_params_nonembed"], early_loss=runs["loss"])
    out = exponent_by_convention(runs, None)
    for name, e in (("kaplan", 1.0), ("standard", E_STANDARD), ("total", E_TOTAL)):
        route = out[name]["routes"]["chinchilla allocation"]
        assert route["a"] == pytest.approx(_expected_a(e), abs=2e-3)
    # counting alone: the kaplan optimum recounted, N' = K·N^e exactly, gives the same a'
    kaplan_a = out["kaplan"]["a"]
    moved = out["standard"]["relabelled"]
    assert moved["elasticity"] == pytest.approx(E_STANDARD)
    assert moved["a"] == pytest.approx(relabelled_exponent(kaplan_a, E_STANDARD))
    lacking = exponent_by_convention(runs.drop(columns="n_params_unembed"), None)
    assert lacking["standard"]["a"] is None
    assert "'n_params_unembed'" in lacking["standard"]["status"]
    assert lacking["kaplan"]["a"] == pytest.approx(kaplan_a)


CONFIG = {"model": {"n_layer": 2, "d_model": 32, "n_head": 2, "n_ctx": 16, "d_ff": 128},
          "train": {"tokens": 1000}}


def _record(run_dir, **fields) -> None:
    write_summary(run_dir, {"status": "completed", "tokens": 5000, "final_val_loss": 3.0,
                            "config": CONFIG, **fields})
    write_metrics(run_dir, [{"step": 1, "tokens": 5000, "flops": 1.0, "train_loss": 3.0,
                             "val_loss": 3.0}])


def test_old_records_load_with_derived_counts_or_none(tmp_path):
    new = record_counts(CONFIG["model"], 1000)
    _record(tmp_path / "new", vocab_size=1000, **new)
    _record(tmp_path / "old", vocab_size=1000, n_params_nonembed=new["n_params_nonembed"])
    _record(tmp_path / "oldest", n_params_nonembed=123)  # no vocabulary: nothing to derive
    collected = collect(tmp_path)
    assert not collected.problems
    table = collected.results.set_index("run_id")
    for column, value in new.items():
        assert table.loc["old", column] == table.loc["new", column] == value
    assert np.isnan(table.loc["oldest", "n_params_unembed"])
    assert table.loc["oldest", "N"] == 123
    standard = counted_n(collected.results, "standard")
    assert standard.notna().tolist() == [True, True, False]


def test_scaling_report_refuses_a_bad_count_in_one_line(tmp_path, capsys):
    _record(tmp_path / "oldest", n_params_nonembed=123)
    for count, message in (
        ("chinchilla", "unknown counting convention 'chinchilla'"),
        ("standard", "--count standard needs column 'n_params_unembed'"),
    ):
        with pytest.raises(SystemExit) as stop:
            report([str(tmp_path), "--count", count])
        err = capsys.readouterr().err
        assert stop.value.code == 2
        assert err.count("\n") == 1 and err.startswith("scaling-report: error: ")
        assert message in err
