"""Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization": the gold
reward of best-of-n and RL against proxy reward models of several sizes, R(d) with
d = √KL, and its coefficients against RM size.

`fit` holds the forms, the readers and the fitters with their bootstraps; `section` the
report's part (figures, HTML, fits.json's "bon", "rl" and "overoptimization")."""

from analysis.overopt.fit import (
    bon_law,
    bon_points,
    fit_bon,
    fit_form,
    fit_rl,
    peak,
    read_bon,
    rl_law,
    rl_points,
    trend,
)

__all__ = ["bon_law", "bon_points", "fit_bon", "fit_form", "fit_rl", "peak", "read_bon",
           "rl_law", "rl_points", "trend"]
