"""`scaling-predict FITS_JSON`: loss at (N, D) and the compute-optimal split at a budget, from a
hand-written fit (known law, known answer) and from a fit as a report writes it (with draws)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import laws
from analysis.predict import main
from analysis.registry import fit_law
from analysis.result import KEPT_SAMPLES
from tests.analysis.synthetic import TRUE_CHINCHILLA, TRUE_KAPLAN_ND, kaplan_nd_table

HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _predict(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _write(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_a_hand_written_fit_predicts_its_own_law(tmp_path, capsys):
    fits = _write(tmp_path / "fit.json", {"law": "chinchilla", "params": HOFFMANN})
    code, out, _ = _predict(capsys, fits, "--N", 7e10, "--D", 1.4e12, "--json")
    assert code == 0
    point = json.loads(out)["point"]
    assert point["loss"] == pytest.approx(laws.chinchilla(7e10, 1.4e12, **HOFFMANN))
    assert point["loss_interval"] is None  # no draws, no interval
    assert point["tokens_per_param"] == pytest.approx(20)


def test_the_budget_gives_hoffmanns_closed_form_optimum(tmp_path, capsys):
    fits = _write(tmp_path / "fit.json", {"law": "chinchilla", "params": HOFFMANN})
    C = 5.76e23  # Chinchilla's budget
    code, out, _ = _predict(capsys, fits, "--budget", C, "--json")
    assert code == 0
    b = json.loads(out)["budget"]
    p = HOFFMANN
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    a = p["beta"] / (p["alpha"] + p["beta"])
    assert b["N_opt"] == pytest.approx(G * (C / 6) ** a)
    assert b["N_opt"] * b["D_opt"] * 6 == pytest.approx(C)
    assert b["loss"] == pytest.approx(laws.chinchilla(b["N_opt"], b["D_opt"], **p))
    for step in (0.9, 1.1):  # the minimum along C = 6ND
        N = b["N_opt"] * step
        assert laws.chinchilla(N, C / 6 / N, **p) > b["loss"]


@pytest.fixture(scope="module")
def report_fits(tmp_path_factory) -> Path:
    """A fits.json as a report writes one: a bootstrapped kaplan-nd fit under "L(N,D)" (its
    draws kept by Fit.to_dict), a chinchilla fit under diagnostics, and other laws."""
    fit = fit_law(kaplan_nd_table(), "kaplan-nd", n_bootstrap=30, seed=0)
    assert fit.samples is not None and len(fit.samples) > 20
    out = {"schema": 1, "L(N,D)": fit.to_dict(),
           "L(N)": {"law": "power", "params": {"E": 1.0, "x_c": 1e9, "alpha": 0.07}},
           "diagnostics": {"chinchilla": {"law": "chinchilla", "params": TRUE_CHINCHILLA}}}
    return _write(tmp_path_factory.mktemp("report") / "fits.json", out)


def test_a_reports_fit_gives_intervals_around_the_truth(report_fits, capsys):
    stored = json.loads(report_fits.read_text())["L(N,D)"]
    assert len(stored["samples"]["N_c"]) <= KEPT_SAMPLES
    N, D = 1e8, 1e10
    code, out, _ = _predict(capsys, report_fits, "--N", N, "--D", D, "--budget", 1e19,
                            "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["fit"] == "L(N,D)" and answer["draws"] == len(stored["samples"]["N_c"])
    lo, hi = answer["point"]["loss_interval"]
    assert lo <= answer["point"]["loss"] <= hi
    assert lo <= laws.kaplan_nd(N, D, **TRUE_KAPLAN_ND) <= hi
    b = answer["budget"]
    for key in ("N_opt", "D_opt", "tokens_per_param", "loss"):
        lo, hi = b[f"{key}_interval"]
        assert lo <= b[key] <= hi and lo < hi


def test_law_picks_among_several_fits(report_fits, capsys):
    code, out, _ = _predict(capsys, report_fits, "--budget", 1e21, "--law", "chinchilla",
                            "--json")
    assert code == 0
    answer = json.loads(out)
    assert answer["fit"] == "diagnostics.chinchilla"
    assert answer["budget"]["loss"] == pytest.approx(laws.chinchilla(
        answer["budget"]["N_opt"], answer["budget"]["D_opt"], **TRUE_CHINCHILLA))


def test_text_output_names_the_fit_and_the_intervals(report_fits, capsys):
    code, out, _ = _predict(capsys, report_fits, "--budget", 1e19)
    assert code == 0
    assert out.startswith("L(N,D): kaplan-nd")
    assert "95% intervals from" in out and "N_opt" in out and "tokens/param" in out


@pytest.mark.parametrize(("fits", "argv", "message"), [
    ({"law": "power", "params": {"E": 1.0, "x_c": 1e9, "alpha": 0.07}}, ["--budget", "1e20"],
     "holds no L(N, D) fit"),
    ({"law": "chinchilla", "params": HOFFMANN}, ["--budget", "-5"],
     "--budget -5: expected a positive number"),
    ({"law": "chinchilla", "params": HOFFMANN}, ["--N", "1e9"], "--N and --D go together"),
    ({"law": "chinchilla", "params": HOFFMANN}, [], "expected --N and --D"),
    ({"a": {"law": "chinchilla", "params": HOFFMANN},
      "b": {"law": "chinchilla", "params": HOFFMANN}}, ["--budget", "1e20"], "pick one with --law"),
    ({"law": "chinchilla", "params": HOFFMANN}, ["--budget", "1e20", "--law", "kaplan-nd"],
     "has no fit of that name or law"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, fits, argv, message):
    path = _write(tmp_path / "fits.json", fits)
    result = subprocess.run([Path(sys.executable).parent / "scaling-predict", str(path), *argv],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert message in result.stderr, result.stderr


def test_a_file_that_is_not_json_is_refused(tmp_path, capsys):
    path = tmp_path / "fits.json"
    path.write_text("not json")
    code, _, err = _predict(capsys, path, "--budget", 1e20)
    assert code == 2 and "is not JSON" in err

