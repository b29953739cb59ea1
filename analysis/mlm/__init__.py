"""Masked LM (BERT) beside causal LM (GPT) on one grid of sizes and token budgets (issue 19):
how each objective's loss scales, and the mask rate at several sizes (Wettig et al. 2023).

`fit` tells the objectives apart and fits L(N), L(D), L(N, D) and the N_opt exponent per
objective, and builds the like-for-like and mask-rate tables; `figures` draws them;
`section` is the report's part (HTML, fits.json's "objectives", "like_for_like" and
"mask_rates"). docs/mlm.md says what is compared and why.
"""

from analysis.mlm.fit import (
    CAUSAL,
    LIKE_FOR_LIKE,
    ObjectiveFits,
    Study,
    fit_objective,
    masked,
    study_runs,
)

__all__ = ["CAUSAL", "LIKE_FOR_LIKE", "ObjectiveFits", "Study", "fit_objective", "masked",
           "study_runs"]
