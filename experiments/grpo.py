"""GRPO on your prompts with your reward, from any model: the critic-free RL recipe for a dataset you have.

  rlhf-jax run experiments/grpo.py --set policy.init_from=runs/sft --set task.path=prompts.jsonl \
      --set task.reward=rm:runs/rm                      # a reward model (experiments/reward_model.py)
  rlhf-jax run experiments/grpo.py --set policy.init_from=... --set task.reward=py:my_rewards:score
  rlhf-jax run experiments/grpo.py --smoke --set policy.init_from=tests/data/tiny_hf/qwen2   # < 1 min on CPU

`task.path` is any dataset with prompts (`data.records`: prompt rows, or the prompts of preference
or completion rows, plain or conversational; `task.format=`, `task.fields=`), by default the
review openings of experiments/data. `task.reward` is a lexicon (`vader`), `rm:WORKDIR` or a
Python function `py:MODULE:FUNCTION` of response texts. The policy (`policy.init_from`: a run or a
Hugging Face folder; `policy.lora.rank` for adapters) trains with GRPO on the RL trainer (`rl.train`:
`pg.group_size` samples a prompt, each scored against its group; KL to the starting policy), and is
evaluated on the held-out prompts.
"""

from pathlib import Path

from rlhf_jax import rl

PROMPTS = Path(__file__).parent / "data" / "reviews_prompts.jsonl"


def get_config(smoke: bool = False) -> rl.PromptsConfig:
  return rl.prompts_config("grpo", path=str(PROMPTS), smoke_mode=smoke)


def main(config: rl.PromptsConfig, workdir: Path):
  return rl.train_on_prompts(config, workdir)
