"""Reward-model overoptimization (Gao, Schulman & Hilton 2022, arXiv:2210.10760): the gold
reward of a policy optimised against a proxy reward model, as a function of how far it moved,
d = √KL(π‖π_init) (nats), per proxy size.

- Best-of-n: R_bon(d) = d·(α_bon − β_bon·d), peak at d* = α_bon/(2β_bon).
- RL (PPO): R_RL(d) = d·(α_RL − β_RL·ln d), peak at d* = exp(α_RL/β_RL − 1).

R is the gold score relative to the initial policy's (Gao recalibrate so that the initial
policy scores 0): best-of-n's n = 1 (the pool's mean, prompt by prompt), an RL run's first
evaluation (step 0, KL 0). Both forms are linear in (α, β), so each fit is ordinary least
squares on the design [d, −d²] or [d, −d·ln d], through the origin; points at d = 0 carry no
information (R = 0 there by construction) and are left out.

Uncertainty: best-of-n is resampled by prompt (the pools are independent draws per prompt;
every reward model of one `scaling-bon` run scored the same pools, so a draw takes the same
prompts for all of them: the draws of different sizes are paired). RL is resampled by
evaluation point within each size (the runs' per-evaluation gold is already a mean over
held-out prompts, which the records do not keep one by one). The coefficients against
log10 RM size (Gao's figures 3 and 4) are an OLS slope over sizes, its interval from the
same bootstrap draws.

Inputs: best-of-n tables below a study directory (`read_bon`: every `bon.parquet` that
`scaling-bon` wrote, with its `bon_prompts.parquet`); RL runs from the results and curves
tables (`rl_points`: stage `rl`, `rm_n_params_nonembed`, and per evaluation `gold_reward`,
`proxy_reward`, `kl_to_ref`); DPO runs likewise (`dpo_points`: stage `dpo`, `stage.beta`, and
per evaluation the `gold_reward` and sampled `kl_to_ref` that `stage.gold_samples` records),
one curve per β (`fit_dpo`), fitted with the RL form where the points allow.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.result import Fit
from analysis.table import FitInputError
from analysis.uncertainty import LEVEL, percentile_interval

BON_TABLE, BON_PROMPTS = "bon.parquet", "bon_prompts.parquet"
PARAMS = ("alpha", "beta")
RL_STAGE, DPO_STAGE = "rl", "dpo"
# Gao et al. 2022's qualitative findings (figures 3, 4): with a larger proxy, α_bon grows,
# β_bon and β_RL shrink (the proxy is overoptimised later); α_RL shows no clear trend.
GAO_TREND = {("bon", "alpha"): 1, ("bon", "beta"): -1, ("rl", "alpha"): 0, ("rl", "beta"): -1}


def bon_law(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R_bon(d) = d·(α − β·d): Gao et al. 2022, eq. 1 (best-of-n)."""
    d = np.asarray(d, float)
    return d * (alpha - beta * d)


