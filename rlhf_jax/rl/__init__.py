"""The RL trainer: a task (prompts, reward, gold judge), an algorithm (PPO, REINFORCE, RLOO, GRPO,
ReMax, online DPO, rejection-sampling fine-tuning) and a config; one RLHF iteration is one jitted
function (`iteration`). Judged the same way: offline DPO on given preference pairs (`offline_dpo`),
offline ILQL on scored sequences (`offline_ilql`), online DPO in rounds of stored feedback
(`dpo_rounds`) and best-of-n sampling from the reference (`best_of_n_sampling`)."""

from rlhf_jax.rl.best_of_n_sampling import BestOfNConfig, evaluate_best_of_n
from rlhf_jax.rl.dpo_rounds import RoundsConfig, train_dpo_rounds
from rlhf_jax.rl.iteration import repeat_rows, rl_iteration, sample, vmapped_iteration
from rlhf_jax.rl.offline_dpo import train_offline_dpo
from rlhf_jax.rl.offline_ilql import train_offline_ilql
from rlhf_jax.rl.task import (PromptFileConfig, Prompts, SentimentConfig, Task, prompt_file_task,
                              sentiment_task)
from rlhf_jax.rl.trainer import (ALGORITHMS, Algorithm, Config, Models, PolicyConfig, PromptsConfig, RLConfig,
                                 build_algorithm, evaluate, make_sampler, prompts_config, smoke, start_models,
                                 start_policy, start_sentiment, train, train_on_prompts, value_model_config,
                                 zero_value_params)

__all__ = ["ALGORITHMS", "Algorithm", "BestOfNConfig", "Config", "Models", "PolicyConfig", "PromptFileConfig",
           "Prompts", "PromptsConfig", "RLConfig", "RoundsConfig", "SentimentConfig", "Task", "build_algorithm",
           "evaluate", "evaluate_best_of_n", "make_sampler", "prompt_file_task", "prompts_config", "repeat_rows",
           "rl_iteration", "sample", "sentiment_task", "smoke", "start_models", "start_policy", "start_sentiment",
           "train", "train_dpo_rounds", "train_offline_dpo", "train_offline_ilql", "train_on_prompts",
           "value_model_config", "vmapped_iteration", "zero_value_params"]
