"""The report page: summary first, one answer per question, fits.json written once with its
documented headline block."""

import json

import pytest

from analysis.page import SCHEMA

HEADLINE_FIELDS = {"value", "ci", "n_points", "selection", "status", "published", "verdict"}


@pytest.fixture(scope="module")
def fits(demo_report):
    return json.loads((demo_report / "fits.json").read_text())


def test_fits_json_has_the_documented_blocks(fits):
    assert fits["schema"] == SCHEMA
    assert set(fits["headline"]) == {"L(N)", "L(D)", "L(C)", "L(N,D)", "L(N,S)", "N_opt(C)"}
    for name, entry in fits["headline"].items():
        assert set(entry) >= HEADLINE_FIELDS, name
        assert entry["selection"] and entry["n_points"] > 0, name
    assert fits["headline"]["L(N)"]["value"] == fits["L(N)"]["alpha"]
    assert fits["study"]["runs"] == 16 and fits["study"]["by_status"] == {"completed": 16}
    assert fits["study"]["flops"] > 0 and fits["study"]["caveats"]
    # pooled fits answer no question: they sit apart, never in the headline
    assert "power_N" in fits["diagnostics"] and "power_N" not in fits


def test_the_page_opens_with_the_summary_and_keeps_diagnostics_last(demo_report):
    page = (demo_report / "index.html").read_text()
    order = [page.index(h) for h in ("<h2>Summary", "<h2>Kaplan", "<h2>Runs", "<h2>Diagnostics")]
    assert order == sorted(order)
    assert page.index("Headline exponents") < page.index("Caveats") < page.index("<h2>Kaplan")
    assert page.count("<figcaption>") >= 5


def test_the_run_table_names_the_settings_that_vary(demo_report):
    page = (demo_report / "index.html").read_text()
    runs = page[page.index("<h2>Runs") :]
    for knob in ("<th>n_layer</th>", "<th>batch_size</th>", "<th>d_model</th>"):
        assert knob in runs
