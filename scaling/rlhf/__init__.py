"""RLHF (Gao et al. 2022): gold rewards that judge responses, and the comparisons they label."""

from scaling.rlhf.gold import GOLD_REWARDS, Body, GoldReward, GoldScore, gold_reward, sft_body

__all__ = ["GOLD_REWARDS", "Body", "GoldReward", "GoldScore", "gold_reward", "sft_body"]
