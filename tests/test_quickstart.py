"""The quickstart (pretrain -> feedback -> reward model -> PPO -> report) and sentiment_ppo, in --smoke mode."""

import dataclasses
import io
import json
from pathlib import Path

import pytest
import safetensors.numpy

from rlhf_jax import cli, logs, runs
from rlhf_jax.config import ConfigError
from rlhf_jax.eval import harness

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, cache_dir, module_saved_figures):
  workdir = tmp_path_factory.mktemp("quickstart")
  result = runs.run_experiment(ROOT / "experiments" / "quickstart.py", smoke=True, workdir=workdir)
  return workdir, result


@pytest.mark.network
def test_quickstart_smoke_writes_the_report(quickstart, module_saved_figures):
  workdir, result = quickstart
  assert json.loads((workdir / "report.json").read_text()) == result
  assert "Quickstart report" in (workdir / "report.md").read_text()
  ppo = result["ppo"]
  assert ppo["updates"] > 0 and ppo["kl_after"] >= -0.5  # a k1 estimate on few samples may dip below 0
  reward_eval = logs.read_metrics(workdir / "reward", "eval")[-1]  # the reward stage's final evaluation
  assert result["reward_model"]["heldout_accuracy_vs_noiseless_labeler"] == reward_eval["accuracy_vs_noiseless"]
  assert result["samples"] and all(s["prompt"] for s in result["samples"])
  # The PPO stage scored with the learned reward model and logged every metric of an update.
  train = logs.read_metrics(workdir / "ppo", "train")
  assert len(train) == 4
  # reward_kl.png plots the PPO stage's own records: reward and KL of each update, and its evaluations.
  panels = {ax.get_title(): ax.lines[0] for ax in module_saved_figures[workdir / "reward_kl.png"].axes}
  evals = logs.read_metrics(workdir / "ppo", "eval")
  for title, records, name in (("train score", train, "score"), ("train kl", train, "kl"),
                               ("eval gold_score", evals, "gold_score"), ("eval kl", evals, "kl")):
    assert list(panels[title].get_xdata()) == [r["step"] for r in records], title
    assert list(panels[title].get_ydata()) == [r[name] for r in records], title
  for name in ("score", "kl", "kl_coef", "entropy", "response_length", "eos_rate", "clipfrac", "approx_kl",
               "value_loss", "explained_variance"):
    assert all(name in r for r in train), name
  config = json.loads((workdir / "ppo" / "config.json").read_text())
  assert config["task"]["reward"] == f"rm:{workdir / 'reward'}"
  norm = json.loads((workdir / "ppo" / "reward_norm.json").read_text())
  assert norm["std"] > 0 and norm["samples"] > 0


@pytest.mark.network
def test_sentiment_ppo_scores_with_the_reward_model_on_device_and_starts_the_value_from_it(quickstart, tmp_path):
  workdir, _ = quickstart
  ppo = ROOT / "experiments" / "sentiment_ppo.py"
  rm_value = [f"policy.init_from={workdir / 'lm'}", f"task.reward=rm:{workdir / 'reward'}",
              "task.reward_with_prompt=true", "rl.value_init=reward", "loop.steps=1"]
  runs.run_experiment(ppo, smoke=True, workdir=tmp_path / "e", overrides=rm_value)
  train = logs.read_metrics(tmp_path / "e", "train")
  assert len(train) == 1 and train[0]["score_raw"] != 0.0 and train[0]["explained_variance"] < 1.0
  with pytest.raises(ValueError, match="rl.value_init=reward needs a reward model"):
    runs.run_experiment(ppo, smoke=True, workdir=tmp_path / "c", overrides=[
        f"policy.init_from={workdir / 'lm'}", "task.reward=afinn", "rl.value_init=reward"])
  with pytest.raises(ConfigError, match="kl_estimator"):
    runs.run_experiment(ppo, smoke=True, workdir=tmp_path / "d", overrides=["ppo.kl_estimator=k9"])


