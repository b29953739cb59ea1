"""The transfer law (Hernandez et al. 2021): D_E inverts the from-scratch law, a known D_T law is
recovered within its bootstrap intervals, ossification and failed parents are reported, bad
tables are one-line errors from `scaling-fit`, and the report's section renders."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.cli import main
from analysis.registry import fit_law
from analysis.result import jsonable
from analysis.table import FitInputError
from analysis.transfer import effective_data, fit_transfer, strata, transfer_table
from analysis.transfer.section import forgetting_table, transfer_section

# A from-scratch law at byte-level scale, and a transfer law other than the published one.
SCRATCH = {"E": 0.6, "A": 60.0, "B": 120.0, "alpha": 0.35, "beta": 0.3}
TRUTH = {"k": 3e3, "alpha": 0.3, "beta": 0.4}
SIZES = np.geomspace(1e5, 3e6, 4)
FINE_TUNING = np.geomspace(1e4, 1e7, 6)  # D_F: 3 decades
SCRATCH_D = np.geomspace(1e6, 3e8, 6)
CONFIG = {"data.tokenizer": "bytes", "data.val_fraction": 0.05}


def study(sigma: float = 0.002, seed: int = 0) -> pd.DataFrame:
    """A results table as `scaling-report` writes it: from-scratch runs on code over a (N, D)
    grid, one parent per N on prose, and fine-tunes of each at every D_F whose loss is the
    from-scratch law at D_F + k·D_F^α·N^β, with log-normal noise of `sigma`."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, N in enumerate(SIZES):
        common = {"status": "completed", "n_params_nonembed": N, **CONFIG}
        for j, D in enumerate(SCRATCH_D):
            loss = laws.chinchilla(N, D, **SCRATCH)
            rows.append(
                common
                | {
                    "run_id": f"scratch/n{i}_d{j}",
                    "stage": "pretrain",
                    "data.source": "code",
                    "tokens": D,
                    "best_val_loss": loss,
                }
            )
        rows.append(
            common
            | {
                "run_id": f"parents/n{i}",
                "stage": "pretrain",
                "data.source": "prose",
                "tokens": 1e8,
                "steps": 100,
                "best_val_step": 100,
                "best_val_loss": 1.5 - 0.1 * i,
                "final_val_loss": 1.5 - 0.1 * i,
            }
        )
        for j, D_F in enumerate(FINE_TUNING):
            D_T = TRUTH["k"] * D_F ** TRUTH["alpha"] * N ** TRUTH["beta"]
            rows.append(
                common
                | {
                    "run_id": f"finetune/n{i}_d{j}",
                    "stage": "finetune",
                    "parent_run": f"n{i}",
                    "parent_step": 100,
                    "data.source": "code",
                    "tokens": D_F,
                    "best_val_loss": laws.chinchilla(N, D_F + D_T, **SCRATCH),
                    "source_val_loss": 1.5 - 0.1 * i + 0.02 * j,
                }
            )
    df = pd.DataFrame(rows)
    df["best_val_loss"] *= np.exp(rng.normal(0.0, sigma, len(df)))
    return df


def _row(df: pd.DataFrame, run: str) -> int:
    return int(df.index[df["run_id"] == run][0])


def test_effective_data_inverts_the_from_scratch_law_exactly():
    N, D = np.repeat(SIZES, 3), np.tile([1e5, 1e7, 1e9], len(SIZES))
    out = effective_data(laws.chinchilla(N, D, **SCRATCH), N, np.full_like(N, 1e4), SCRATCH)
    np.testing.assert_allclose(out["D_E"], D, rtol=1e-9)
    np.testing.assert_allclose(out["D_T"], D - 1e4, rtol=1e-9)
    np.testing.assert_allclose(out["fraction"] * out["multiplier"], 1.0)
    floor = SCRATCH["E"] + SCRATCH["A"] * SIZES[0] ** -SCRATCH["alpha"]
    below = effective_data([floor, floor - 0.01], SIZES[:1], [1e4, 1e4], SCRATCH)
    assert below["below_reach"].all() and below["D_E"].isna().all()


