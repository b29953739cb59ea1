"""RLHF (Gao et al. 2022): gold rewards that judge responses, and the comparisons they label."""

from scaling.rlhf.comparisons import (
    Comparison,
    compare,
    label,
    read_comparisons,
    write_comparisons,
)
from scaling.rlhf.gold import GOLD_REWARDS, Body, GoldReward, GoldScore, gold_reward, sft_body

__all__ = [
    "GOLD_REWARDS", "Body", "Comparison", "GoldReward", "GoldScore", "compare", "gold_reward",
    "label", "read_comparisons", "sft_body", "write_comparisons",
]
