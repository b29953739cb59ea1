"""Kaplan's published constants, the finding titles and every threshold the fits and
verdicts use, in one place: the fits, the findings and the report section all read
them, and a threshold stated once cannot drift between the code that applies it and
the text that quotes it.
"""

# Published constants (SCALING_FACTS.md), each in Kaplan's convention for its law.
KAPLAN = {
    "L(N)": {"alpha": 0.076, "x_c": 8.8e13},
    "L(D)": {"alpha": 0.095, "x_c": 5.4e13},
    "L(C)": {"alpha": 0.050, "x_c": 3.1e8 * 8.64e19},  # C_c = 3.1e8 PF-days, in FLOP
    "L(N,D)": {"alpha_N": 0.076, "alpha_D": 0.103, "N_c": 6.4e13, "D_c": 1.8e13},
    "L(N,S)": {"alpha_N": 0.077, "alpha_S": 0.76, "N_c": 6.5e13, "S_c": 2.1e3},
    "B_crit": {"alpha_B": 0.21, "B_star": 2e8},
}
KAPLAN_A = 0.73  # N_opt ∝ C_min^0.73, from Kaplan's learning-curve frontier
# What eq 1.5's own allocation gives with Kaplan's constants: α_D/(α_N + α_D).
KAPLAN_A_EQ15 = KAPLAN["L(N,D)"]["alpha_D"] / (
    KAPLAN["L(N,D)"]["alpha_N"] + KAPLAN["L(N,D)"]["alpha_D"]
)
CHINCHILLA_A = 0.50
KAPLAN_STOP_GAP = 0.10  # compute-efficient runs stop about 10% above converged loss

FINDINGS = {
    1: "Loss depends strongly on scale (N, D, C), weakly on shape",
    2: "Smooth power laws in N, D and C",
    3: "Overfitting is universal: L(N, D) follows eq 1.5",
    4: "Training curves are predictable: L(N, S) follows eq 1.6",
    5: "Transfer tracks in-distribution loss with a constant offset",
    6: "Larger models are more sample-efficient",
    7: "Compute-efficient training stops well before convergence",
    8: "The critical batch size follows a power law in the loss",
}
VERDICTS = ("reproduced", "partly", "not reproduced", "not measured")

# Runs whose N (or D) lie within these ratios of a level's smallest count as one size (or D).
N_LEVEL_RATIO = 1.25  # shape sweeps hit a target N only to ~15%
D_LEVEL_RATIO = 1.1
MAX_EXPONENT = 2.0  # an L(N, D) exponent past this is a degenerate fit, not a measurement
MIN_SIZES = 3  # points a pure power law needs (2 parameters + 1 degree of freedom)
# Verdict thresholds, stated once.
SMOOTH_RMS = 0.02  # rms residual in ln L of a law that fits "smoothly" (2%)
SMOOTH_DECADES = 1.0  # and the range it must span to count as "over orders of magnitude"
SMOOTH_POINTS = 5
SHAPE_FACTOR = (2.0, 5.0)  # shape spread worth at most ×2 in N: weak; ×5: partly weak
TRANSFER_SLOPE = (0.2, 0.5)  # |d L_transfer / d L − 1| for "constant offset"; "partly"
STOP_GAP = (0.03, 0.01)  # median frontier gap above converged: reproduced; partly
BCRIT_R2 = 0.8
# The least the rows a finding uses must hold before it is called "reproduced": completed
# runs, decades spanned in the finding's variable (N for most), and no data repeated
# (Kaplan's runs never see a token twice).
MIN_EVIDENCE = {"runs": 6, "decades": 1.0, "max_epochs": 1.0}
DEGENERATE_TERM = 0.05  # a law term that changes loss < 5% over the data acts as a constant
WARMUP_FRACTION = 0.05  # curves without lr: the trainer's default warmup
SAMPLE_TARGET_SLACK = 1.05  # a second, looser loss target for sample efficiency
# ICL score = loss at the late position minus at the early one (Olsson et al. 2022 use
# tokens 500 and 50 of 8192); scaled to the context length we have.
ICL_POSITIONS = (0.1, 0.8)
TRANSFER_PREFIXES = ("transfer_loss", "val_loss_")

# What each finding needs for "reproduced" (and "partly"), from the thresholds above.
CRITERIA = {
    1: (
        f"the loss spread across depths at one N and D is worth at most a ×{SHAPE_FACTOR[0]:g} "
        f"change in N along the fitted L(N) (partly: ×{SHAPE_FACTOR[1]:g})"
    ),
    2: (
        f"each of L(N), L(D) and L(C) fits within {SMOOTH_RMS:.0%} rms over {SMOOTH_DECADES:g}+ "
        f"decade and {SMOOTH_POINTS}+ points (partly: some law within {SMOOTH_RMS:.0%} rms)"
    ),
    3: (
        f"eq 1.5 converges (status ok) within {SMOOTH_RMS:.0%} rms with α_N and α_D at most "
        f"{MAX_EXPONENT:g} (partly: an estimate that misses this)"
    ),
    4: (
        f"eq 1.6 converges (status ok) within {SMOOTH_RMS:.0%} rms and its step term is no "
        f"constant: α_S·ln(S_max/S_min) ≥ {DEGENERATE_TERM:g} (partly: an estimate that misses "
        "this)"
    ),
    5: (
        f"|d L_transfer / d L − 1| ≤ {TRANSFER_SLOPE[0]:g} on every transfer corpus (partly: "
        f"≤ {TRANSFER_SLOPE[1]:g})"
    ),
    6: (
        "at each target loss, d ln D / d ln N < 0 by more than 2 standard errors over 3+ sizes "
        "(partly: < 0)"
    ),
    7: (
        f"the frontier's median gap above converged loss is {STOP_GAP[0]:.0%}+ (partly: "
        f"{STOP_GAP[1]:.0%}+)"
    ),
    8: (
        "B_crit grows as the loss falls: from the gradient noise scale, the 95% interval of "
        "its log-log slope below 0; from runs at several batch sizes, a negative slope with "
        f"R² ≥ {BCRIT_R2:g} (partly: a negative slope)"
    ),
}
