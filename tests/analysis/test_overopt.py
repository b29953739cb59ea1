"""analysis.overopt: Gao et al. 2022's R_bon and R_RL recovered from synthetic curves with
known α and β, their bootstraps (by prompt, by point), the slope against RM size, the
readers of best-of-n tables, RL and DPO runs, DPO's curves per β, and the report's section
and fits.json keys."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.overopt.fit import (
    bon_law,
    dpo_points,
    fit_bon,
    fit_dpo,
    fit_form,
    fit_rl,
    peak,
    read_bon,
    rl_law,
    rl_points,
    trend,
    versus_gao,
)
from analysis.overopt.section import overopt_section
from analysis.page import write_page
from analysis.table import FitInputError
from scaling.rlhf.bon import kl_bon

NS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
# α, β per RM size as Gao's figures have them move: larger proxies, larger α and smaller β
TRUE = {1e5: (0.30, 0.10), 1e6: (0.40, 0.08), 1e7: (0.50, 0.06)}


@pytest.mark.parametrize(("form", "alpha", "beta"), [("bon", 0.4, 0.1), ("rl", 0.3, 0.2),
                                                     ("rl", 0.1, -0.05)])
def test_exact_curves_give_back_alpha_and_beta(form, alpha, beta):
    d = np.sqrt(kl_bon(np.array(NS)))
    law = bon_law if form == "bon" else rl_law
    fit = fit_form(d, law(d, alpha, beta), form)
    assert fit.params["alpha"] == pytest.approx(alpha, abs=1e-10)
    assert fit.params["beta"] == pytest.approx(beta, abs=1e-10)
    assert fit.n_points == len(NS) - 1  # d = 0 (n = 1) carries nothing
    assert fit.diagnostics["peak_d"] == pytest.approx(peak(form, alpha, beta))


def test_peaks():
    assert peak("bon", 0.4, 0.1) == pytest.approx(2.0)
    assert peak("rl", 0.3, 0.2) == pytest.approx(np.exp(0.5))
    assert peak("bon", 0.4, 0.0) == np.inf and peak("rl", 0.4, -1) == np.inf
    assert rl_law(np.array([0.0]), 1, 1)[0] == 0


@pytest.mark.parametrize(("d", "R", "message"), [
    ([0, 1, 1], [0, 0.1, 0.2], "1 distinct d > 0"),
    ([0, 0], [0, 0], "0 distinct d > 0"),
    ([-1, 1, 2], [0, 0.1, 0.2], "d = -1 < 0"),
    ([1, 2, np.nan], [0, 0.1, 0.2], "must be finite"),
])
def test_curves_that_cannot_be_fitted_are_refused(d, R, message):
    with pytest.raises(FitInputError, match=message):
        fit_form(np.array(d, float), np.array(R, float), "bon")
    with pytest.raises(FitInputError, match="form 'ppo'"):
        fit_form(np.array([1.0, 2.0]), np.array([1.0, 2.0]), "ppo")


def _bon_per_prompt(prompts: int = 40, noise: float = 0.03, seed: int = 0) -> pd.DataFrame:
    """Per-prompt best-of-n tables of one scaling-bon run against three reward models:
    gold = the prompt's own level + R_bon(d) + noise."""
    rng = np.random.default_rng(seed)
    d = np.sqrt(kl_bon(np.array(NS)))
    level = rng.uniform(0.1, 0.3, prompts)
    rows = []
    for size, (alpha, beta) in TRUE.items():
        gold = level[:, None] + bon_law(d, alpha, beta) + noise * rng.normal(size=(prompts,
                                                                                  len(NS)))
        gold[:, 0] = level  # n = 1 is the pool's mean, the same for every proxy
        for p in range(prompts):
            rows += [{"source": "bon", "rm_run": f"rm{size:.0e}", "rm_size": size, "prompt": p,
                      "n": n, "kl": d[k] ** 2, "d": d[k], "gold_reward": gold[p, k],
                      "proxy_reward": 2 * d[k]} for k, n in enumerate(NS)]
    return pd.DataFrame(rows)


