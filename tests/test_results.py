"""Run records -> results/curves tables and the report, including broken run directories."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from scaling.cli import report
from scaling.record import write_metrics, write_positions, write_summary
from scaling.results import collect, write_tables

CONFIG = {"model": {"n_layer": 2, "d_model": 32}, "data": {"paths": ["a/*.txt", "b.md"]},
          "train": {"tokens": 1000, "budget": None}}


def fake_run(run_dir, status="completed", loss=3.0, n=1000, **extra):
    summary = {"status": status, "n_params_nonembed": n, "tokens": 5000, "flops": 6e9,
               "final_val_loss": loss, "config": CONFIG, **extra}
    write_summary(run_dir, summary)
    curve_end = 4.0 if loss is None else loss
    rows = [{"step": s, "tokens": 100 * s, "flops": 1e6 * s, "train_loss": curve_end + 1 / s,
             "val_loss": curve_end + 1 / s, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e4}
            for s in (1, 2, 4)]
    write_metrics(run_dir, rows)
    if loss is not None:
        write_positions(run_dir, [loss + 2 / p for p in range(1, 9)])


@pytest.fixture
def sweep(tmp_path):
    fake_run(tmp_path / "small", loss=3.0, n=1000)
    fake_run(tmp_path / "big", loss=2.5, n=4000)
    fake_run(tmp_path / "nested" / "deeper", status="diverged", loss=None, diverged_step=7)
    write_summary(tmp_path / "crashed", {"status": "failed", "error": "DataError: no files",
                                         "config": CONFIG})
    (tmp_path / "unstarted" / ".hydra").mkdir(parents=True)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "summary.json").write_text("{not json")
    (tmp_path / "no_config").mkdir()
    (tmp_path / "no_config" / "summary.json").write_text('{"status": "completed"}')
    return tmp_path


def test_every_readable_run_is_one_row_and_broken_ones_are_named(sweep):
    collected = collect(sweep)
    results = collected.results.set_index("run_id")
    assert sorted(results.index) == ["big", "crashed", "nested/deeper", "small"]
    assert results.loc["crashed", "error"] == "DataError: no files"
    assert results.loc["nested/deeper", "diverged_step"] == 7
    assert results.loc["big", "model.d_model"] == 32
    assert results.loc["big", "data.paths"] == "a/*.txt,b.md"
    assert results.loc["big", "N"] == 4000 and results.loc["big", "loss"] == 2.5
    assert "config" not in results
    problems = "\n".join(collected.problems)
    for broken in ("unstarted", "garbage", "no_config"):
        assert str(sweep / broken) in problems
    assert sorted(collected.curves["run_id"].unique()) == ["big", "nested/deeper", "small"]
    assert list(collected.curves.columns[:2]) == ["run_id", "step"]
    assert sorted(collected.positions["run_id"].unique()) == ["big", "small"]
    assert len(collected.positions) == 16


def test_tables_are_written_and_read_back(sweep):
    write_tables(sweep)
    results = pd.read_parquet(sweep / "results.parquet")
    curves = pd.read_parquet(sweep / "curves.parquet")
    positions = pd.read_parquet(sweep / "positions.parquet")
    assert len(results) == 4 and len(curves) == 9 and len(positions) == 16
    assert set(results["status"]) == {"completed", "diverged", "failed"}


def test_report_command_writes_tables_page_and_plots(sweep):
    result = subprocess.run([sys.executable, "-c", "from scaling.cli import report; report()",
                             str(sweep)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "4 runs" in result.stdout
    assert str(sweep / "garbage") in result.stderr
    page = (sweep / "report" / "index.html").read_text()
    for plot in ("loss_vs_N.png", "loss_vs_D.png", "loss_vs_C.png", "curves_tokens.png"):
        assert (sweep / "report" / plot).stat().st_size > 1000
        assert plot in page
    assert "garbage" in page
    fits = json.loads((sweep / "report" / "fits.json").read_text())
    assert {"L(N)", "L(D)", "L(C)", "L(N,D)", "N_opt(C)", "icl"} <= set(fits)


def test_report_on_a_directory_without_runs_fails_clearly(tmp_path):
    result = subprocess.run([sys.executable, "-c", "from scaling.cli import report; report()",
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no run records" in result.stderr and "Traceback" not in result.stderr


def test_summary_round_trips_as_json(tmp_path):
    fake_run(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


@pytest.fixture
def two_corpora(tmp_path):
    """Three completed pretraining runs on one corpus, two on another (one of them over two
    epochs), and a fine-tuned run."""
    for i, n in enumerate((1000, 2000, 4000)):
        fake_run(tmp_path / f"a{i}", n=n, loss=3.0 - 0.2 * i, stage="pretrain",
                 corpus_cache="stdlib-bpe4096-aaaa", epochs=0.5)
    for i, n in enumerate((1000, 2000)):
        fake_run(tmp_path / f"b{i}", n=n, loss=5.0 - 0.2 * i, stage="pretrain",
                 corpus_cache="prose-bpe1024-bbbb", epochs=2.0 * (i + 1))
    fake_run(tmp_path / "ft", n=1000, loss=2.0, stage="finetune",
             corpus_cache="numpy-bpe4096-cccc", epochs=3.0)
    return tmp_path


def test_report_fits_the_larger_corpus_and_names_the_other(two_corpora, capsys):
    report([str(two_corpora)])
    out = capsys.readouterr().out
    assert "6 runs (6 completed)" in out
    assert ("fitted: 3 completed pretraining runs on stdlib-bpe4096-aaaa; not fitted: 2 on "
            "prose-bpe1024-bbbb (--corpus prose-bpe1024-bbbb); 1 finetune") in out
    study = json.loads((two_corpora / "report" / "fits.json").read_text())["study"]
    assert study["fitted"]["corpus_cache"] == "stdlib-bpe4096-aaaa"
    assert study["left_out"][0]["report"] == (
        f"scaling-report {two_corpora} --corpus prose-bpe1024-bbbb")
    assert study["multi_epoch_runs"] == 0  # the runs the fits use repeat no data
    page = (two_corpora / "report" / "index.html").read_text()
    assert f"scaling-report {two_corpora} --corpus prose-bpe1024-bbbb" in page
    # every run that repeats data is marked in the run table, fitted or not
    assert page.count("repeats data (") == 3


def test_report_on_a_chosen_corpus(two_corpora, capsys):
    report([str(two_corpora), "--corpus", "prose-bpe1024-bbbb"])
    assert "fitted: 2 completed pretraining runs on prose-bpe1024-bbbb" in capsys.readouterr().out
    study = json.loads((two_corpora / "report" / "fits.json").read_text())["study"]
    assert study["fitted"] == {"stage": "pretrain", "corpus_cache": "prose-bpe1024-bbbb",
                               "runs": 2}
    assert study["multi_epoch_runs"] == 2 and study["max_epochs"] == 4.0
    assert any("2 of the 2 runs the fits use train on more than one epoch" in c
               for c in study["caveats"])


def test_report_on_an_unknown_corpus_is_one_line_naming_the_known_ones(two_corpora, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report([str(two_corpora), "--corpus", "nosuch"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("scaling-report: error: --corpus: no completed pretraining run on "
                          "corpus 'nosuch'; corpus_cache values: stdlib-bpe4096-aaaa (3 runs), "
                          "prose-bpe1024-bbbb (2 runs)")
    assert not (two_corpora / "report").exists()