def rl_law(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R_RL(d) = d·(α − β·ln d), 0 at d = 0: Gao et al. 2022, eq. 2 (RL)."""
    d = np.asarray(d, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, d * (alpha - beta * np.log(np.where(d > 0, d, 1))), 0.0)


LAWS: dict[str, Callable[..., np.ndarray]] = {"bon": bon_law, "rl": rl_law}
FORMS = {"bon": "R(d) = d·(α − β·d)", "rl": "R(d) = d·(α − β·ln d)"}


def peak(form: str, alpha: float, beta: float) -> float:
    """The d at which R peaks: α/(2β) (bon) or exp(α/β − 1) (rl); inf when β ≤ 0 (no
    overoptimization within the form: R never turns down)."""
    if not beta > 0:
        return float("inf")
    with np.errstate(over="ignore"):  # a β near 0: a peak beyond any d, inf
        return alpha / (2 * beta) if form == "bon" else float(np.exp(alpha / beta - 1))


def fit_form(d: np.ndarray, R: np.ndarray, form: str) -> Fit:
    """α and β of `form` ("bon" or "rl") by least squares of R on d, through the origin.

    d: [points], √KL in √nats, ≥ 0; R: [points], gold relative to the initial policy. Points
    at d = 0 are left out. Returns a `Fit` (law `form`, params alpha and beta, residuals in R,
    OLS standard errors, diagnostics peak_d and peak_R). Raises FitInputError for an unknown
    form, non-finite values, a negative d, or fewer than 2 distinct d > 0.
    """
    if form not in LAWS:
        raise FitInputError(f"form {form!r}: expected one of {', '.join(LAWS)}")
    d, R = np.asarray(d, float).ravel(), np.asarray(R, float).ravel()
    if d.shape != R.shape or not (np.isfinite(d).all() and np.isfinite(R).all()):
        raise FitInputError(f"{form}: d and R must be finite and of one length each")
    if (d < 0).any():
        raise FitInputError(f"{form}: d = {d.min():.3g} < 0; d is √KL")
    keep = d > 0
    d, R = d[keep], R[keep]
    if len(np.unique(d)) < 2:
        raise FitInputError(f"{form}: {len(np.unique(d))} distinct d > 0; α and β need 2 or more")
    X = np.column_stack([d, -d ** 2 if form == "bon" else -d * np.log(d)])
    coef, *_ = np.linalg.lstsq(X, R, rcond=None)
    residuals = R - X @ coef
    dof = len(R) - 2
    stderr = dict.fromkeys(PARAMS, np.nan)
    if dof > 0:
        cov = residuals @ residuals / dof * np.linalg.pinv(X.T @ X)
        stderr = dict(zip(PARAMS, np.sqrt(np.diag(cov)).tolist(), strict=True))
    params = dict(zip(PARAMS, coef.tolist(), strict=True))
    d_star = peak(form, *coef)
    return Fit(
        law=form, params=params, residuals=residuals, n_points=len(R), variables=("d",),
        stderr=stderr,
        diagnostics={"stderr_method": "ols", "form": FORMS[form], "peak_d": d_star,
                     "peak_R": float(LAWS[form](d_star, *coef)) if np.isfinite(d_star)
                     else float("inf"), "d_max": float(d.max())})


def read_bon(study_dir: str | Path) -> pd.DataFrame | None:
    """Every best-of-n table below `study_dir` (each directory holding a `bon.parquet` and
    its `bon_prompts.parquet`, as `scaling-bon` writes them), per prompt: columns source
    (the directory, relative to `study_dir`), rm_run, rm_size, prompt, n, kl, d,
    gold_reward, proxy_reward. None when there is none. Raises FitInputError naming a
    directory whose per-prompt table is missing."""
    root = Path(study_dir)
    parts = []
    for path in sorted(root.rglob(BON_TABLE)):
        prompts = path.with_name(BON_PROMPTS)
        if not prompts.exists():
            raise FitInputError(f"{path.parent}: {BON_TABLE} without its {BON_PROMPTS}")
        table = pd.read_parquet(path)[["rm_run", "rm_n_params_nonembed", "n", "kl", "d"]]
        rows = pd.read_parquet(prompts).merge(table, on=["rm_run", "n"], validate="many_to_one")
        parts.append(rows.rename(columns={"rm_n_params_nonembed": "rm_size"}).assign(
            source=path.parent.relative_to(root).as_posix()))
    if not parts:
        return None
    columns = ["source", "rm_run", "rm_size", "prompt", "n", "kl", "d", "gold_reward",
               "proxy_reward"]
    return pd.concat(parts, ignore_index=True)[columns]


def bon_points(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """The best-of-n curves relative to n = 1: one row per (source, rm_run, n) with rm_size,
    d, gold and proxy (the means over prompts of each prompt's score minus its n = 1 score),
    gold_reward and proxy_reward (absolute means) and n_prompts."""
    rel = _relative_to_n1(per_prompt)
    keys = ["source", "rm_run", "rm_size", "n", "kl", "d"]
    return rel.groupby(keys, sort=True).agg(
        gold=("gold", "mean"), proxy=("proxy", "mean"), gold_reward=("gold_reward", "mean"),
        proxy_reward=("proxy_reward", "mean"), n_prompts=("prompt", "nunique")).reset_index()


def _relative_to_n1(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """`per_prompt` with gold and proxy: each score minus the same prompt's n = 1 score."""
    if not (per_prompt["n"] == 1).any():
        raise FitInputError("best-of-n tables hold no n = 1: no initial policy to measure from")
    keys = ["source", "rm_run", "prompt"]
    base = per_prompt[per_prompt["n"] == 1].set_index(keys)[["gold_reward", "proxy_reward"]]
    joined = per_prompt.join(base, on=keys, rsuffix="_init")
    return joined.assign(gold=joined["gold_reward"] - joined["gold_reward_init"],
                         proxy=joined["proxy_reward"] - joined["proxy_reward_init"])


def fit_bon(per_prompt: pd.DataFrame, *, n_bootstrap: int = 0, seed: int = 0,
            level: float = LEVEL) -> dict[float, Fit]:
    """R_bon(d) per RM size (the reward models of one size pooled: their points fitted
    together), from `read_bon`'s per-prompt table; bootstrap intervals from `n_bootstrap`
    resamples of the prompts of each source, the same prompts for every reward model of it
    (paired draws: `samples` row b of every size comes from the same resample). Raises
    FitInputError as `fit_form` does for a size whose curve cannot be fitted."""
    points = bon_points(per_prompt)
    fits = {size: _with_runs(fit_form(group["d"], group["gold"], "bon"), group)
            for size, group in points.groupby("rm_size")}
    if n_bootstrap <= 0:
        return fits
    rel = _relative_to_n1(per_prompt)
    rng = np.random.default_rng(seed)
    # per (source, rm_run): gold [prompts, n] and d [n]; prompts in one order per source
    curves = {}
    for (source, rm_run, size), group in rel.groupby(["source", "rm_run", "rm_size"]):
        wide = group.pivot(index="prompt", columns="n", values="gold").sort_index()
        d = group.drop_duplicates("n").set_index("n")["d"].reindex(wide.columns).to_numpy()
        curves[source, rm_run] = (size, wide.to_numpy(), d)
    prompts = {source: len(g["prompt"].unique()) for source, g in rel.groupby("source")}
    draws: dict[float, list] = {size: [] for size in fits}
    for _ in range(n_bootstrap):
        picks = {s: rng.integers(0, p, p) for s, p in prompts.items()}
        stacked: dict[float, tuple[list, list]] = {size: ([], []) for size in fits}
        for (source, _), (size, gold_PxK, d_K) in curves.items():
            stacked[size][0].append(d_K)
            stacked[size][1].append(gold_PxK[picks[source]].mean(axis=0))
        for size, (ds, Rs) in stacked.items():
            draws[size].append(_params_or_nan(np.concatenate(ds), np.concatenate(Rs), "bon"))
    unit = "prompts (within each scaling-bon run, the same draw for all its reward models)"
    return {size: _intervals(fit, draws[size], unit, seed, level) for size, fit in fits.items()}


def rl_points(results: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame | None:
    """The RL runs' evaluations relative to their first (the initial policy, step 0): one
    row per evaluation of every completed `stage=rl` run, columns run, rm_run, rm_size,
    kl_coef, step, kl, d (√max(KL, 0): a sampled KL estimate can dip below 0), gold, proxy
    (minus the first evaluation's), gold_reward, proxy_reward, kl0 (the first evaluation's
    KL, ≈ 0). None when there is no such run. Raises FitInputError naming a missing column."""
    runs = _completed(results, RL_STAGE)
    if runs is None:
        return None
    for column in ("rm_n_params_nonembed",):
        if column not in runs:
            raise FitInputError(f"rl runs need column {column}: not in the results table")
    _require_metrics(curves, RL_STAGE, ("gold_reward", "proxy_reward", "kl_to_ref"))
    parts = []
    for run in runs.itertuples():
        rows = _evaluations(curves, run.run_id)
        if rows.empty:
            continue
        parts.append(pd.DataFrame({
            "run": run.run_id, "rm_run": getattr(run, "reward_run", None),
            "rm_size": run.rm_n_params_nonembed, "kl_coef": getattr(run, "kl_coef", np.nan),
            **_gold_columns(rows),
            "proxy": (rows["proxy_reward"] - rows["proxy_reward"].iloc[0]).to_numpy(),
            "proxy_reward": rows["proxy_reward"].to_numpy()}))
    return pd.concat(parts, ignore_index=True) if parts else None


def dpo_points(results: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame | None:
    """DPO's overoptimization curves: one row per evaluation with gold of every completed
    `stage=dpo` run, relative to its first, columns run, beta (`stage.beta`), step, kl, d,
    gold, gold_reward, kl0 (as `rl_points`), val_accuracy and val_kl_to_ref (NaN where not
    recorded). KL is the run's `kl_to_ref`: with `stage.gold_samples` > 0 each evaluation
    samples the policy once per held-out SFT prompt at temperature 1 and records the mean of
    Σ (log π − log π_ref) over the new tokens, the same Monte-Carlo estimate of
    KL(π‖π_ref) per response as PPO's (π_ref is the SFT parent in both). The record's
    `val_kl_to_ref`, a log-ratio on the data's chosen responses, is no sample of π and is not
    the x axis. None when there is no completed dpo run. Raises FitInputError for dpo runs
    of which none recorded gold (`stage.gold_samples` = 0) or a missing `stage.beta`."""
    runs = _completed(results, DPO_STAGE)
    if runs is None:
        return None
    if "stage.beta" not in runs:
        raise FitInputError("dpo runs need column stage.beta: not in the results table")
    _require_metrics(curves, DPO_STAGE, ("gold_reward", "kl_to_ref"))
    parts = []
    for run_id, beta in zip(runs["run_id"], runs["stage.beta"], strict=True):
        rows = _evaluations(curves, run_id)
        if rows.empty:
            continue
        extra = {c: rows[c].to_numpy(float) if c in rows else np.nan
                 for c in ("val_accuracy", "val_kl_to_ref")}
        parts.append(pd.DataFrame({"run": run_id, "beta": float(beta), **_gold_columns(rows),
                                   **extra}))
    if not parts:
        raise FitInputError(f"{len(runs)} dpo run(s), none with gold_reward at an evaluation: "
                            "set stage.gold_samples > 0 to draw DPO's curve")
    return pd.concat(parts, ignore_index=True)


def _completed(results: pd.DataFrame, stage: str) -> pd.DataFrame | None:
    """The completed runs of `stage` in `results`; None when there is none."""
    if "stage" not in results or "status" not in results:
        return None
    runs = results[(results["stage"] == stage) & (results["status"] == "completed")]
    return runs if len(runs) else None


def _require_metrics(curves: pd.DataFrame, stage: str, metrics: tuple[str, ...]) -> None:
    """Raises FitInputError naming the `metrics` the curves table lacks."""
    missing = [c for c in metrics if c not in curves]
    if missing:
        raise FitInputError(f"{stage} runs need metrics {', '.join(missing)}: not in the curves")


def _evaluations(curves: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The evaluations of one run that measured gold reward and KL, in order of step."""
    rows = curves[curves["run_id"] == run_id]
    return rows.dropna(subset=["gold_reward", "kl_to_ref"]).sort_values("step")


def _gold_columns(rows: pd.DataFrame) -> dict[str, np.ndarray | float]:
    """step, kl, d = √max(KL, 0) (a sampled KL estimate can dip below 0), gold (minus the
    first evaluation's: Gao's R, 0 for the initial policy), gold_reward and kl0 (the first
    evaluation's KL, ≈ 0) of one run's `_evaluations`."""
    kl = rows["kl_to_ref"].to_numpy(float)
    gold = rows["gold_reward"].to_numpy(float)
    return {"step": rows["step"].to_numpy(), "kl": kl, "d": np.sqrt(np.clip(kl, 0, None)),
            "gold": gold - gold[0], "gold_reward": gold, "kl0": kl[0]}


def fit_rl(points: pd.DataFrame, *, n_bootstrap: int = 0, seed: int = 0,
           level: float = LEVEL) -> dict[float, Fit]:
    """R_RL(d) per RM size from `rl_points` (every evaluation of every run of that size, any
    kl_coef: Gao find a KL penalty moves along the curve rather than lifting it), with
    intervals from `n_bootstrap` resamples of the evaluation points within each size. Raises
    FitInputError as `fit_form` does for a size whose points cannot be fitted."""
    rng = np.random.default_rng(seed)
    return {size: _fit_points(group, "rl", rng, n_bootstrap=n_bootstrap, seed=seed, level=level,
                             unit="evaluation points within the RM size")
            for size, group in points.groupby("rm_size")}


def _fit_points(group: pd.DataFrame, form: str, rng: np.random.Generator, *, n_bootstrap: int,
               seed: int, level: float, unit: str) -> Fit:
    """`form` fitted to one curve's points (columns d, gold; rm_run and run, if there, named in
    the diagnostics), with intervals from `n_bootstrap` resamples of its points drawn from
    `rng`. Raises FitInputError as `fit_form` does."""
    fit = _with_runs(fit_form(group["d"], group["gold"], form), group)
    if n_bootstrap <= 0:
        return fit
    d, R = group["d"].to_numpy(float), group["gold"].to_numpy(float)
    draws = []
    for _ in range(n_bootstrap):
        rows = rng.integers(0, len(d), len(d))
        draws.append(_params_or_nan(d[rows], R[rows], form))
    return _intervals(fit, draws, unit, seed, level)


@dataclass(frozen=True)
class DpoCurve:
    """DPO's overoptimization curve at one β: its points (`dpo_points`' rows of every run of
    this β), the evaluation of highest gold, and R_RL(d) fitted to it where the points allow."""

    beta: float  # DPO's β (stage.beta), not the fit's β_RL
    points: pd.DataFrame
    peak: dict[str, float]  # step, kl, d, gold_reward, gold at the evaluation of most gold
    fit: Fit | None  # R(d) = d·(α − β_RL·ln d), Gao's RL form; None when not fitted
    status: str  # the fit's status, or "skipped: <why>"


def fit_dpo(points: pd.DataFrame, *, n_bootstrap: int = 0, seed: int = 0,
            level: float = LEVEL) -> dict[float, DpoCurve]:
    """DPO's curves per β from `dpo_points`: each β's peak (the evaluation of highest gold;
    the first on a tie) and Gao's RL form R(d) = d·(α − β_RL·ln d) fitted to its points, with
    intervals from `n_bootstrap` resamples of the evaluation points within the β (DPO moves
    the policy by gradient steps on a fixed objective, as PPO does, so the RL form is the one
    to try). A β whose points cannot be fitted (fewer than 2 distinct d > 0) gets fit None
    and a status saying why; nothing is raised."""
    rng = np.random.default_rng(seed)
    out = {}
    for beta, group in points.groupby("beta"):
        best = group.loc[group["gold_reward"].idxmax()]
        peak_at = {k: float(best[k]) for k in ("step", "kl", "d", "gold_reward", "gold")}
        try:
            fit = _fit_points(group, "rl", rng, n_bootstrap=n_bootstrap, seed=seed, level=level,
                             unit="evaluation points within the β")
        except FitInputError as error:
            out[beta] = DpoCurve(beta, group, peak_at, None, f"skipped: {error}")
            continue
        out[beta] = DpoCurve(beta, group, peak_at, fit, fit.status)
    return out


def _with_runs(fit: Fit, group: pd.DataFrame) -> Fit:
    """`fit` with the reward-model runs (and RL runs) it was fitted on in its diagnostics."""
    extra = {"rm_runs": sorted(map(str, group["rm_run"].dropna().unique()))
             if "rm_run" in group else []}
    if "run" in group:
        extra["runs"] = sorted(map(str, group["run"].unique()))
    return replace(fit, diagnostics=fit.diagnostics | extra)


def _params_or_nan(d: np.ndarray, R: np.ndarray, form: str) -> list[float]:
    """α, β of one resample; NaN for a resample the form cannot be fitted on (one d)."""
    try:
        return list(fit_form(d, R, form).params.values())
    except FitInputError:
        return [np.nan, np.nan]


def _intervals(fit: Fit, draws: list, unit: str, seed: int, level: float) -> Fit:
    """`fit` with bootstrap samples (NaN rows kept: draw b of every size stays row b),
    standard errors and percentile intervals."""
    samples = pd.DataFrame(draws, columns=list(PARAMS))
    used = samples.dropna()
    summary = {"k": len(samples), "used": len(used), "failed": len(samples) - len(used),
               "unit": unit, "seed": seed, "level": level}
    if len(used) < 2:
        return replace(fit, samples=samples, diagnostics=fit.diagnostics | {"bootstrap": summary})
    low, high = percentile_interval(used.to_numpy(float), level)
    return replace(
        fit, samples=samples, stderr=used.std(ddof=1).to_dict(),
        intervals={n: (float(lo), float(hi)) for n, lo, hi in zip(PARAMS, low, high,
                                                                 strict=True)},
        diagnostics=fit.diagnostics | {"stderr_method": "bootstrap", "bootstrap": summary})


def trend(fits: dict[float, Fit], param: str, level: float = LEVEL) -> dict:
    """The slope of `param` against log10 RM size (OLS over sizes; Gao et al. 2022's figures
    3 and 4 plot the coefficients against log RM size), with a percentile interval from
    the fits' bootstrap samples, draw by draw (draws with a NaN at any size left out).
    `{"slope", "slope_ci", "n_sizes", "status"}`; slope None with a status saying why when
    fewer than 2 sizes have a usable fit."""
    sizes = sorted(s for s, f in fits.items() if f.usable and np.isfinite(f.params[param]))
    if len(sizes) < 2:
        return {"slope": None, "slope_ci": None, "n_sizes": len(sizes),
                "status": f"skipped: {len(sizes)} RM size(s); a slope needs 2 or more"}
    x = np.log10(np.array(sizes, float))
    slope = float(np.polyfit(x, [fits[s].params[param] for s in sizes], 1)[0])
    ci = None
    samples = [fits[s].samples for s in sizes]
    if all(s is not None and len(s) for s in samples) and len({len(s) for s in samples}) == 1:
        Y = np.column_stack([s[param].to_numpy(float) for s in samples])
        Y = Y[np.isfinite(Y).all(axis=1)]
        if len(Y) >= 2:
            slopes = np.polyfit(x, Y.T, 1)[0]
            ci = [float(v[0]) for v in percentile_interval(slopes[:, None], level)]
    status = "ok" if len(sizes) > 2 else "ok: 2 sizes, the slope between them"
    return {"slope": slope, "slope_ci": ci, "n_sizes": len(sizes), "status": status}


def versus_gao(form: str, param: str, result: dict) -> str:
    """How a slope compares with Gao's qualitative finding: as Gao | opposite to Gao |
    within noise (the interval holds 0) | no interval | no trend published | not determined."""
    expected = GAO_TREND[form, param]
    if result["slope"] is None:
        return "not determined"
    if expected == 0:
        return "no trend published"
    if result["slope_ci"] is None:
        return "no interval"
    lo, hi = result["slope_ci"]
    if lo <= 0 <= hi:
        return "within noise"
    return "as Gao" if np.sign(result["slope"]) == expected else "opposite to Gao"