def test_noiseless_table_gives_the_law_back():
    fit = fit_transfer(transfer_table(study(sigma=0.0)), method="varpro")
    assert fit.status == "ok" and fit.n_points == len(SIZES) * len(FINE_TUNING)
    for name, value in TRUTH.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-5)
    runs = fit.tables["runs"]
    assert not runs["ossified"].any() and runs["in_fit"].all()


def test_a_known_transfer_law_is_recovered_within_its_bootstrap_intervals():
    fit = fit_law(transfer_table(study()), "transfer", method="varpro", n_bootstrap=100, seed=0)
    assert fit.status == "ok" and fit.diagnostics["bootstrap"]["used"] == 100
    for name, value in TRUTH.items():
        lo, hi = fit.intervals[name]
        assert lo <= value <= hi, (name, value, lo, hi)
        assert fit.params[name] == pytest.approx(value, rel=0.05)
    assert fit.intervals["alpha"][1] - fit.intervals["alpha"][0] < 0.05


def test_the_bootstrap_resamples_each_kind_and_holds_the_parents():
    table = transfer_table(study())
    table.loc[table["run"] == "finetune/n0_d0", "status"] = "failed"
    kinds = strata(table).to_numpy()
    assert (kinds == "scratch").sum() == len(SIZES) * len(SCRATCH_D)
    assert (kinds == "finetune").sum() == len(SIZES) * len(FINE_TUNING) - 1
    assert {k for k in kinds if k.startswith("held")} == {
        "held finetune/n0_d0",
        *(f"held parents/n{i}" for i in range(len(SIZES))),
    }


def test_ossification_failed_parents_and_runs_are_reported_not_fitted():
    df = study()
    N, D_F = SIZES[0], FINE_TUNING[-1]
    worse = laws.chinchilla(N, D_F, **SCRATCH) * 1.05
    df.loc[_row(df, "finetune/n0_d5"), "best_val_loss"] = worse
    scratch_run = df.loc[_row(df, "scratch/n0_d0")].copy()
    scratch_run[["run_id", "tokens"]] = ["scratch/n0_same", D_F]
    scratch_run["best_val_loss"] = laws.chinchilla(N, D_F, **SCRATCH)
    df = pd.concat([df, scratch_run.to_frame().T], ignore_index=True)
    df.loc[_row(df, "parents/n1"), "status"] = "failed"
    df.loc[_row(df, "finetune/n2_d0"), ["status", "best_val_loss"]] = ["diverged", np.nan]

    fit = fit_transfer(transfer_table(df), method="varpro")
    runs = fit.tables["runs"].set_index("run")
    ossified = runs.loc["finetune/n0_d5"]
    assert ossified["ossified"] and ossified["D_T"] < 0 and ossified["why_not"] == "D_T <= 0"
    assert ossified["scratch_run_loss"] == pytest.approx(worse / 1.05)
    assert runs.loc["finetune/n1_d3", "why_not"] == "skipped: parent parents/n1 is failed"
    assert runs.loc["finetune/n2_d0", "why_not"] == "skipped: status diverged"
    assert fit.n_points == len(SIZES) * len(FINE_TUNING) - 1 - len(FINE_TUNING) - 1
    assert fit.diagnostics["excluded"] == {"D_T <= 0": 1}
    assert len(fit.diagnostics["skipped"]) == len(FINE_TUNING) + 1
    for name, value in TRUTH.items():
        assert fit.params[name] == pytest.approx(value, rel=0.05)


def test_fine_tunes_need_their_parents_and_a_from_scratch_grid():
    table = transfer_table(study())
    with pytest.raises(FitInputError, match=r"6 fine-tuned run\(s\) name parents not in the table"):
        fit_transfer(table[table["run"] != "parents/n2"])
    few = table[
        ~table["run"].str.startswith("scratch/")
        | table["run"].isin(["scratch/n0_d0", "scratch/n1_d1", "scratch/n2_d2"])
    ]
    with pytest.raises(FitInputError, match=r"from-scratch grid has 3 completed run.*needs >= 6"):
        fit_transfer(few)
    with pytest.raises(FitInputError, match=r"needs column.*parent, corpus"):
        fit_transfer(table.drop(columns=["parent", "corpus"]))


