"""The Kaplan findings report: known exponents recovered from synthetic sweeps, the contract
keys of its fits.json part, a verdict per finding, and skips instead of errors."""

import json
from dataclasses import replace
from html import escape

import numpy as np
import pandas as pd
import pytest

from analysis import laws
from analysis.kaplan import (
    FINDINGS,
    KAPLAN_A_EQ15,
    VERDICTS,
    Finding,
    Selection,
    completed_runs,
    curve_table,
    finding_batch,
    finding_transfer,
    law_ns,
    main_series,
    write_kaplan_report,
)
from analysis.kaplan.constants import CRITERIA
from analysis.kaplan.verdict import gate
from analysis.registry import fit_law
from analysis.uncertainty import bootstrap
from tests.analysis.synthetic import (
    TRUE_CHINCHILLA,
    TRUE_KAPLAN_ND,
    TRUE_KAPLAN_NS,
    demo_sweep,
    kaplan_nd_table,
    kaplan_ns_curves,
    noisy,
)

CONTRACT = ("L(N)", "L(D)", "L(C)", "L(N,D)", "N_opt(C)")
TOKENS_PER_STEP = 2**19
D_MAX = 1e13  # every size's long run: far past compute-optimal, so L(N) is at its limit
ALPHA_T, N_CTX = 0.6, 64  # per-position law L(T) = L_final + (T_c/T)^α_T


def _size(N: float) -> dict:
    """A GPT-like shape for N = 12·n_layer·d_model²; all parameters add 4,160 embeddings."""
    n_layer = int(np.clip(round(np.log2(N / 1e6)), 1, 48))
    d_model = np.sqrt(N / (12 * n_layer))
    return {"model.n_layer": n_layer, "model.d_model": d_model, "n_params": N + 4160 * d_model}


