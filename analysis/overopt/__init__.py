"""Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization": the gold
reward of best-of-n and RL against proxy reward models of several sizes, R(d) with
d = √KL, and its coefficients against RM size.

`fit` holds the forms, the readers and the fitters with their bootstraps; `section` the
report's part (figures, HTML, fits.json's "bon", "rl", "overoptimization" and "dpo");
`plot` the DPO figure (gold against d per β)."""

from analysis.overopt.fit import (
    DpoCurve,
    bon_law,
    bon_points,
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
)

__all__ = ["DpoCurve", "bon_law", "bon_points", "dpo_points", "fit_bon", "fit_dpo", "fit_form",
           "fit_rl", "peak", "read_bon", "rl_law", "rl_points", "trend"]