def test_best_of_n_per_size_with_prompt_bootstrap_and_the_trend():
    fits = fit_bon(_bon_per_prompt(), n_bootstrap=200, seed=1)
    assert sorted(fits) == sorted(TRUE)
    for size, (alpha, beta) in TRUE.items():
        fit = fits[size]
        assert fit.params["alpha"] == pytest.approx(alpha, abs=0.03)
        assert fit.params["beta"] == pytest.approx(beta, abs=0.015)
        lo, hi = fit.intervals["alpha"]
        assert lo < alpha < hi and hi - lo < 0.1
        assert fit.diagnostics["bootstrap"]["unit"].startswith("prompts")
        assert fit.n_points == len(NS) - 1
    alpha_trend, beta_trend = trend(fits, "alpha"), trend(fits, "beta")
    assert alpha_trend["slope"] == pytest.approx(0.1, abs=0.02)  # +0.1 per decade
    assert beta_trend["slope"] == pytest.approx(-0.02, abs=0.01)
    assert alpha_trend["slope_ci"][0] > 0 and beta_trend["slope_ci"][1] < 0
    assert versus_gao("bon", "alpha", alpha_trend) == "as Gao"
    assert versus_gao("bon", "beta", beta_trend) == "as Gao"


def test_a_trend_needs_two_sizes_and_reads_noise_as_noise():
    one = fit_bon(_bon_per_prompt().query("rm_size == 1e5"))
    result = trend(one, "alpha")
    assert result["slope"] is None and "1 RM size" in result["status"]
    assert versus_gao("bon", "alpha", result) == "not determined"
    assert versus_gao("bon", "beta", {"slope": 0.1, "slope_ci": [-0.1, 0.3]}) == "within noise"
    assert versus_gao("bon", "beta", {"slope": 0.1, "slope_ci": [0.05, 0.3]}) == \
        "opposite to Gao"


def _rl_tables(points: int = 12, noise: float = 0.005, seed: int = 0):
    """Results and curves of RL runs, one per size, gold = 0.2 + R_RL(d) + noise."""
    rng = np.random.default_rng(seed)
    results, curves = [], []
    for size, (alpha, beta) in {1e5: (0.2, 0.15), 1e6: (0.25, 0.1)}.items():
        run = f"rl-{size:.0e}"
        results.append({"run_id": run, "stage": "rl", "status": "completed",
                        "rm_n_params_nonembed": size, "kl_coef": 0.0, "reward_run": "rm"})
        kl = np.concatenate([[0.0], np.linspace(0.05, 12, points - 1)])
        gold = 0.2 + rl_law(np.sqrt(kl), alpha, beta) + noise * rng.normal(size=points)
        gold[0] = 0.2
        curves.append(pd.DataFrame({"run_id": run, "step": np.arange(points) * 10,
                                    "kl_to_ref": kl, "gold_reward": gold,
                                    "proxy_reward": np.sqrt(kl)}))
    results.append({"run_id": "parent", "stage": "pretrain", "status": "completed"})
    return pd.DataFrame(results), pd.concat(curves, ignore_index=True)


def test_rl_per_size_relative_to_the_first_evaluation_with_point_bootstrap():
    results, curves = _rl_tables()
    points = rl_points(results, curves)
    assert set(points["run"]) == {"rl-1e+05", "rl-1e+06"}
    assert (points.groupby("run")["gold"].first() == 0).all()
    fits = fit_rl(points, n_bootstrap=200, seed=0)
    for size, (alpha, beta) in {1e5: (0.2, 0.15), 1e6: (0.25, 0.1)}.items():
        assert fits[size].params["alpha"] == pytest.approx(alpha, abs=0.02)
        assert fits[size].params["beta"] == pytest.approx(beta, abs=0.01)
        lo, hi = fits[size].intervals["beta"]  # 11 points: a point bootstrap is narrow
        assert lo < fits[size].params["beta"] < hi and hi - lo < 0.03
        assert abs(fits[size].params["beta"] - beta) < 4 * fits[size].stderr["beta"]
        assert fits[size].diagnostics["bootstrap"]["unit"].startswith("evaluation points")
    assert trend(fits, "beta")["status"].startswith("ok: 2 sizes")
    assert rl_points(results[results["stage"] != "rl"], curves) is None
    with pytest.raises(FitInputError, match="kl_to_ref"):
        rl_points(results, curves.drop(columns="kl_to_ref"))


def test_read_bon_finds_the_tables_below_a_study(tmp_path):
    per_prompt = _bon_per_prompt(prompts=3)
    out = tmp_path / "study" / "bon"
    out.mkdir(parents=True)
    table = per_prompt.groupby(["rm_run", "rm_size", "n", "kl", "d"], as_index=False).agg(
        gold_reward=("gold_reward", "mean")).rename(columns={"rm_size": "rm_n_params_nonembed"})
    table.to_parquet(out / "bon.parquet")
    per_prompt.drop(columns=["source", "rm_size", "kl", "d"]).to_parquet(
        out / "bon_prompts.parquet")
    read = read_bon(tmp_path / "study")
    assert len(read) == len(per_prompt) and set(read["source"]) == {"bon"}
    assert read_bon(tmp_path / "study" / "bon" / "nothing") is None
    (out / "bon_prompts.parquet").unlink()
    with pytest.raises(FitInputError, match=r"without its bon_prompts\.parquet"):
        read_bon(tmp_path / "study")