def test_forgetting_reads_the_parent_before_and_the_source_loss_after():
    df = study()
    fit = fit_transfer(transfer_table(df), method="varpro")
    losses = forgetting_table(df, fit).set_index("run")
    parent = df.loc[_row(df, "parents/n1"), "best_val_loss"]
    assert losses.loc["finetune/n1_d2", "before"] == pytest.approx(parent)
    assert losses.loc["finetune/n1_d2", "after"] == pytest.approx(1.44)
    assert losses.loc["finetune/n1_d2", "change"] == pytest.approx(1.44 - parent)
    assert len(losses) == len(SIZES) * len(FINE_TUNING)


@pytest.fixture
def table_csv(tmp_path):
    """The canonical table as a CSV, with the two corpora's caches a results table has."""
    table = transfer_table(study())
    table["corpus_cache"] = np.where(table["corpus"].str.startswith("prose"), "prose-b", "code-b")
    path = tmp_path / "transfer.csv"
    table.to_csv(path, index=False)
    return table, path


def test_scaling_fit_prints_k_alpha_beta_with_intervals(table_csv, tmp_path, capsys):
    _, path = table_csv
    figure = tmp_path / "transfer.png"
    code = main(
        [
            str(path),
            "--law",
            "transfer",
            "--method",
            "varpro",
            "--json",
            "--bootstrap",
            "20",
            "--plot",
            str(figure),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["law"] == "transfer" and out["status"] == "ok"
    assert set(out["params"]) == set(out["intervals"]) == {"k", "alpha", "beta"}
    assert out["diagnostics"]["cut"]["max_fraction"] == 0.5
    assert figure.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["parent", "corpus"]), "missing column 'parent' and 'corpus'"),
        (lambda t: t[t["run"] != "parents/n0"], "name parents not in the table (n0)"),
        (lambda t: t[~t["run"].str.startswith("scratch/n")], "from-scratch grid has 0"),
    ],
)
def test_scaling_fit_refuses_bad_tables_in_one_line(table_csv, tmp_path, capsys, change, message):
    table, _ = table_csv
    path = tmp_path / "bad.csv"
    change(table).to_csv(path, index=False)
    code = main([str(path), "--law", "transfer", "--method", "varpro"])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert out.err.count("\n") == 1 and message in out.err


def test_the_section_renders_figures_fits_and_headline(tmp_path):
    df = study()
    df.loc[_row(df, "finetune/n0_d5"), "best_val_loss"] = 1.05 * laws.chinchilla(
        SIZES[0], FINE_TUNING[-1], **SCRATCH
    )
    section = transfer_section(df, tmp_path, n_bootstrap=10, seed=0)
    names = ("effective_data", "fraction", "losses", "forgetting")
    for name in names:
        assert (tmp_path / f"transfer_{name}.png").stat().st_size > 10_000
        assert f'src="transfer_{name}.png"' in section.html
    fits = json.loads(json.dumps(jsonable(section.fits), allow_nan=False))["transfer"]
    assert {"k", "alpha", "beta", "k_ci", "alpha_ci", "beta_ci", "n_runs", "cut"} <= set(fits)
    assert fits["ossified"] == ["finetune/n0_d5"]
    assert fits["stops_paying"][f"N={SIZES[0]:.4g}"] == pytest.approx(FINE_TUNING[-1])
    assert set(section.headline) == {"transfer k", "transfer alpha", "transfer beta"}
    alpha = section.headline["transfer alpha"]
    assert alpha["published"] == 0.18 and alpha["verdict"] == "differs"


def test_the_section_is_absent_without_fine_tunes_and_says_why_it_cannot_fit(tmp_path):
    df = study()
    assert transfer_section(df[df["stage"] == "pretrain"], tmp_path, n_bootstrap=0, seed=0) is None
    no_scratch = df[~df["run_id"].str.startswith("scratch/")]
    section = transfer_section(no_scratch, tmp_path, n_bootstrap=0, seed=0)
    assert "from-scratch grid has 0 completed run" in section.html
    assert {h["verdict"] for h in section.headline.values()} == {"skipped"}
