"""Rewards on tokens: one interface for reward models, lexicons and a user's Python functions.

`score(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN) -> reward_B` (`tokens.py`);
`SignalReward` turns a predicted and a human score into a reward signal of `rlhf_jax.rewards.signals`.
"""

from rlhf_jax.rewards.tokens import (SIGNALS, HostReward, Reward, RewardModelReward, SignalReward, TokenFunctionReward,
                                     from_spec, from_texts, scored_response_mask)

__all__ = ["HostReward", "Reward", "RewardModelReward", "SIGNALS", "SignalReward", "TokenFunctionReward", "from_spec",
           "from_texts", "scored_response_mask"]
