"""The report page: summary first, one answer per question, fits.json written once with its
documented headline block."""

import json

import pandas as pd
import pytest

from analysis.page import SCHEMA, write_page
from analysis.table import FitInputError
from tests.analysis.synthetic import demo_sweep

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


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    """The demo sweep on corpus A (16 runs, two of them over 3 epochs), beside 6 pretraining
    runs on corpus B with much higher losses and 2 fine-tuned runs: the report's directory."""
    a, curves_a = demo_sweep()
    a = a.assign(stage="pretrain", corpus_cache="A-bpe4096-aaaa")
    a.loc[[0, 5], "epochs"] = [3.0, 2.5]
    b, curves_b = demo_sweep(seed=1)
    b = b.head(6).assign(stage="pretrain", corpus_cache="B-bpe1024-bbbb", loss=b["loss"] * 1.5)
    tuned = b.head(2).assign(stage="finetune", corpus_cache="A-bpe4096-aaaa")
    for frame, prefix in ((b, "b-"), (tuned, "ft-")):
        frame["run_id"] = prefix + frame["run_id"]
    curves_b = curves_b.assign(run_id="b-" + curves_b["run_id"])
    results = pd.concat([a, b, tuned], ignore_index=True)
    out = tmp_path_factory.mktemp("mixed")
    curves = pd.concat([curves_a, curves_b], ignore_index=True)
    write_page(results, curves, out, title="Two corpora", command="scaling-report runs/M")
    return out


def test_runs_of_two_corpora_are_never_pooled(mixed_report, fits):
    mixed = json.loads((mixed_report / "fits.json").read_text())
    study = mixed["study"]
    assert study["runs"] == 24
    assert study["fitted"] == {"stage": "pretrain", "corpus_cache": "A-bpe4096-aaaa", "runs": 16}
    assert study["left_out"] == [
        {
            "stage": "pretrain",
            "corpus_cache": "B-bpe1024-bbbb",
            "runs": 6,
            "report": "scaling-report runs/M --corpus B-bpe1024-bbbb",
        },
        {"stage": "finetune", "corpus_cache": None, "runs": 2, "report": None},
    ]
    # the fits read corpus A's single-pass runs alone (Kaplan's laws leave out its two
    # multi-epoch ones), never corpus B's
    demo, _ = demo_sweep()
    single_pass = set(demo["run_id"]) - set(demo["run_id"].iloc[[0, 5]])
    for key in ("L(N)", "L(D)", "L(N,D)"):
        ids = set(mixed[key]["run_ids"])
        assert ids <= single_pass and len(ids) >= 3, key
    assert mixed["L(N,D)"]["n_points"] == fits["L(N,D)"]["n_points"] - 2
    assert mixed["diagnostics"]["power_N"]["n_points"] == 16
    page = (mixed_report / "index.html").read_text()
    caveats = page[page.index("<h3>Caveats") : page.index("<h3>Status")]
    assert "span 2 corpora" in caveats and "the 16 on A-bpe4096-aaaa (the largest group)" in caveats
    assert "B-bpe1024-bbbb (6 runs: scaling-report runs/M --corpus B-bpe1024-bbbb)" in caveats
    assert "(2 finetune)" in caveats
    runs = page[page.index("<h2>Runs") :]
    assert runs.count("not fitted: corpus B-bpe1024-bbbb") == 6
    assert runs.count("not fitted: stage finetune") == 2


def test_multi_epoch_runs_are_flagged(mixed_report, fits):
    study = json.loads((mixed_report / "fits.json").read_text())["study"]
    assert study["multi_epoch_runs"] == 2 and study["max_epochs"] == 3.0
    page = (mixed_report / "index.html").read_text()
    caveats = page[page.index("<h3>Caveats") : page.index("<h3>Status")]
    assert "2 of the 16 runs the fits use train on more than one epoch" in caveats
    assert "(up to 3)" in caveats
    runs = page[page.index("<h2>Runs") :]
    assert runs.count("repeats data (") == 2 and "repeats data (2.5 epochs)" in runs
    assert "<code>loss</code> is the final validation loss" in runs
    # the demo sweep repeats no data: its caveat says so and its table has no notes
    assert fits["study"]["multi_epoch_runs"] == 0


def test_a_chosen_corpus_is_fitted_and_the_largest_named(tmp_path):
    results, curves = demo_sweep()
    results["corpus_cache"] = ["A"] * 10 + ["B"] * 6
    write_page(results, curves, tmp_path, title="B", corpus="B")
    study = json.loads((tmp_path / "fits.json").read_text())["study"]
    assert study["fitted"]["corpus_cache"] == "B" and study["fitted"]["runs"] == 6
    assert [g["corpus_cache"] for g in study["left_out"]] == ["A"]
    assert "the 6 on B (chosen with --corpus)" in " ".join(study["caveats"])
    with pytest.raises(FitInputError, match=r"corpus 'C'; corpus_cache values: A \(10 runs\)"):
        write_page(results, curves, tmp_path, title="C", corpus="C")