def test_the_section_writes_figures_and_the_fits_json_contract(tmp_path):
    results, curves = _rl_tables()
    section = overopt_section(results, curves, _bon_per_prompt(), tmp_path, n_bootstrap=50,
                              seed=0)
    for key in ("bon", "rl"):
        assert section.fits[key], key
        for size, entry in section.fits[key].items():
            float(size)  # keyed by RM size
            assert {"alpha", "beta", "alpha_ci", "beta_ci", "n_points"} <= set(entry)
            assert len(entry["alpha_ci"]) == 2 and entry["n_points"] > 0
    assert sorted(section.fits["bon"]) == ["100000", "1000000", "10000000"]
    json.dumps(section.fits, allow_nan=False)
    for name in ("overopt_bon.png", "overopt_rl.png", "overopt_trend.png"):
        assert (tmp_path / name).stat().st_size > 0 and name in section.html
    assert "as Gao" in section.html
    assert overopt_section(results[results["stage"] != "rl"], curves, None, tmp_path,
                           n_bootstrap=0, seed=0) is None


# DPO per β: how far it moves (KL at its last evaluation) shrinks as β grows; gold follows
# Gao's RL form with α = 0.05, β_RL = 0.03 (peak at d = exp(α/β_RL − 1) ≈ 1.95)
DPO_KL_MAX = {0.03: 9.0, 0.1: 4.0, 0.3: 1.5}
DPO_LAW = (0.05, 0.03)


def _dpo_tables(points: int = 12, noise: float = 0.001, seed: int = 0, gold: bool = True):
    """Results and curves of one DPO run per β (stage.beta), gold = 0.2 + R_RL(d) + noise
    at every evaluation (none with `gold` False: a run without stage.gold_samples)."""
    rng = np.random.default_rng(seed)
    results, curves = [], []
    for beta, kl_max in DPO_KL_MAX.items():
        run = f"dpo-b{beta}"
        results.append({"run_id": run, "stage": "dpo", "status": "completed",
                        "stage.beta": beta, "model.n_ctx": 256, "stage.gold_samples": 32})
        kl = np.concatenate([[0.0], np.geomspace(0.05, kl_max, points - 1)])
        curve = {"run_id": run, "step": np.arange(1, points + 1) * 10,
                 "val_accuracy": np.linspace(0.5, 0.6, points), "val_kl_to_ref": -kl}
        if gold:
            rewards = 0.2 + rl_law(np.sqrt(kl), *DPO_LAW) + noise * rng.normal(size=points)
            curve |= {"kl_to_ref": kl, "gold_reward": np.r_[0.2, rewards[1:]]}
        curves.append(pd.DataFrame(curve))
    return pd.DataFrame(results), pd.concat(curves, ignore_index=True)


def test_dpo_points_per_beta_with_peak_and_the_rl_form_fitted():
    results, curves = _dpo_tables()
    points = dpo_points(results, curves)
    assert sorted(points["beta"].unique()) == sorted(DPO_KL_MAX)
    assert (points.groupby("run")["gold"].first() == 0).all()
    assert points.groupby("beta")["kl"].max().to_dict() == pytest.approx(DPO_KL_MAX)
    by_beta = fit_dpo(points, n_bootstrap=100, seed=0)
    for beta, curve in by_beta.items():
        rows = points[points["beta"] == beta]
        assert curve.peak["gold_reward"] == rows["gold_reward"].max()
        assert curve.peak["d"] == rows.loc[rows["gold_reward"].idxmax(), "d"]
        assert curve.status == "ok"
        assert curve.fit.params["alpha"] == pytest.approx(DPO_LAW[0], abs=0.01)
        assert curve.fit.params["beta"] == pytest.approx(DPO_LAW[1], abs=0.01)
        lo, hi = curve.fit.intervals["beta"]
        assert lo <= curve.fit.params["beta"] <= hi
        assert curve.fit.diagnostics["bootstrap"]["unit"] == "evaluation points within the β"
    # β 0.03 reaches d 3 > the law's peak 1.95: gold rose, then fell
    assert 1 < by_beta[0.03].peak["d"] < np.sqrt(DPO_KL_MAX[0.03])


def test_a_dpo_curve_that_cannot_be_fitted_is_a_status():
    results, curves = _dpo_tables()
    two = curves[curves["step"] <= 20]  # the first evaluation and one more: one d > 0
    (curve,) = fit_dpo(dpo_points(results.iloc[:1], two)).values()
    assert curve.fit is None and curve.status.startswith("skipped: rl: 1 distinct d > 0")
    assert curve.peak["step"] in (10, 20)