def _sweep(seed: int = 0, sigma: float = 0.003) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Results, curves and per-position losses of a sweep in a Chinchilla-law world.

    Each of 16 sizes has one run to D_MAX (the L(N) sweep), the largest has 7 more at small
    D (the L(D) sweep), and two other depths sit at one size (the shape sweep) 0.5% and 1%
    above the law. A run's curve is the law at the tokens seen so far.
    """
    rng = np.random.default_rng(seed)
    specs = [(N, D_MAX, 1.0, {}) for N in np.geomspace(1e7, 3e10, 16)]
    specs += [(3e10, D, 1.0, {}) for D in np.geomspace(1e9, 1e12, 7)]
    N_shape = np.geomspace(1e7, 3e10, 16)[8]
    specs += [
        (N_shape * 0.97, D_MAX, 1.005, {"model.n_layer": 20}),
        (N_shape * 1.03, D_MAX, 1.01, {"model.n_layer": 40}),
    ]
    rows, curves, positions = [], [], []
    for i, (N, D, worse, shape) in enumerate(specs):
        run = f"run{i}"
        tokens = np.geomspace(TOKENS_PER_STEP, D, 48)  # from the first step
        curve = worse * laws.chinchilla(N, tokens, **TRUE_CHINCHILLA)
        curve = noisy(curve, rng, sigma)
        steps = tokens / TOKENS_PER_STEP
        curves.append(
            pd.DataFrame(
                {
                    "run_id": run,
                    "step": steps,
                    "tokens": tokens,
                    "flops": 6 * N * tokens,
                    "val_loss": curve,
                }
            )
        )
        loss = float(curve[-1])
        rows.append(
            {
                "run_id": run,
                "status": "completed",
                "N": N,
                "D": D,
                "C": 6 * N * D,
                "loss": loss,
                "best_val_loss": loss,
                "steps": steps[-1],
                "epochs": D / 1e14,
                "model.n_ctx": N_CTX,
                **_size(N),
                **shape,
                "val_loss_other": noisy(np.array(loss + 0.3), rng, sigma),
            }
        )
        T = np.arange(1, N_CTX + 1)
        T_c = 2 * (N / 1e7) ** 0.2  # larger models gain more from context
        positions.append(
            pd.DataFrame({"run_id": run, "position": T - 1, "loss": loss + (T_c / T) ** ALPHA_T})
        )
    failed = {"run_id": "failed", "status": "failed", "N": 1e8, "D": 1e9, "loss": np.nan}
    results = pd.DataFrame([*rows, failed])
    return results, pd.concat(curves, ignore_index=True), pd.concat(positions, ignore_index=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("kaplan")
    results, curves, positions = _sweep()
    section = write_kaplan_report(results, curves, out, positions=positions)
    html, fits = section.html, section.fits
    return out, html, fits


def test_power_laws_recover_the_known_exponents(report):
    _, _, fits = report
    p = TRUE_CHINCHILLA
    assert fits["L(N)"]["form"] == "offset"
    assert fits["L(N)"]["selection"].startswith("common D")
    assert fits["L(N)"]["alpha"] == pytest.approx(p["alpha"], rel=0.05)
    assert fits["L(N)"]["alpha"] == fits["L(N)"]["params"]["alpha"]
    assert fits["L(D)"]["alpha"] == pytest.approx(p["beta"], rel=0.05)
    assert fits["L(D)"]["N"] == pytest.approx(3e10)
    # The frontier of L = E + A/N^α + B/D^β is E + K·C^(−αβ/(α+β)).
    alpha_C = p["alpha"] * p["beta"] / (p["alpha"] + p["beta"])
    assert fits["L(C)"]["method"].startswith("envelope")
    assert fits["L(C)"]["alpha"] == pytest.approx(alpha_C, rel=0.05)
    for key in ("L(N)", "L(D)", "L(C)"):
        assert fits[key]["status"] in ("ok", "hit_bound:E")
        assert fits[key]["n_points"] >= 5 and fits[key]["alpha_pure"] > 0
        assert fits[key]["kaplan"]["alpha"] in (0.076, 0.095, 0.050)


def test_compute_optimal_exponent_from_every_route(report):
    _, _, fits = report
    a = TRUE_CHINCHILLA["beta"] / (TRUE_CHINCHILLA["alpha"] + TRUE_CHINCHILLA["beta"])
    n_opt = fits["N_opt(C)"]
    assert n_opt["a"] is not None and n_opt["method"]
    assert n_opt["from_chinchilla"]["params"]["a"] == pytest.approx(a, abs=0.02)
    assert n_opt["from_envelope"]["a"] == pytest.approx(a, abs=0.04)
    assert (n_opt["kaplan_a"], n_opt["chinchilla_a"]) == (0.73, 0.50)
    for name in ("alpha_N", "alpha_D", "N_c", "D_c"):
        assert fits["L(N,D)"][name] > 0


def test_every_finding_gets_a_verdict_in_the_json_and_the_html(report):
    _, html, fits = report
    json.dumps(fits, allow_nan=False)  # strict JSON, ready for fits.json
    assert set(CONTRACT) <= set(fits)
    findings = {f["number"]: f for f in fits["kaplan_findings"]}
    assert sorted(findings) == list(range(1, 9))
    for number, title in FINDINGS.items():
        assert findings[number]["verdict"] in VERDICTS
        assert f"{number}. {title}: {findings[number]['verdict']}" in html
    assert html.count("Verdict: <strong>") == 8
    assert findings[1]["verdict"] == "reproduced"  # depths 1% apart at one N
    assert findings[1]["numbers"]["equivalent_N_factor"] < 1.2
    assert findings[2]["verdict"] == "reproduced"
    assert findings[5]["verdict"] == "reproduced"  # val_loss_other = loss + 0.3
    assert findings[6]["verdict"] == "reproduced"
    assert findings[8]["verdict"] == "not measured"  # one batch size throughout
    assert "batch" in findings[8]["reason"]


def test_per_position_law_and_icl_score(report):
    _, html, fits = report
    icl = fits["icl"]
    assert icl["status"] == "ok" and len(icl["runs"]) == 25
    assert icl["alpha_T_median"] == pytest.approx(ALPHA_T, rel=0.02)
    assert all(run["icl_score"] < 0 for run in icl["runs"])
    assert icl["score_slope_per_decade_N"] < 0  # larger models use their context more
    assert "kaplan_icl.png" in html


def test_figures_are_written_and_shown(report):
    out, html, _ = report
    for name in (
        "kaplan_loss_vs_params.png",
        "kaplan_curves_tokens.png",
        "kaplan_curves_flops.png",
        "kaplan_L_D.png",
        "kaplan_L_C.png",
        "kaplan_icl.png",
        "kaplan_transfer.png",
    ):
        assert (out / name).stat().st_size > 10_000
        assert f'src="{name}"' in html
    # The transfer plot is shown in the section of finding 5, not in the gallery above.
    finding_5 = html[html.index("<h4>5. "):html.index("<h4>6. ")]
    assert 'src="kaplan_transfer.png"' in finding_5
    assert html.count('src="kaplan_transfer.png"') == 1
    assert html.startswith('<section class="kaplan">') and html.endswith("</section>")


def _transfer_sweep(transfer: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Six completed runs with final losses 3.0..2.5, `transfer` their transfer losses, and
    curves whose transfer loss keeps the final offset all along."""
    loss = np.linspace(3.0, 2.5, 6)
    results = pd.DataFrame({"run_id": [f"r{i}" for i in range(6)], "status": "completed",
                            "N": np.geomspace(1e5, 1e7, 6), "loss": loss,
                            "transfer_loss": transfer})
    curves = pd.concat(
        pd.DataFrame({"run_id": f"r{i}", "step": [1, 10, 100], "tokens": [1e3, 1e4, 1e5],
                      "flops": [1e9, 1e10, 1e11], "val_loss": L + np.array([2.0, 0.5, 0.0]),
                      "transfer_loss": T + np.array([2.0, 0.5, 0.0])})
        for i, (L, T) in enumerate(zip(loss, transfer, strict=True))
    )
    return results, curves


