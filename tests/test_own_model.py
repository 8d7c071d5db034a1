"""Your own model and data: every stage's recipe started from a Hugging Face folder by `init_from`
and fed a dataset file in TRL's formats (experiments/data/reviews_*.jsonl).

SFT on demonstrations, a reward model on preference pairs and on ratings, PPO and GRPO with LoRA
on prompts, DPO on pairs and KTO on unpaired rows, each in its recipe's --smoke mode, on the tiny
checkpoints of each architecture that transformers wrote (tests/data/tiny_hf). The default run
takes each of the main stages once, on a different architecture each; the rest of the grid is slow.
"""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import cli, logs, runs, sharding, trained
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.models import hf, lora

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "tiny_hf"
ARCHS = ("llama", "qwen2", "qwen3", "mistral")
DATA = ROOT / "experiments" / "data"
STAGES = {  # stage -> (recipe, settings with {folder})
    "sft": ("sft.py", ("init_from={folder}", "lora.rank=4", f"data.path={DATA / 'reviews_sft.jsonl'}",
                       "data.test_fraction=0.2")),
    "reward": ("reward_model.py", ("init_from={folder}", "reward.lora.rank=4",
                                   f"data.path={DATA / 'reviews_preferences.jsonl'}")),
    "reward_ratings": ("reward_model.py", ("init_from={folder}", "reward.lora.rank=4",
                                           f"data.path={DATA / 'reviews_ratings.jsonl'}")),
    "ppo_lora": ("ppo.py", ("policy.init_from={folder}", "policy.lora.rank=4")),
    "grpo_lora": ("grpo.py", ("policy.init_from={folder}", "policy.lora.rank=4")),
    "dpo": ("dpo.py", ("policy.init_from={folder}",)),
}
DEFAULT = {("sft", "qwen2"), ("reward", "mistral"), ("grpo_lora", "llama"), ("dpo", "qwen3")}


def _run(stage: str, arch: str, workdir: Path) -> Path:
  experiment, settings = STAGES[stage]
  runs.run_experiment(ROOT / "experiments" / experiment, smoke=True, workdir=workdir,
                      overrides=[s.format(folder=FIXTURES / arch) for s in settings])
  return workdir


def _saved_params(workdir: Path):
  checkpointer = Checkpointer(workdir / "checkpoints")
  try:
    return checkpointer.restore_saved_tree(checkpointer.latest_step(), sharding.replicated(sharding.make_mesh()))["params"]
  finally:
    checkpointer.close()


def _check_stage(stage: str, arch: str, workdir: Path) -> None:
  evals, train = logs.read_metrics(workdir, "eval"), logs.read_metrics(workdir, "train")
  mesh = sharding.make_mesh()
  if stage == "dpo":
    # The first step's policy is its reference (the folder's model): every margin is 0, the loss log 2.
    assert abs(train[0]["loss"] - np.log(2)) < 1e-5 and abs(train[0]["reward_margin"]) < 1e-5
    config, base = hf.load_hf(FIXTURES / arch)
    loaded = trained.load(workdir, mesh)
    assert loaded.model == config
    assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(base))) > 0
    return
  # Every other stage trains LoRA adapters: the base weights in the checkpoint are the folder's,
  # the adapters moved, and the run loads back as the merged model.
  _, base = hf.load_hf(FIXTURES / arch)
  saved = _saved_params(workdir)
  policy = saved.get("policy", saved)
  adapters = {sharding.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(policy) if lora.is_adapter(p)}
  assert adapters and any(np.abs(x).max() > 0 for name, x in adapters.items() if name.endswith("lora_b"))
  jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in lora.base(policy).items() if k != "scalar_head"},
               base)
  settings = lora.LoraConfig(**json.loads((workdir / "lora.json").read_text()))
  loaded = trained.load(workdir, mesh)
  jax.tree.map(np.testing.assert_array_equal, loaded.params, lora.merge(policy, settings))
  if stage == "sft":
    assert evals[-1]["loss"] < evals[0]["loss"]  # validation loss falls
  elif stage.startswith("reward"):
    assert loaded.model.scalar_head
    assert np.mean([m["loss"] for m in train[-2:]]) < np.mean([m["loss"] for m in train[:2]])
  else:  # RL: the run exports back to the folder's layout as the merged policy
    out = workdir.parent / f"{workdir.name}_export"
    assert cli.main(["export", str(workdir), str(out)]) == 0
    config, params = hf.load_hf(out)
    assert config == loaded.model
    jax.tree.map(np.testing.assert_array_equal, params, loaded.params)


@pytest.mark.parametrize("stage,arch", [
    pytest.param(stage, arch, marks=() if (stage, arch) in DEFAULT else pytest.mark.slow)
    for stage in STAGES for arch in ARCHS])
def test_each_stage_starts_from_a_hugging_face_folder(stage, arch, tmp_path):
  _check_stage(stage, arch, _run(stage, arch, tmp_path / stage))


@pytest.mark.slow
def test_kto_trains_on_unpaired_rows(tmp_path):
  pairs = [json.loads(line) for line in (DATA / "reviews_preferences.jsonl").read_text().splitlines()]
  unpaired = tmp_path / "unpaired.jsonl"
  unpaired.write_text("".join(json.dumps({"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}) + "\n"
                              for p in pairs for side in ("chosen", "rejected")))
  runs.run_experiment(ROOT / "experiments" / "dpo.py", smoke=True, workdir=tmp_path / "kto", overrides=[
      f"policy.init_from={FIXTURES / 'qwen2'}", f"data.path={unpaired}", "dpo.kind=kto"])
  train = logs.read_metrics(tmp_path / "kto", "train")
  assert len(train) >= 2 and all(np.isfinite(m["loss"]) for m in train)
  with pytest.raises(Exception, match="trains on preference rows"):
    runs.run_experiment(ROOT / "experiments" / "dpo.py", smoke=True, workdir=tmp_path / "dpo", overrides=[
        f"policy.init_from={FIXTURES / 'qwen2'}", f"data.path={unpaired}"])


@pytest.mark.slow
def test_sft_on_conversations_packs_and_resumes_where_an_unbroken_run_would_be(tmp_path, capsys):
  # The fixture's 64 positions cannot hold a ChatML conversation: the same weights with more
  # (rotary positions have no table to outgrow).
  folder = tmp_path / "qwen2_long"
  shutil.copytree(FIXTURES / "qwen2", folder)
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 256}))
  settings = [f"init_from={folder}", f"data.path={DATA / 'reviews_chat_sft.jsonl'}", "data.seq_len=192",
              "data.test_fraction=0.2", "loop.checkpoint_every=4"]
  runs.run_experiment(ROOT / "experiments" / "sft.py", smoke=True, workdir=tmp_path / "a", overrides=settings)
  evals = logs.read_metrics(tmp_path / "a", "eval")
  assert evals[-1]["loss"] < evals[0]["loss"]
  # Take the run back to its step-4 checkpoint and rerun it: it ends where the unbroken run ended.
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "8")
  (tmp_path / "b" / "done.json").unlink()
  capsys.readouterr()
  runs.run_experiment(ROOT / "experiments" / "sft.py", smoke=True, workdir=tmp_path / "b", overrides=settings)
  assert "resuming from the checkpoint at step 4" in capsys.readouterr().out  # with the packer's state
  assert logs.read_metrics(tmp_path / "b", "train") == logs.read_metrics(tmp_path / "a", "train")
