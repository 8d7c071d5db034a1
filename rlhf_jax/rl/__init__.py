"""The RL trainer: a task (prompts, reward, gold judge), an algorithm (PPO, REINFORCE, RLOO, GRPO,
ReMax) and a config; one RLHF iteration is one jitted function (`iteration`)."""

from rlhf_jax.rl.iteration import repeat_rows, rl_iteration, sample, vmapped_iteration
from rlhf_jax.rl.task import (PromptFileConfig, Prompts, SentimentConfig, Task, prompt_file_task, read_prompts,
                              sentiment_task)
from rlhf_jax.rl.trainer import (ALGORITHMS, Algorithm, Config, PolicyConfig, RLConfig, build_algorithm, evaluate,
                                 smoke, start_policy, train, value_model_config, zero_value_params)

__all__ = ["ALGORITHMS", "Algorithm", "Config", "PolicyConfig", "PromptFileConfig", "Prompts", "RLConfig",
           "SentimentConfig", "Task",
           "build_algorithm", "evaluate", "prompt_file_task", "read_prompts", "repeat_rows", "rl_iteration", "sample",
           "sentiment_task", "smoke", "start_policy", "train", "value_model_config", "vmapped_iteration",
           "zero_value_params"]