@pytest.mark.network
def test_eval_harness_sample_and_chat_on_the_quickstart_policies(quickstart, tmp_path, monkeypatch, capsys,
                                                                 module_saved_figures):
  workdir, result = quickstart
  lm, ppo = workdir / "lm", workdir / "ppo"
  # The quickstart evaluated its pretrained and its tuned policy with the harness.
  assert {p.name for p in (workdir / "eval").iterdir()} >= {"eval.json", "eval.md", "eval.png", "h2h.db"}
  report = json.loads((workdir / "eval" / "eval.json").read_text())
  rm = f"rm:{workdir / 'reward'}"
  # eval.png: each run's mean score under the first scorer against its KL, as eval.json has them.
  first = next(iter(report["runs"][0]["scores"]))
  against_kl = module_saved_figures[workdir / "eval" / "eval.png"].axes[-1]
  assert [c.get_offsets().tolist() for c in against_kl.collections] == [
      [[r["kl"], r["scores"][first]["mean"]]] for r in report["runs"]]
  base, tuned = report["runs"]
  assert base["kl"] == 0.0 and tuned["reference"] == str(lm)  # the PPO run's reference is the LM it started from
  for r in (base, tuned):
    assert set(r["scores"]) == {"vader", "textblob", "afinn", rm} and len(r["scores"]["vader"]["values"]) == 16
    assert 0 <= r["distinct_1"] <= 1 and r["perplexity"] > 1
    assert r["response_length"] == 8 or r["eos_rate"] > 0
  h2h = report["head_to_head"][0]
  assert {"vader", rm, "vader(beta=5,tie=0.05,seed=0)", "people"} <= set(h2h)
  assert h2h["vader"]["n"] == 16 and h2h["people"]["n"] == 0  # nobody has judged the pairs yet
  assert h2h["pairs_in_store"] > 0 and "Win rate of the pretrained policy" in (workdir / "report.md").read_text()
  assert result["eval"]["head_to_head"][0]["vader"] == h2h["vader"]
  # The same seed gives the same numbers; a fluency LM adds the samples' perplexity under it.
  quickstart_module = runs.load_experiment(ROOT / "experiments" / "quickstart.py")
  hc = dataclasses.replace(quickstart_module.eval_config(quickstart_module.get_config(smoke=True), workdir),
                           store="", fluency_lm=str(lm))
  harness.evaluate([lm, ppo], hc, tmp_path / "again")
  again = json.loads((tmp_path / "again" / "eval.json").read_text())["runs"]
  assert all(r.pop("fluency_perplexity") > 1 for r in again)
  assert again == report["runs"]

  assert cli.main(["sample", str(ppo), "--prompt", "The movie was", "--max-new-tokens", "6", "--num", "2"]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert len(lines) == 2 and lines[0]["model"] == f"{ppo}@4" and lines[0]["prompt"] == "The movie was"
  monkeypatch.setattr("sys.stdin", io.StringIO("The food was\nAnd then\n\n"))
  assert cli.main(["chat", str(ppo), "--max-new-tokens", "6"]) == 0
  transcript = capsys.readouterr().out
  assert transcript.count("> ") == 3 and "(step 4)" in transcript
  assert cli.main(["chat", str(tmp_path / "missing")]) == 2
  assert "config.json not found" in capsys.readouterr().err
  # The tuned policy leaves without its training state (PPO's value model and optimizer).
  assert cli.main(["export", str(ppo), str(tmp_path / "exported")]) == 0
  flat = safetensors.numpy.load_file(str(tmp_path / "exported" / "params.safetensors"))
  assert "h_0/attn/c_attn/kernel" in flat and not any(k.startswith(("value", "policy")) for k in flat)
  assert (tmp_path / "exported" / "model.safetensors").is_file()  # and in the GPT-2 layout