def test_transfer_with_a_constant_offset_is_reproduced_and_plotted(tmp_path):
    rng = np.random.default_rng(0)
    loss = np.linspace(3.0, 2.5, 6)
    results, curves = _transfer_sweep(loss + 0.4 + rng.normal(0, 0.005, 6))
    finding = finding_transfer(completed_runs(results))
    assert finding.verdict == "reproduced"
    fit = finding.numbers["transfer_loss"]
    assert fit["slope"] == pytest.approx(1, abs=0.1)
    assert fit["offset_mean"] == pytest.approx(0.4, abs=0.01)
    assert fit["intercept"] + fit["slope"] * 2.75 == pytest.approx(3.15, abs=0.01)
    section = write_kaplan_report(results, curves, tmp_path)
    html, fits = section.html, section.fits
    assert (tmp_path / "kaplan_transfer.png").stat().st_size > 10_000
    assert 'src="kaplan_transfer.png"' in html
    (reported,) = [f for f in fits["kaplan_findings"] if f["number"] == 5]
    assert reported["figures"] == ["kaplan_transfer.png"]

    doubled, _ = _transfer_sweep(2 * loss)  # the offset grows with the loss: slope 2
    assert finding_transfer(completed_runs(doubled)).verdict == "not reproduced"
    section = write_kaplan_report(doubled, None, tmp_path / "no_curves")
    html, _ = section.html, section.fits
    assert (tmp_path / "no_curves" / "kaplan_transfer.png").exists()


def test_eq_1_5_grid_recovers_kaplan_and_skips_what_it_lacks(tmp_path):
    """Kaplan's own constants on an (N, D) grid, without curves, shapes or run ids."""
    section = write_kaplan_report(kaplan_nd_table(), None, tmp_path, n_bootstrap=4)
    html, fits = section.html, section.fits
    nd = fits["L(N,D)"]
    assert nd["status"] == "ok"
    assert nd["alpha_N"] == pytest.approx(TRUE_KAPLAN_ND["alpha_N"], rel=0.05)
    assert nd["alpha_D"] == pytest.approx(TRUE_KAPLAN_ND["alpha_D"], rel=0.05)
    assert nd["diagnostics"]["bootstrap"]["k"] == 4 and "alpha_N" in nd["intervals"]
    assert fits["N_opt(C)"]["method"] == "kaplan-nd allocation"
    assert fits["N_opt(C)"]["a"] == pytest.approx(KAPLAN_A_EQ15, abs=0.02)
    assert fits["L(C)"]["status"] == "skipped: no learning curves"
    assert fits["L(C)"]["alpha"] is None and fits["L(C)"]["n_points"] == 0
    verdicts = {f["number"]: f["verdict"] for f in fits["kaplan_findings"]}
    assert [verdicts[n] for n in (1, 4, 5, 6, 7, 8)] == ["not measured"] * 6
    assert verdicts[3] == "reproduced"
    assert "icl" not in fits and "kaplan_curves_flops.png" not in html


