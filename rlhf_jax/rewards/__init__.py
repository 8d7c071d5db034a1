"""Rewards on tokens: one interface for reward models, lexicons and a user's Python functions.

`score(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> reward_B` (`tokens.py`).
"""

from rlhf_jax.rewards.tokens import (HostReward, Reward, RewardModelReward, TokenFunctionReward, from_spec, from_texts,
                                     scored_response_mask)

__all__ = ["HostReward", "Reward", "RewardModelReward", "TokenFunctionReward", "from_spec", "from_texts",
           "scored_response_mask"]
