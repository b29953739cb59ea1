"""The report section: every applicable fit, its figure, fits.json, and skipped fits named."""

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from analysis.isoflop import fit_isoflop
from analysis.plots import plot_fit
from analysis.registry import fit_law
from analysis.report import plan_fits, write_fits
from tests.analysis.synthetic import isoflop_table, learning_curves


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    table = isoflop_table().sample(frac=1.0, random_state=0)
    section = write_fits(table, out, curves=learning_curves(), n_bootstrap=5, seed=0)
    return out, section.html, section.fits["diagnostics"]


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
    section = write_fits(table, tmp_path)
    html, fits = section.html, section.fits["diagnostics"]
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
    section = write_fits(
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
    html, fits = section.html, section.fits["diagnostics"]
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
    section = write_fits(table, tmp_path, columns={"N": "params", "loss": "val_loss"})
    assert section.fits["diagnostics"]["power_N"]["status"] == "ok"


@pytest.mark.parametrize("law", ["power", "kaplan-nd", "chinchilla", "isoflop"])
def test_plots_are_figures_without_pyplot(law):
    df = isoflop_table()
    fit = fit_law(df, law, method="varpro", n_bootstrap=3)
    fig = plot_fit(fit, df)
    assert isinstance(fig, Figure)
    assert all(ax.get_xscale() == "log" for ax in fig.axes)


def _rows(html: str) -> list[list[str]]:
    """The cells of the first table in `html`, one list per body row."""
    table = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", row, re.S) for row in table.split("</tr>")[:-1]]


def test_fits_open_with_a_row_each_with_status_and_intervals(report):
    _, html, fits = report
    rows = {row[0]: row[1:] for row in _rows(html)}
    assert len(rows) == len(fits)
    status, points, shown = rows["IsoFLOP profiles (Chinchilla Approach 2)"]
    assert status == fits["isoflop"]["status"] == "ok"
    assert points == str(fits["isoflop"]["n_points"])
    a, (lo, hi) = fits["isoflop"]["params"]["a"], fits["isoflop"]["intervals"]["a"]
    assert f"a = {a:.4g} [{lo:.4g}, {hi:.4g}]" in shown
    # the fit's own table shows the same interval in its lo and hi columns
    assert f"<td>{lo:.4g}</td>\n      <td>{hi:.4g}</td>" in html.split("<h3>IsoFLOP profiles")[1]


def test_an_isoflop_fit_with_edge_vertices_says_so_in_row_and_plot(tmp_path):
    """The demo's runs: 4 sizes at 2 budgets, the smallest the best at one of them."""
    sizes = np.array([1.2e4, 1e5, 3e5, 8e5])
    table = pd.concat(
        pd.DataFrame({"C": C, "N": sizes, "loss": 2 + 0.05 * np.log(sizes / N_opt) ** 2})
        for C, N_opt in ((5e11, 1.2e4), (1e12, 1.2e4 * 2**1.9))
    )
    section = write_fits(table, tmp_path)
    html, fits = section.html, section.fits["diagnostics"]
    assert fits["isoflop"]["status"].startswith("degenerate: the vertices of 1 of 2 budgets")
    rows = {row[0]: row[1] for row in _rows(html)}
    assert rows["IsoFLOP profiles (Chinchilla Approach 2)"] == fits["isoflop"]["status"]
    title = plot_fit(fit_isoflop(table), table).axes[1].get_title().replace("\n", " ")
    assert "[degenerate: the vertices of 1 of 2 budgets" in title
