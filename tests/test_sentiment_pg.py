"""sentiment_pg (critic-free RL on the trainer, a lexicon reward through the host) in --smoke mode."""

from pathlib import Path

import pytest

from rlhf_jax import logs, runs
from rlhf_jax.config import ConfigError

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "sentiment_pg.py"


@pytest.mark.network
def test_remax_smoke_trains_with_greedy_baselines(smoke_lm, tmp_path):
  runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path,
                      overrides=[f"policy.init_from={smoke_lm}", "rl.algorithm=remax", "pg.group_size=2",
                                                   f"task.reward=py:{__name__}:count_e"])
  train = logs.read_metrics(tmp_path, "train")
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  # ReMax's advantage is score - greedy score: nonzero somewhere, so the greedy path ran.
  assert any(r["advantage_std"] > 0 for r in train)
  assert all(name in train[0] for name in ("score", "kl", "kl_coef", "reward_total", "clipfrac", "eos_rate"))
  assert [r["step"] for r in logs.read_metrics(tmp_path, "eval")] == [0, 3, 6]
  assert (tmp_path / "reward_norm.json").is_file() and (tmp_path / "done.json").is_file()


def count_e(texts):
  """A reward the smoke LM's gibberish varies under (the lexicons score it all 0)."""
  return [float(t.count("e")) for t in texts]


def test_batch_must_hold_whole_groups():
  with pytest.raises((ConfigError, ValueError), match=r"multiple of the samples per prompt \(pg.group_size=3\)"):
    runs.resolve_config(runs.load_experiment(EXPERIMENT), True, ["pg.group_size=3"])
