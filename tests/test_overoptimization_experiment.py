"""The overoptimization reproduction (gold RM -> proxies -> best-of-n and PPO -> fits) in --smoke mode."""

import json
import math
from pathlib import Path

import pytest

from rlhf_jax import cli, report, sweep

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "overoptimization.py"


def _eval_records(run: Path) -> list[dict]:
  return [r for r in report.load_run(run).records if r.get("split") == "eval"]


@pytest.mark.slow
@pytest.mark.network
def test_overoptimization_smoke(smoke_lm, tmp_path):
  result = cli.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=[f"init_from={smoke_lm}"])
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
      assert config["reward"]["scorer"] == f"rm:{(tmp_path / 'proxy' / name).absolute()}"
    assert [r["step"] for r in _eval_records(tmp_path / "bon" / name)] == [1, 2, 4]
    assert [r["step"] for r in _eval_records(tmp_path / "ppo" / name)] == [0, 2, 4, 6]  # ppo_eval_every=2
  entry = result["proxies"]["d64,prompts=48"]
  assert entry["bon"]["d"][0] == 0.0 and entry["bon"]["gold_gain"][0] == 0.0  # best-of-1 is the policy
  assert entry["bon"]["d"][2] == pytest.approx(math.sqrt(math.log(4) - 0.75))
  assert entry["ppo"]["fit"]["n"] == 4 and math.isfinite(entry["ppo"]["fit"]["alpha"])
  assert (tmp_path / "overoptimization.png").is_file()
  assert "| d64,prompts=48 |" in (tmp_path / "overoptimization.md").read_text()


def _run(path: Path, evals: list[tuple[int, float, float, float]]) -> report.RunRecords:
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"seed": 0}))
  (path / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "split": "eval", "kl": kl, "gold_score": g, "proxy_score": p}) + "\n"
      for s, kl, g, p in evals))
  return report.load_run(path)


def test_gains_are_over_each_runs_first_evaluation_and_tables_name_missing_peaks(tmp_path):
  module = cli.load_experiment(EXPERIMENT)
  a = _run(tmp_path / "a", [(0, 0.0, 0.5, 1.0), (3, -0.2, 0.7, 2.0), (6, 4.0, 0.4, 3.0)])
  b = _run(tmp_path / "b", [(0, 0.01, 0.1, -1.0), (3, 1.0, 0.3, 0.0)])
  d, gold, proxy = module.gold_gains([a, b])
  assert d.tolist() == pytest.approx([0.0, 0.0, 2.0, 0.1, 1.0])  # a KL estimate below 0 counts as 0
  assert gold.tolist() == pytest.approx([0.0, 0.2, -0.1, 0.0, 0.2])
  assert proxy.tolist() == pytest.approx([0.0, 1.0, 2.0, 0.0, 1.0])
  fits = {"bon": {"alpha": 2.0, "beta": 1.0, "r2": 0.9, "n": 3}, "ppo": {"alpha": 1.0, "beta": -0.5, "r2": 0.5, "n": 3}}
  entry = {"proxy_accuracy": 0.75, **{m: {"d": [0.0, 1.0], "gold_gain": [0.0, 0.3], "proxy_gain": [0, 1],
                                          "fit": fit} for m, fit in fits.items()}}
  text = module.markdown({"proxies": {"d64,prompts=512": entry}})
  assert "| d64,prompts=512 | 0.750 | bon | 2 | 1.00 | 0.300 | 2.000 | 1.000 | 0.90 | 1 |" in text  # d* = 2 / (2 * 1)
  assert "| ppo | 2 | 1.00 | 0.300 | 1.000 | -0.500 | 0.50 | none (beta <= 0) |" in text
