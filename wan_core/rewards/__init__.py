"""Rewards and reward fine-tuning: the reward interface and a toy colour reward (`base`), CLIP-family
rewards such as HPS v2.1 and PickScore (`clip`), and SRPO (`srpo`)."""
from .base import ColourReward, RewardModel

__all__ = ["RewardModel", "ColourReward"]