def test_missing_columns_and_failed_runs_are_skips_not_errors(tmp_path):
    results = pd.DataFrame({"N": [1e6, 2e6, 4e6, 8e6], "loss": [4.0, 3.8, 3.6, 3.4]})
    curves = pd.DataFrame({"run_id": ["run0"], "step": [1]})
    positions = pd.DataFrame({"run_id": ["run0"], "loss": [3.0]})
    section = write_kaplan_report(results, curves, tmp_path, positions=positions)
    html, fits = section.html, section.fits
    for key in CONTRACT:
        assert fits[key]["status"].startswith("skipped"), key
    assert fits["L(N)"]["status"] == "skipped: L(N) needs column(s) D"
    assert fits["icl"]["status"] == "skipped: missing column(s) position"
    reasons = {f["number"]: f["reason"] for f in fits["kaplan_findings"]}
    assert "curves lack column(s) tokens, flops, val_loss" in reasons[6]
    assert all(f["verdict"] == "not measured" for f in fits["kaplan_findings"] if f["number"] > 3)
    assert html.count("Verdict: <strong>") == 8

    failed = pd.DataFrame({"run_id": ["a", "b"], "status": ["failed", "diverged"], "N": [1, 2]})
    section = write_kaplan_report(failed, None, tmp_path)
    _, fits = section.html, section.fits
    assert all(fits[key]["status"].startswith("skipped") for key in CONTRACT)


def test_an_empty_results_table_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="results table is empty"):
        write_kaplan_report(pd.DataFrame(), None, tmp_path)


def test_learning_curves_recover_eq_1_6():
    curves = kaplan_ns_curves().rename(columns={"run": "run_id", "S": "step", "loss": "val_loss"})
    curves = curves.assign(tokens=curves["step"] * 2**19, flops=1.0)
    runs = completed_runs(curves.drop_duplicates("run_id")[["run_id", "N"]].assign(loss=1.0))
    fit = law_ns(curve_table(curves.drop(columns="N"), runs)).fit
    assert fit.ok, fit.status
    assert fit.params["alpha_N"] == pytest.approx(TRUE_KAPLAN_NS["alpha_N"], rel=0.05)
    assert fit.params["alpha_S"] == pytest.approx(TRUE_KAPLAN_NS["alpha_S"], rel=0.1)


def test_critical_batch_size_from_runs_at_several_batch_sizes():
    """Kaplan eq 5.4–5.5: S = S_min·(1 + B_crit/B), with B_crit = B_*/L^(1/α_B)."""
    alpha_B, B_star, alpha_S, S_c = 0.21, 2e8, 0.76, 2.1e3
    loss = np.geomspace(6.0, 3.2, 80)
    S_min = S_c * (loss - 3.0) ** (-1 / alpha_S)
    B_crit = B_star / loss ** (1 / alpha_B)
    curves = pd.concat(
        pd.DataFrame(
            {"run": f"B{B:g}", "N": 1e8, "S": S_min * (1 + B_crit / B), "loss": loss, "C": 1.0}
        ).assign(D=lambda d, B=B: d["S"] * B)
        for B in (2**15, 2**17, 2**19, 2**21)
    )
    finding = finding_batch(curves, "")
    assert finding.verdict == "reproduced"
    assert finding.numbers["alpha_B"] == pytest.approx(alpha_B, rel=0.05)
    assert finding.numbers["B_star"] == pytest.approx(B_star, rel=0.3)


