"""`scaling-fit --predict`: predictions against a known law, their intervals, JSON, errors, plot."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.cli import main
from analysis.registry import LAWS
from tests.analysis.synthetic import TRUE_KAPLAN_ND, kaplan_nd_table

TRUTH = {"x_c": 1e9, "alpha": 0.3, "E": 1.7}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def power_csv(tmp_path):
    """L = E + (x_c/N)^α with known parameters over N = 1e6 … 1e10, 0.2 % noise."""
    rng = np.random.default_rng(0)
    N = np.geomspace(1e6, 1e10, 12)
    loss = laws.power(N, **TRUTH) * np.exp(rng.normal(0, 0.002, N.size))
    path = tmp_path / "power.csv"
    pd.DataFrame({"N": N, "loss": loss}).to_csv(path, index=False)
    return path


def test_prediction_beyond_the_data_matches_the_known_law(capsys, power_csv):
    code, out, err = _run(
        capsys,
        str(power_csv),
        "--law",
        "power",
        "--predict",
        "N=1e12",
        "--bootstrap",
        "200",
        "--json",
    )
    assert code == 0, err
    (point,) = json.loads(out)["predictions"]
    truth = float(laws.power(1e12, **TRUTH))
    assert point["N"] == 1e12
    assert point["loss"] == pytest.approx(truth, rel=0.01)
    lo, hi = point["ci"]
    assert lo < truth < hi


def test_text_lists_each_point_and_says_how_to_get_an_interval(capsys, power_csv):
    code, out, _ = _run(capsys, str(power_csv), "--law", "power", "--predict", "N=1e11,1e12")
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == f"formula: {LAWS['power'].formula}"
    assert "standard errors: jacobian; intervals: none (add --bootstrap K)" in lines
    rows = [line for line in lines if line.startswith("  N=")]
    assert len(rows) == 2 and all("no interval: add --bootstrap K" in r for r in rows)


def test_text_with_bootstrap_gives_the_interval_and_method(capsys, power_csv):
    argv = ["--law", "power", "--predict", "N=1e12", "--bootstrap", "20"]
    code, out, _ = _run(capsys, str(power_csv), *argv)
    assert code == 0
    assert "standard errors and intervals: bootstrap, 20 resamples over row" in out
    assert "  N=1e+12: loss " in out and "95% interval [" in out


def test_two_variable_law_takes_several_keys(capsys, tmp_path):
    path = tmp_path / "nd.parquet"
    kaplan_nd_table().to_parquet(path)
    argv = ["--law", "kaplan-nd", "--predict", "N=1e10,D=1e11", "--predict", "N=1e9,1e10,D=2e10"]
    code, out, err = _run(capsys, str(path), *argv, "--json")
    assert code == 0, err
    points = json.loads(out)["predictions"]
    assert [(p["N"], p["D"]) for p in points] == [(1e10, 1e11), (1e9, 2e10), (1e10, 2e10)]
    truth = laws.kaplan_nd(1e10, 1e11, **TRUE_KAPLAN_ND)
    assert points[0]["loss"] == pytest.approx(truth, rel=0.01) and points[0]["ci"] is None


@pytest.mark.parametrize(
    ("law", "spec", "message"),
    [
        ("power", "D=1e9", "power has no variable 'D' (it predicts from N)"),
        ("power", "N=-1", "N must be positive and finite"),
        ("power", "N=abc", "'abc' is not a number"),
        ("power", "1e9", "write VAR=X"),
        ("kaplan-nd", "N=1e9", "kaplan-nd also needs D"),
        ("kaplan-nd", "N=1e9,1e10,1e11,D=1e9,1e10", "give each variable one value or 3"),
        ("isoflop", "C=1e21", "isoflop predicts no loss"),
    ],
)
def test_bad_predict_exits_2_with_one_line(capsys, tmp_path, law, spec, message):
    path = tmp_path / "nd.parquet"
    kaplan_nd_table().assign(C=lambda d: 6 * d["N"] * d["D"]).to_parquet(path)
    code, out, err = _run(capsys, str(path), "--law", law, "--predict", spec)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("scaling-fit: error: ")
    assert message in err


def test_plot_draws_the_law_out_to_the_predicted_point(capsys, power_csv, tmp_path, monkeypatch):
    from analysis import cli

    figures = []
    plot_fit = cli.plot_fit
    monkeypatch.setattr(cli, "plot_fit", lambda *a: figures.append(plot_fit(*a)) or figures[-1])
    png = tmp_path / "fit.png"
    argv = ["--law", "power", "--predict", "N=1e13", "--plot", str(png)]
    code, _, _ = _run(capsys, str(power_csv), *argv)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    ax = figures[0].axes[0]
    law_x = max(line.get_xdata().max() for line in ax.get_lines())
    assert law_x == pytest.approx(1e13) and ax.get_xlim()[1] >= 1e13


def test_help_gives_each_law_its_formula(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])

    def squeeze(text: str) -> str:  # argparse wraps the help at spaces and hyphens
        return "".join(text.split())

    text = squeeze(capsys.readouterr().out)
    assert all(squeeze(f"{name}: {law.formula}") in text for name, law in LAWS.items())