def test_dpo_runs_without_gold_are_named_and_no_dpo_runs_are_none():
    results, curves = _dpo_tables(gold=False)
    with pytest.raises(FitInputError, match="gold_reward"):
        dpo_points(results, curves)
    rl_results, rl_curves = _rl_tables()
    with pytest.raises(FitInputError, match="none with gold_reward"):
        dpo_points(pd.concat([results, rl_results]), pd.concat([curves, rl_curves]))
    assert dpo_points(rl_results, rl_curves) is None


def _study_with_dpo(gold: bool = True):
    results, curves = _rl_tables()
    dpo_results, dpo_curves = _dpo_tables(gold=gold)
    rl = results["stage"] == "rl"
    results.loc[rl, "stage.max_new_tokens"] = 64
    return (pd.concat([results, dpo_results], ignore_index=True),
            pd.concat([curves, dpo_curves], ignore_index=True))


def test_the_section_draws_dpo_per_beta_and_writes_its_fits_json_key(tmp_path):
    results, curves = _study_with_dpo()
    section = overopt_section(results, curves, _bon_per_prompt(), tmp_path, n_bootstrap=50,
                              seed=0)
    dpo = section.fits["dpo"]
    assert list(dpo) == ["0.03", "0.1", "0.3"]
    for key, entry in dpo.items():
        assert entry["dpo_beta"] == float(key) and entry["runs"] == [f"dpo-b{key}"]
        assert len(entry["points"]) == 12 and entry["points"][0]["gold"] == 0
        assert {"d", "gold_reward", "step", "kl"} <= set(entry["peak"])
        assert entry["fit"]["alpha"] == pytest.approx(DPO_LAW[0], abs=0.01)
        assert len(entry["fit"]["beta_ci"]) == 2 and entry["status"] == "ok"
        assert "Σ (log π − log π_ref)" in entry["kl"]
    json.dumps(section.fits, allow_nan=False)
    assert (tmp_path / "overopt_dpo.png").stat().st_size > 0
    assert "overopt_dpo.png" in section.html and "DPO: gold reward against √KL" in section.html
    # the text reads the lengths from the records: DPO's n_ctx // 2, PPO's max_new_tokens
    assert "n_ctx // 2 new tokens = 128" in section.html
    assert "stage.max_new_tokens = 64" in section.html
    assert ("DPO R_RL(d), β = 0.03", "ok") in section.statuses
    # and the best-of-n and RL parts are unchanged by it
    assert sorted(section.fits["rl"]) == ["100000", "1000000"]


def test_without_dpo_runs_the_section_says_nothing_of_dpo(tmp_path):
    results, curves = _rl_tables()
    section = overopt_section(results, curves, _bon_per_prompt(), tmp_path, n_bootstrap=0,
                              seed=0)
    assert "dpo" not in section.fits and "dpo" not in section.fits["overoptimization"]["skipped"]
    assert "DPO" not in section.html and not (tmp_path / "overopt_dpo.png").exists()
    assert not any("DPO" in name for name, _ in section.statuses)


def test_dpo_alone_makes_the_section_and_dpo_without_gold_is_a_skip(tmp_path):
    results, curves = _dpo_tables()
    section = overopt_section(results, curves, None, tmp_path, n_bootstrap=0, seed=0)
    assert list(section.fits["dpo"]) == ["0.03", "0.1", "0.3"]
    assert "PPO reached" not in section.html  # no RL runs to compare with
    results, curves = _dpo_tables(gold=False)
    assert overopt_section(results, curves, None, tmp_path, n_bootstrap=0, seed=0) is None
    results, curves = _study_with_dpo(gold=False)
    section = overopt_section(results, curves, None, tmp_path, n_bootstrap=0, seed=0)
    assert "dpo" not in section.fits
    assert "stage.gold_samples" in section.fits["overoptimization"]["skipped"]["dpo"]


def test_the_report_page_holds_the_section_and_fits_json_keys(tmp_path):
    results, curves = _study_with_dpo()
    results = results.assign(N=np.nan, D=np.nan, C=np.nan, loss=np.nan, wall_s=1.0)
    index = write_page(results, curves, tmp_path, title="RLHF", bon=_bon_per_prompt())
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert list(fits["bon"]) == ["100000", "1000000", "10000000"]
    assert list(fits["rl"]) == ["100000", "1000000"]
    assert list(fits["dpo"]) == ["0.03", "0.1", "0.3"]
    assert fits["overoptimization"]["trends"]["bon alpha"]["slope"] > 0
    assert "Reward-model overoptimization" in index.read_text()
