"""The overoptimization reproduction (gold RM -> proxies -> best-of-n and PPO -> fits) in --smoke mode,
and the stages it plans. The points, fits and tables: test_overoptimization_fits.py."""

import json
import math
from pathlib import Path

import pytest

from rlhf_jax import report, runs, sweep

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "overoptimization.py"


def _eval_records(run: Path) -> list[dict]:
  return [r for r in report.load_run(run).records if r.get("split") == "eval"]


@pytest.mark.slow
@pytest.mark.network
def test_overoptimization_smoke(smoke_lm, tmp_path):
  result = runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=[f"init_from={smoke_lm}"])
  # Two proxy sizes: d64 is the smoke LM's own trunk, d32 pretrains its own.
  assert list(result["proxies"]) == ["d32,prompts=48", "d64,prompts=48"]
  assert sweep.status(tmp_path / "lm_d32") == "done" and not (tmp_path / "lm_d64").exists()
  gold = f"rm:{(tmp_path / 'gold').absolute()}"
  for name in ("d32,prompts=48,seed=0", "d64,prompts=48,seed=0"):
    proxy = json.loads((tmp_path / "proxy" / name / "config.json").read_text())
    assert proxy["labeler"]["scorer"] == gold and proxy["labeler"]["beta"] == math.inf
    # The proxy's trunk is its size's LM, with that LM's tokenizer; the policy is the smoke LM.
    trunk = tmp_path / "lm_d32" if name.startswith("d32") else smoke_lm
    assert json.loads((tmp_path / "proxy" / name / "model.json").read_text())["d_model"] == (32 if trunk != smoke_lm else 64)
    assert (tmp_path / "proxy" / name / "tokenizer.model").read_bytes() == (trunk / "tokenizer.model").read_bytes()
    for method in ("bon", "ppo"):
      config = json.loads((tmp_path / method / name / "config.json").read_text())
      assert config["task"]["reward"] == f"rm:{(tmp_path / 'proxy' / name).absolute()}"
      assert config["task"]["gold"] == gold and config["task"]["reward_with_prompt"] is True
    assert [r["step"] for r in _eval_records(tmp_path / "bon" / name)] == [1, 2, 4]
    assert [r["step"] for r in _eval_records(tmp_path / "ppo" / name)] == [0, 2, 4, 6]  # ppo_eval_every=2
  entry = result["proxies"]["d64,prompts=48"]
  assert entry["bon"]["d"][0] == 0.0 and entry["bon"]["gold_gain"][0] == 0.0  # best-of-1 is the policy
  assert entry["bon"]["d"][2] == pytest.approx(math.sqrt(math.log(4) - 0.75))
  assert entry["ppo"]["fit"]["n"] == 4 and math.isfinite(entry["ppo"]["fit"]["alpha"])
  assert (tmp_path / "overoptimization.png").is_file()
  assert "| d64,prompts=48 |" in (tmp_path / "overoptimization.md").read_text()


def test_the_stages_and_their_runs(tmp_path):
  """What the experiment asks of each stage, without running one (the smoke run above runs them)."""
  module = runs.load_experiment(EXPERIMENT)
  config = module.get_config(smoke=False)
  lm = tmp_path / "lm"
  proxies = module._proxies(config, {64: lm, 128: tmp_path / "lm_d128"})
  assert list(proxies) == ["d64,prompts=512", "d64,prompts=4096", "d128,prompts=512", "d128,prompts=4096"]
  assert [r.name for r in proxies["d128,prompts=512"]] == [f"d128,prompts=512,seed={s}" for s in (0, 1, 2)]
  assert proxies["d128,prompts=512"][1].overrides == (
      f"reward.init_from={tmp_path / 'lm_d128'}", "policy.num_prompts=512", "labeler.seed=1", "labeler.beta=inf",
      "seed=1")
  gold, proxy, bon, ppo = module.stages(config, tmp_path, lm, proxies)
  assert [s.name for s in (gold, proxy, bon, ppo)] == ["reward_fine_foods.py", "reward_simulated.py", "best_of_n.py",
                                                      "sentiment_ppo.py"]
  assert gold.root == tmp_path and [r.name for r in gold.runs] == ["gold"]
  assert proxy.root == tmp_path / "proxy" and len(proxy.runs) == 12
  assert f"labeler.scorer=rm:{tmp_path / 'gold'}" in proxy.base
  # Best-of-n and PPO run once against each proxy run, with its name and seed.
  assert bon.runs == ppo.runs and [r.name for r in bon.runs] == [r.name for r in proxy.runs]
  assert bon.runs[4].overrides == (f"task.reward=rm:{tmp_path / 'proxy' / 'd64,prompts=4096,seed=1'}", "seed=1")
  assert "bon.n=1,2,4,8,16,32,64" in bon.base and "fine_tune=false" in bon.base
  assert {"ppo.adaptive_kl=false", "ppo.kl_coef=0.01", "loop.steps=100", "loop.eval_every=5",
          f"task.gold=rm:{tmp_path / 'gold'}", "task.reward_with_prompt=true"} <= set(ppo.base)
