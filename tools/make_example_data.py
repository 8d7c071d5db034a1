"""Writes experiments/data/reviews_*.jsonl: small datasets in TRL's formats for the recipes' walk-through.

Short review openings ("The soup at the corner cafe was") with continuations of either sentiment,
from fixed word lists, so the files are the same on every run:

  reviews_prompts.jsonl       prompt                       (RL: ppo.py, grpo.py, eval)
  reviews_sft.jsonl           prompt, completion           (sft.py: positive continuations)
  reviews_chat_sft.jsonl      the same as conversations    (rendered by the model's chat template)
  reviews_preferences.jsonl   prompt, chosen, rejected     (dpo.py, reward_model.py: positive > negative)
  reviews_ratings.jsonl       prompt, completion, rating   (reward_model.py: 1..5)

  python tools/make_example_data.py experiments/data
"""

import itertools
import json
import random
import sys
from pathlib import Path

THINGS = ["soup at the corner cafe", "new science fiction film", "hotel by the station", "paperback I bought",
          "pizza from the market", "concert last night", "train to the coast", "museum downtown"]
OPENINGS = ["The {} was", "I thought the {} was", "Honestly, the {} was", "My friends said the {} was",
            "Overall the {} was", "For the price, the {} was"]
GOOD = [" wonderful, and I loved every minute of it.", " excellent: warm, friendly and well made.",
        " a delight. I would happily go back.", " great fun and worth every penny.",
        " lovely, better than I had hoped."]
BAD = [" awful, and I regretted it at once.", " terrible: cold, rude and badly made.",
       " a disappointment. I will not go back.", " dull and a waste of money.",
       " poor, worse than I had feared."]
MIXED = [" fine, nothing special.", " good in parts and weak in others."]


def rows(seed: int = 0):
  rng = random.Random(seed)
  prompts = [o.format(t) for t, o in itertools.product(THINGS, OPENINGS)]
  rng.shuffle(prompts)
  prompts = prompts[:48]
  out = {"prompts": [{"prompt": p} for p in prompts],
         "sft": [{"prompt": p, "completion": rng.choice(GOOD)} for p in prompts],
         "preferences": [{"prompt": p, "chosen": rng.choice(GOOD), "rejected": rng.choice(BAD)} for p in prompts]}
  out["chat_sft"] = [{"prompt": [{"role": "user", "content": f"Finish the review: {r['prompt']}"}],
                      "completion": [{"role": "assistant", "content": r["prompt"] + r["completion"]}]}
                     for r in out["sft"]]
  ratings = []
  for p in prompts:
    rating = rng.choice([1, 2, 3, 4, 5])
    text = rng.choice(BAD if rating <= 2 else MIXED if rating == 3 else GOOD)
    ratings.append({"prompt": p, "completion": text, "rating": rating})
  out["ratings"] = ratings
  return out


def main(folder: Path) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for name, data in rows().items():
    path = folder / f"reviews_{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    print(path, len(data))


if __name__ == "__main__":
  main(Path(sys.argv[1]))