def test_frontier_is_fitted_directly_when_the_envelope_cannot_be(tmp_path):
    """Three sizes: the envelope's interior is one size, so L(C) uses the frontier itself."""
    results, curves, _ = _sweep()
    sizes = np.geomspace(1e7, 3e10, 16)[[0, 8, 15]]
    kept = results[results["N"].isin(sizes) & (results["D"] == D_MAX)]
    section = write_kaplan_report(kept, curves[curves["run_id"].isin(kept["run_id"])], tmp_path)
    _, fits = section.html, section.fits
    lc = fits["L(C)"]
    assert lc["status"] in ("ok", "hit_bound:E") and lc["alpha"] > 0
    assert lc["method"].startswith("frontier points from C = ")
    assert "envelope fit was not used" in lc["method"]


def test_a_resample_that_breaks_the_optimiser_is_a_failed_refit():
    data = completed_runs(kaplan_nd_table())
    fit = fit_law(data, "kaplan-nd")
    calls = {"n": 0}

    def flaky(df):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise np.linalg.LinAlgError("SVD did not converge")
        return fit_law(df, "kaplan-nd")

    fit = bootstrap(fit, data, flaky, k=4, seed=0)
    assert fit.diagnostics["bootstrap"]["failed"] == 2


def test_a_degenerate_eq_1_5_fit_is_named_and_not_used(tmp_path):
    """A flat loss: eq 1.5's constants run off, so finding 3 and N_opt(C) must not use it."""
    runs = kaplan_nd_table().assign(run_id=lambda d: [f"r{i}" for i in range(len(d))])
    runs["loss"] = noisy(np.full(len(runs), 3.0), np.random.default_rng(0))
    section = write_kaplan_report(runs, None, tmp_path)
    _, fits = section.html, section.fits
    assert fits["L(N,D)"]["status"].startswith("degenerate: N_c ran off to ∞")
    overfitting = next(f for f in fits["kaplan_findings"] if f["number"] == 3)
    assert overfitting["verdict"] == "not reproduced"
    assert overfitting["reason"].startswith("the fit gives no estimate (degenerate: ")
    n_opt = fits["N_opt(C)"]
    assert n_opt["from_kaplan_nd"]["status"].startswith("degenerate")
    assert n_opt["method"] != "kaplan-nd allocation"


def test_laws_are_fitted_on_one_batch_size_and_one_shape_per_size():
    def run(run_id, N, D, batch, n_layer, d_model):
        return {"run_id": run_id, "N": N, "D": D, "tokens_per_step": batch,
                "model.n_layer": n_layer, "model.d_model": d_model}

    runs = pd.DataFrame([
        run("n1", 1e5, 1e6, 1024, 2, 64), run("n2", 3e5, 1e6, 1024, 3, 96),
        run("n3", 8e5, 1e6, 1024, 4, 128), run("n3-short", 8e5, 2.5e5, 1024, 4, 128),
        run("wide", 3.1e5, 1e6, 1024, 1, 160), run("deep", 2.9e5, 1e6, 1024, 6, 64),
        run("small-batch", 1e5, 1e6, 256, 2, 64),
    ])
    assert sorted(main_series(runs)["run_id"]) == ["n1", "n2", "n3", "n3-short"]
    # a table without the shape columns keeps every run of the common batch size
    plain = runs.drop(columns=["model.n_layer", "model.d_model"])
    assert len(main_series(plain)) == 6


def test_the_critical_batch_size_trend_is_read_from_the_gradient_noise_scale():
    rng = np.random.default_rng(0)
    loss = np.geomspace(6.0, 3.0, 40)
    curves = pd.DataFrame({
        "run": np.repeat(["a", "b"], 20), "N": np.repeat([1e5, 1e6], 20),
        "S": np.tile(np.arange(1, 21), 2), "loss": loss, "lr": 1e-3,
        # Kaplan's form, B_crit = B_* / L^(1/0.2), with lognormal scatter and one blow-up
        "noise_scale": 2e8 / loss**5 * np.exp(rng.normal(0, 0.2, 40)),
    })
    curves.loc[7, "noise_scale"] = 1e12
    finding = finding_batch(curves, "")
    assert finding.verdict == "reproduced"
    assert finding.numbers["alpha_B"] == pytest.approx(0.2, rel=0.15)
    flat = curves.assign(noise_scale=5e4 * np.exp(rng.normal(0, 0.2, 40)))
    assert finding_batch(flat, "").verdict != "reproduced"


