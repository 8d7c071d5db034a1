"""DPO and its relatives on your preference pairs, from any model: the offline recipe.

  rlhf-jax run experiments/dpo.py --set policy.init_from=runs/sft --set data.path=prefs.jsonl
  rlhf-jax run experiments/dpo.py --set policy.init_from=... --set data.path=hf:ORG/NAME:train --set dpo.kind=ipo
  rlhf-jax run experiments/dpo.py --set policy.init_from=... --set data.path=unpaired.jsonl --set dpo.kind=kto
  rlhf-jax run experiments/dpo.py --smoke --set policy.init_from=tests/data/tiny_hf/qwen2   # < 1 min on CPU

`data.path` holds preference rows (`prompt`, `chosen`, `rejected`, plain or conversational, the
prompt possibly implicit; any of `data.records`' sources), or, for KTO, unpaired rows (`prompt`,
`completion`, `label`). Every DPO-family loss of `steps.dpo` trains on them (`dpo.kind`: dpo,
ipo, kto, orpo, simpo; `dpo.beta`, ...), the reference being the starting policy
(`policy.init_from`; `policy.lora.rank` for adapters, whose reference is the base weights). Rows
whose prompt hashes into `data.test_fraction` are held out: evaluation samples the policy on those
prompts and reports the reward `task.reward` names, its KL to the reference and its length.
"""

import dataclasses
from pathlib import Path

from rlhf_jax import rl, sharding
from rlhf_jax.data import records
from rlhf_jax.errors import UserError
from rlhf_jax.steps import dpo

PAIRS = Path(__file__).parent / "data" / "reviews_preferences.jsonl"


@dataclasses.dataclass(frozen=True)
class Config(rl.Config):
  data: records.DataConfig = records.DataConfig(path=str(PAIRS), test_fraction=0.1)
  # The held-out prompts of `data` (task.path is unused) and what evaluation reports about them.
  task: rl.PromptFileConfig = rl.PromptFileConfig(prompt_len=16, max_new_tokens=24)


def get_config(smoke: bool = False) -> Config:
  config = Config(rl=rl.RLConfig(batch_size=32, eval_batch_size=8), dpo=dpo.DPOConfig(beta=0.1))
  if smoke:
    config = rl.smoke(config)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, test_fraction=0.2),
                                 rl=dataclasses.replace(config.rl, eval_batch_size=8),
                                 task=dataclasses.replace(config.task, max_new_tokens=8))
  return config


def pairs(dataset: records.Dataset, rows: list[dict], kind: str) -> list[dict]:
  """Preference rows as they are; unpaired rows (KTO only) as pairs of a desirable and an
  undesirable completion of the same prompt, each side's completions taken in turn (KTO's loss
  scores each response alone, so the pairing only batches them). A prompt with completions of one
  side only is left out: the batch layout gives both sides one prompt."""
  if dataset.kind == "preference":
    return rows
  if dataset.kind != "unpaired_preference" or kind != "kto":
    raise UserError(f"{dataset.source}: dpo.kind={kind} trains on preference rows (prompt, chosen, rejected), "
                    f"not {dataset.kind}" + (" (unpaired rows train with dpo.kind=kto)"
                                             if dataset.kind == "unpaired_preference" else ""))
  by_prompt: dict[str, tuple[list[str], list[str]]] = {}
  for r in rows:
    by_prompt.setdefault(r["prompt"], ([], []))[0 if r["label"] else 1].append(r["completion"])
  out = []
  for prompt, (good, bad) in by_prompt.items():
    out += [{"prompt": prompt, "chosen": good[i % len(good)], "rejected": bad[i % len(bad)]}
            for i in range(max(len(good), len(bad)))] if good and bad else []
  if not out:
    raise UserError(f"{dataset.source}: no prompt has both a desirable and an undesirable completion (KTO pairs "
                    "them within a prompt)")
  left = sum(1 for good, bad in by_prompt.values() if not (good and bad))
  if left:
    print(f"{left} of {len(by_prompt)} prompts left out: their completions are all desirable or all undesirable")
  return out


def main(config: Config, workdir: Path):
  mesh = sharding.make_mesh(config.mesh)
  policy = rl.start_policy(config.policy, workdir, mesh)
  dataset = records.from_config(config.data)
  rows = records.as_text(dataset, policy.tokenizer)
  train, _ = records.split(rows, config.data.test_fraction)
  task = rl.prompt_file_task(dataclasses.replace(config.task, test_fraction=config.data.test_fraction),
                             tokenizer=policy.tokenizer, mesh=mesh, dataset=dataset)
  return rl.train_offline_dpo(config, pairs(dataset, train, config.dpo.kind), task, policy, workdir, mesh)
