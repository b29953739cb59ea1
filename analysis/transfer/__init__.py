"""Hernandez, Kaplan, Henighan & McCandlish 2021, "Scaling Laws for Transfer": how much
from-scratch data pre-training is worth to a fine-tuned model, D_T = k·D_F^α·N^β.

`fit` holds the law (from-scratch L(N, D), effective data, the D_T fit and its bootstrap
strata), `section` the report's part (figures, HTML, fits.json, headline). Only `fit` is
imported here: `analysis.registry` imports the law, and the section imports the plots,
which import the registry.
"""

from analysis.transfer.fit import (
    COLUMNS,
    MAX_FRACTION,
    PUBLISHED,
    classify,
    effective_data,
    fit_transfer,
    refitter,
    strata,
    transfer_table,
)

__all__ = [
    "COLUMNS",
    "MAX_FRACTION",
    "PUBLISHED",
    "classify",
    "effective_data",
    "fit_transfer",
    "refitter",
    "strata",
    "transfer_table",
]