def test_every_finding_prints_its_criterion_measure_and_evidence_in_one_shape(report):
    _, html, fits = report
    minimum = (
        "Minimum evidence for reproduced: 6+ runs, 1+ decade in the finding's variable, "
        "≤ 1 epoch; its rows: "
    )
    for f in fits["kaplan_findings"]:
        line = f["explanation"]
        assert line.startswith(f"Criterion: {CRITERIA[f['number']]}. Measured: "), line
        assert minimum in line and line.count("Criterion: ") == 1
        assert f'<p class="criterion">{escape(line)}</p>' in html
        if f["verdict"] == "reproduced":  # meets its own criterion, on rows that hold enough
            assert f["met"] and ": criterion met. " in line
            held = f["held"]
            assert held["runs"] >= 6 and held["decades"] >= 1 and held["max_epochs"] <= 1
            assert f"its rows: {held['runs']} runs, {held['variable']} over " in line
    findings = {f["number"]: f for f in fits["kaplan_findings"]}
    factor = findings[1]["numbers"]["equivalent_N_factor"]
    assert findings[1]["measured"].startswith(f"×{factor:.3g} in N")
    assert findings[7]["measured"] == f"{findings[7]['numbers']['median_gap']:.1%}"
    assert findings[6]["measured"].count("over 16 sizes") == 2
    assert findings[8]["measured"] == "" and "Measured: nothing (not measured)" in (
        findings[8]["explanation"]
    )


def test_reproduced_cannot_fail_its_own_criterion():
    with pytest.raises(ValueError, match="finding 6 is 'reproduced' but fails its criterion"):
        Finding(6, "reproduced", "bigger models reach the loss in fewer tokens", met=False)
    flat = _transfer_sweep(np.full(6, 3.0))[0]  # the transfer loss does not move: slope 0
    finding = finding_transfer(completed_runs(flat))
    assert finding.verdict == "not reproduced" and not finding.met
    assert finding.measured == "transfer_loss: 1.00"


def test_reproduced_needs_the_minimum_evidence_in_the_rows_the_finding_uses():
    study = pd.DataFrame({"run_id": [f"r{i}" for i in range(20)],
                          "N": np.geomspace(1e5, 1e8, 20), "epochs": [10.0] + [0.5] * 19})
    finding = Finding(6, "reproduced", "bigger models reach the loss in fewer tokens", met=True,
                      selection=Selection.of(study.iloc[1:4], ["N"]))
    gated = gate(finding, study)  # the study holds enough; the finding's three runs do not
    assert gated.verdict == "partly"
    assert "3 runs (needs 6)" in gated.reason and "N over 0.32 decades (needs 1)" in gated.reason
    assert "epochs" not in gated.reason  # the run at 10 epochs is not among them
    assert gated.held == {"runs": 3, "variable": "N", "decades": pytest.approx(0.316, abs=1e-3),
                          "max_epochs": 0.5}
    wide = replace(finding, selection=Selection.of(study.iloc[1::3], ["N"]))
    assert gate(wide, study).verdict == "reproduced"
    repeated = replace(finding, selection=Selection.of(study.iloc[::3], ["N"]))
    assert "up to 10 epochs" in gate(repeated, study).reason
    assert gate(replace(finding, selection=None), study).verdict == "partly"


def test_each_finding_is_gated_on_its_own_rows_not_the_study(tmp_path):
    """The demo-shaped study holds 16 runs over 1.5 decades of N, at most 0.24 epochs: enough
    as a whole, but eq 1.5's D spans 0.78 decades, the curves of eq 1.6 and finding 6 come
    from 4 runs, and the frontier of finding 7 spans half a decade of N."""
    results, curves = demo_sweep()
    fits = write_kaplan_report(results, curves, tmp_path).fits
    assert fits["kaplan_evidence"]["runs"] == 16 and fits["kaplan_evidence"]["decades_N"] > 1
    findings = {f["number"]: f for f in fits["kaplan_findings"]}
    for number, short in ((3, "D over 0.78 decades"), (4, "4 runs (needs 6)"),
                          (6, "4 runs (needs 6)"), (7, "N over 0.52 decades")):
        assert findings[number]["met"], number
        assert findings[number]["verdict"] == "partly", number
        assert f"below the minimum evidence: {short}" in findings[number]["reason"], number
    assert findings[1]["verdict"] == "reproduced" and findings[1]["held"]["runs"] == 9


