"""The report section: every applicable fit, its figure, fits.json, and skipped fits named."""

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis.api import fit_law
from analysis.plots import plot_fit
from analysis.report import plan_fits, write_fits
from tests.analysis.synthetic import isoflop_table, learning_curves


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    table = isoflop_table().sample(frac=1.0, random_state=0)
    html = write_fits(table, out, curves=learning_curves(), n_bootstrap=5, seed=0)
    return out, html, json.loads((out / "fits.json").read_text())


def test_every_applicable_law_is_fitted(report):
    _, _, fits = report
    assert set(fits) == {
        "power_N",
        "power_D",
        "power_C",
        "kaplan-nd",
        "chinchilla",
        "isoflop",
        "kaplan-ns",
        "envelope",
    }
    assert fits["chinchilla"]["status"] == "ok"
    assert set(fits["chinchilla"]["allocation"]["params"]) == {"G", "a", "b"}
    assert fits["isoflop"]["diagnostics"]["bootstrap"]["k"] == 5


def test_figures_and_html_match(report):
    out, html, fits = report
    assert html.startswith('<section class="scaling-fits">') and html.endswith("</section>")
    for key, fit in fits.items():
        if not fit["status"].startswith("skipped"):
            assert (out / f"fit_{key}.png").stat().st_size > 10_000
            assert f'src="fit_{key}.png"' in html


def test_skipped_fits_are_recorded_with_the_reason(tmp_path):
    table = isoflop_table().head(9)  # one budget only: isoflop is not planned, power is
    table.loc[0, "N"] = 0.0
    html = write_fits(table, tmp_path)
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["power_N"]["status"] == "skipped: column 'N' has non-positive values"
    assert "Skipped: column &#x27;N&#x27;" in html


def test_a_sweeps_tables_with_their_own_names(tmp_path):
    """Results keyed by run_id with a nominal budget; curves without N, as sweeps write them."""
    runs = isoflop_table()
    runs["run_id"] = [f"run{i}" for i in range(len(runs))]
    runs["budget"], runs["C"] = runs["C"], runs["C"] * np.exp(np.linspace(-0.05, 0.05, len(runs)))
    runs.loc[0, "loss"] = np.nan  # a failed run
    curves = learning_curves().rename(
        columns={"run": "run_id", "S": "step", "D": "tokens", "C": "flops", "loss": "val_loss"}
    )
    sizes = curves.drop_duplicates("run_id")[["run_id", "N"]]
    html = write_fits(
        pd.concat([runs, sizes]),
        tmp_path,
        curves=curves.drop(columns="N"),
        columns={"run": "run_id"},
        curve_columns={
            "run": "run_id",
            "S": "step",
            "D": "tokens",
            "C": "flops",
            "loss": "val_loss",
        },
    )
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["isoflop"]["diagnostics"]["n_budgets"] == 7  # grouped by the nominal budget
    assert fits["envelope"]["status"] == "ok" and fits["kaplan-ns"]["n_points"] == len(curves)
    assert f"{1 + len(sizes)} rows without a loss left out" in html


def test_plan_respects_the_columns_present():
    keys = [key for key, *_ in plan_fits(isoflop_table()[["N", "loss"]])]
    assert keys == ["power_N"]


def test_columns_map_a_users_names(tmp_path):
    table = isoflop_table().rename(columns={"N": "params", "loss": "val_loss"})[
        ["params", "val_loss"]
    ]
    write_fits(table, tmp_path, columns={"N": "params", "loss": "val_loss"})
    assert json.loads((tmp_path / "fits.json").read_text())["power_N"]["status"] == "ok"


@pytest.mark.parametrize("law", ["power", "kaplan-nd", "chinchilla", "isoflop"])
def test_plots_are_figures_without_pyplot(law):
    df = isoflop_table()
    fit = fit_law(df, law, method="varpro", n_bootstrap=3)
    fig = plot_fit(fit, df)
    assert isinstance(fig, Figure)
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
