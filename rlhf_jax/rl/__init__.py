"""The RL trainer: a task (prompts, reward, gold judge), an algorithm (PPO, REINFORCE, RLOO, GRPO,
ReMax, online DPO, rejection-sampling fine-tuning) and a config; one RLHF iteration is one jitted
function (`iteration`). Judged the same way: offline DPO on given preference pairs (`offline`),
offline ILQL on scored sequences (`ilql`) and best-of-n sampling from the reference (`best_of_n`)."""

from rlhf_jax.rl.best_of_n import BestOfNConfig, evaluate_best_of_n
from rlhf_jax.rl.ilql import sequence_arrays, train_offline_ilql
from rlhf_jax.rl.iteration import repeat_rows, rl_iteration, sample, vmapped_iteration
from rlhf_jax.rl.offline import pair_arrays, preference_records, train_offline_dpo
from rlhf_jax.rl.task import (PromptFileConfig, Prompts, SentimentConfig, Task, prompt_file_task, read_prompts,
                              sentiment_task)
from rlhf_jax.rl.trainer import (ALGORITHMS, Algorithm, Config, PolicyConfig, RLConfig, build_algorithm, evaluate,
                                 make_sampler, smoke, start_policy, train, value_model_config, zero_value_params)

__all__ = ["ALGORITHMS", "Algorithm", "BestOfNConfig", "Config", "PolicyConfig", "PromptFileConfig", "Prompts",
           "RLConfig", "SentimentConfig", "Task",
           "build_algorithm", "evaluate", "evaluate_best_of_n", "make_sampler", "pair_arrays", "preference_records",
           "prompt_file_task", "read_prompts", "repeat_rows", "rl_iteration", "sample", "sentiment_task",
           "sequence_arrays", "smoke", "start_policy", "train", "train_offline_dpo", "train_offline_ilql",
           "value_model_config", "vmapped_iteration", "zero_value_params"]
