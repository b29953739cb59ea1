"""`scaling-fit`: JSON contract, human output, plots and one-line errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import fit as fit_module
from analysis import laws
from analysis.cli import main
from tests.analysis.conftest import DATA, EPOCH_CSV, ISOFLOPS_CSV
from tests.analysis.synthetic import isoflop_table, kaplan_nd_table, learning_curves

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def power_csv(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    N = np.geomspace(1e6, 1e10, 12)
    loss = laws.power(N, 1e9, 0.3, 1.7) * np.exp(rng.normal(0, 0.002, N.size))
    path = tmp_path / "power.csv"
    pd.DataFrame({"N": N, "C": 6 * N * 20 * N, "loss": loss}).to_csv(path, index=False)
    return path


def test_chinchilla_json_on_epochs_data(capsys):
    if not EPOCH_CSV.is_file():
        pytest.skip(f"shared data not found at {EPOCH_CSV}")
    code, out, _ = _run(
        capsys,
        str(EPOCH_CSV),
        "--law",
        "chinchilla",
        "--method",
        "varpro",
        "--json",
        "--N",
        "Model Size",
        "--C",
        "Training FLOP",
        "--derive",
        "D",
        "--query",
        "loss < 3.4469",
    )
    assert code == 0
    result = json.loads(out)
    assert set(result["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert result["law"] == "chinchilla" and result["status"] == "ok" and result["n_points"] == 240
    assert result["params"]["E"] == pytest.approx(1.8172, rel=2e-3)
    assert result["params"]["alpha"] == pytest.approx(0.3473, rel=5e-3)
    assert set(result["allocation"]["params"]) == {"G", "a", "b"}


def test_isoflop_json_on_llama3(capsys):
    if not ISOFLOPS_CSV.is_file():
        pytest.skip(f"shared data not found at {ISOFLOPS_CSV}")
    code, out, _ = _run(
        capsys,
        str(ISOFLOPS_CSV),
        "--law",
        "isoflop",
        "--N",
        "params",
        "--C",
        "budget",
        "--json",
        "--query",
        "experiment == 'llama_3__raw_loss'",
        "--bootstrap",
        "20",
    )
    result = json.loads(out)
    assert code == 0
    assert result["params"]["a"] == pytest.approx(0.4632, abs=5e-4)
    assert set(result["intervals"]) == {"a", "b", "k_N", "k_D"}
    assert [b["n_kept"] for b in result["tables"]["budgets"]] == [
        16,
        17,
        16,
        16,
        18,
        14,
        12,
        12,
        6,
        6,
    ]


@pytest.mark.parametrize(
    ("flags", "names"), [([], {"E", "x_c", "alpha"}), (["--no-offset"], {"x_c", "alpha"})]
)
def test_power_json_names(capsys, power_csv, flags, names):
    code, out, _ = _run(capsys, str(power_csv), "--law", "power", "--x", "C", "--json", *flags)
    result = json.loads(out)
    assert code == 0 and set(result["params"]) == names
    assert result["variables"] == ["C"]


def test_every_law_runs_from_a_table(capsys, tmp_path):
    tables = {
        "kaplan-nd": kaplan_nd_table(),
        "isoflop": isoflop_table(),
        "envelope": learning_curves(),
        "kaplan-ns": learning_curves(),
    }
    for law, df in tables.items():
        path = tmp_path / f"{law}.parquet"
        df.to_parquet(path)
        code, out, err = _run(capsys, str(path), "--law", law, "--json", "--bootstrap", "3")
        assert code == 0, err
        assert json.loads(out)["law"] == law


def test_human_output_and_plot(capsys, power_csv, tmp_path):
    png = tmp_path / "fit.png"
    code, out, _ = _run(capsys, str(power_csv), "--law", "power", "--plot", str(png))
    assert code == 0
    assert out.startswith("power fit on 12 points: ok")
    assert "alpha" in out and "x_c" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--law", "kaplan-nd"], "missing column 'D' (columns: N, C, loss)"),
        (["--law", "power", "--query", "N < 1e7"], "power with offset needs >= 4 points, got 3"),
        (["--law", "isoflop"], "isoflop needs at least 2 budgets, found 1"),
        (["--law", "power", "--query", "nonsense ==="], "bad --query 'nonsense ==='"),
        (["--law", "power", "--count", "chinchilla"], "argument --count: invalid choice"),
        (
            ["--law", "power", "--count", "standard"],
            "--count standard needs column 'n_params_nonembed' (non-embedding parameters), "
            "'n_params_unembed'",
        ),
        (["--law", "power", "--count", "kaplan", "--N", "C"], "drop --N C"),
        (["--law", "isoflop", "--count", "kaplan"], "isoflop groups runs by their nominal"),
        (
            ["--law", "isoflop", "--profile", "akima", "--mad-threshold", "3"],
            "--mad-threshold needs the parabola profile",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, power_csv, argv, message):
    if "isoflop" in argv:
        pd.read_csv(power_csv).assign(C=1e20).to_csv(power_csv, index=False)
    code, out, err = _run(capsys, str(power_csv), *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("scaling-fit: error: ")
    assert message in err


def test_non_positive_values_are_named(capsys, power_csv):
    pd.read_csv(power_csv).assign(N=lambda d: d["N"] - 1e6).to_csv(power_csv, index=False)
    code, _, err = _run(capsys, str(power_csv), "--law", "power")
    assert code == 2 and "column 'N' has non-positive values" in err


def test_python_dash_m(power_csv):
    ok = subprocess.run(
        [sys.executable, "-m", "analysis.cli", str(power_csv), "--law", "power", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "ok"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.cli",
            str(power_csv.with_name("absent.csv")),
            "--law",
            "power",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_rising_on_hoffmann_table3_with_intervals(capsys):
    table3 = str(DATA / "chinchilla_table3.csv")
    argv = [table3, "--law", "rising", "--x", "flops", "--loss", "params", "--bootstrap", "100"]
    code, out, _ = _run(capsys, *argv, "--json")
    result = json.loads(out)
    assert code == 0 and result["status"] == "ok" and result["variables"] == ["flops"]
    assert result["params"]["a"] == pytest.approx(0.50, abs=0.02)  # Approach 1: 0.488–0.502
    lo, hi = result["intervals"]["a"]
    assert 0.48 < lo < result["params"]["a"] < hi < 0.52
    code, out, _ = _run(capsys, *argv)
    assert out.startswith("rising fit on 9 points: ok") and "bootstrap: 100/100" in out


def test_power_on_a_rising_quantity_exits_2_with_one_line(capsys):
    table3 = str(DATA / "chinchilla_table3.csv")
    code, out, err = _run(capsys, table3, "--law", "power", "--x", "flops", "--loss", "params")
    assert code == 2 and out == ""
    assert err == (
        "scaling-fit: error: power: L = E + (x_c/x)^α describes a quantity that falls with x, "
        "and this one rises with 'flops' (log-log slope +0.498); use --law rising: y = k·x^a\n"
    )


def test_robust_isoflop_says_what_it_rejected(capsys):
    path = str(DATA / "isoflop_two_budgets.csv")
    code, out, _ = _run(capsys, path, "--law", "isoflop", "--mad-threshold", "3")
    assert code == 0
    assert (
        "rejected at C = 8e+17 (|residual| > 3 robust SDs): N = 2.209e+08; 2 rounds, "
        "nothing more to reject"
    ) in out
    assert "rejected at C = 1.6e+18 (|residual| > 3 robust SDs): N = none" in out


def test_an_optimiser_that_raises_is_a_failed_status_not_a_traceback(
    capsys, monkeypatch, power_csv, tmp_path
):
    def raises(*args, **kwargs):
        raise ValueError("array must not contain infs or NaNs")

    monkeypatch.setattr(fit_module, "least_squares", raises)
    png = tmp_path / "failed.png"
    code, out, _ = _run(capsys, str(power_csv), "--law", "power", "--json", "--plot", str(png))
    result = json.loads(out)
    assert code == 0 and result["status"].startswith("failed: SciPy's least_squares raised")
    assert result["params"] == {"E": None, "x_c": None, "alpha": None}
    assert png.stat().st_size > 0