def _isoflop_runs(budgets=(1e18, 1e19, 1e20), per_budget=7) -> pd.DataFrame:
    """Runs trained to each budget in a Chinchilla-law world, sizes spread around its optimum."""
    p = TRUE_CHINCHILLA
    a = p["beta"] / (p["alpha"] + p["beta"])
    rows = []
    for C in budgets:
        center = 0.1 * (C / 6) ** a  # the sizes move with the budget as a study's would
        for j, N in enumerate(center * np.geomspace(0.05, 20, per_budget)):
            D = C / (6 * N)
            rows.append({"run_id": f"b{C:.0e}-{j}", "status": "completed", "N": N, "D": D,
                         "C": C * (1 + 1e-3 * j), "budget": C,  # tokens rounded per size
                         "loss": laws.chinchilla(N, D, **p)})
    return pd.DataFrame(rows)


def test_isoflop_is_approach_two_beside_the_others():
    from analysis.kaplan.fits import compute_optimal_exponent, guarded, law_c, law_isoflop

    p = TRUE_CHINCHILLA
    iso = law_isoflop(_isoflop_runs(), n_bootstrap=20)
    assert iso.fit.status == "ok"
    assert iso.fit.params["a"] == pytest.approx(p["beta"] / (p["alpha"] + p["beta"]), abs=0.03)
    lo, hi = iso.fit.intervals["a"]
    assert lo <= iso.fit.params["a"] <= hi
    skipped = guarded("L", "power", lambda: law_ns(pd.DataFrame({"run": [], "N": [], "S": []})))
    n_opt = compute_optimal_exponent(skipped, skipped, iso)
    assert n_opt["method"] == "isoflop profiles"
    assert n_opt["from_isoflop"]["budgets"] == 3
    # beside a clean envelope, the profiles (runs trained to their budget's end) come first
    results, curves, _ = _sweep()
    envelope = law_c(curve_table(curves.drop(columns="N", errors="ignore"),
                                 completed_runs(results)))
    both = compute_optimal_exponent(skipped, envelope, iso)
    assert both["from_envelope"]["status"] == "ok" and both["from_envelope"]["optimal_sizes"] >= 3
    assert both["method"] == "isoflop profiles" and both["a"] == iso.fit.params["a"]
    # one budget is no profile: skipped with the reason, never a guess
    one = guarded("IsoFLOP", "isoflop", lambda: law_isoflop(_isoflop_runs(budgets=(1e18,))))
    assert one.fit is None and "2+ compute budgets" in one.skipped


def test_the_section_shows_three_approaches(tmp_path):
    results, curves, _ = _sweep()
    both = pd.concat([results, _isoflop_runs().assign(**_size(1e9))], ignore_index=True)
    section = write_kaplan_report(both, curves, tmp_path)
    assert "by Chinchilla's three approaches" in section.html
    for approach in ("1: envelope of learning curves", "2: IsoFLOP profiles",
                     "3: parametric"):
        assert approach in section.html
    assert section.fits["N_opt(C)"]["from_isoflop"]["budgets"] == 3


def test_runs_that_repeat_their_data_enter_only_the_isoflop_profiles(tmp_path):
    results, curves, _ = _sweep()
    iso = _isoflop_runs().assign(**_size(1e9), epochs=0.5)
    iso.loc[0, "epochs"] = 2.7  # the smallest size of the lowest budget sees its data again
    section = write_kaplan_report(pd.concat([results, iso], ignore_index=True), curves, tmp_path)
    fits = section.fits
    assert fits["kaplan_evidence"]["max_epochs"] <= 1
    assert iso.loc[0, "run_id"] not in fits["L(N,D)"]["run_ids"]
    assert fits["N_opt(C)"]["from_isoflop"]["budgets"] == 3  # its profile keeps all 7 sizes
    assert any("1 completed run(s) saw their training data more than once (up to 2.7 epochs)"
               in caveat for caveat in section.caveats)
