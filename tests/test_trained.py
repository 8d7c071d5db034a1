"""A trained model on disk (`rlhf_jax.trained`): read back from any run's workdir, with errors that
name what is missing, and exported for use elsewhere."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy

from rlhf_jax import cli, sharding, trained
from rlhf_jax.errors import UserError
from rlhf_jax.models import gpt2
from rlhf_jax.models.transformer import ModelConfig, Transformer


def logits_of(config: ModelConfig, params, tokens) -> np.ndarray:
  return np.asarray(jax.jit(Transformer(config).apply)({"params": params}, tokens).logits_BxTxV)


def test_trained_load_errors_name_what_is_missing(smoke_lm, tmp_path):
  mesh = sharding.make_mesh()
  run = trained.load(smoke_lm, mesh)
  assert run.step == 5 and "wte" in run.params
  with pytest.raises(FileNotFoundError, match="config.json"):
    trained.load(tmp_path, mesh)
  (tmp_path / "config.json").write_text((smoke_lm / "config.json").read_text())
  (tmp_path / "tokenizer.model").write_bytes((smoke_lm / "tokenizer.model").read_bytes())
  with pytest.raises(FileNotFoundError, match="no checkpoints"):
    trained.load(tmp_path, mesh)
  # A model.json that does not fit the checkpoint: the error names the parameter and the file.
  shutil.copytree(smoke_lm / "checkpoints", tmp_path / "checkpoints")
  model = json.loads((smoke_lm / "config.json").read_text())["model"]
  (tmp_path / "model.json").write_text(json.dumps({**model, "d_model": 2 * model["d_model"]}))
  with pytest.raises(ValueError, match=r"parameter h_0/attn/c_attn/bias is \(192,\), expected \(384,\) .*model\.json"):
    trained.load(tmp_path, mesh)


def test_a_named_checkpoint_folder_and_step_are_read(smoke_lm, tmp_path):
  mesh = sharding.make_mesh()
  shutil.copytree(smoke_lm / "checkpoints", tmp_path / "round_0" / "checkpoints")
  run = trained.load(smoke_lm, mesh, checkpoints=tmp_path / "round_0" / "checkpoints")
  latest = trained.load(smoke_lm, mesh)
  assert run.step == latest.step
  jax.tree.map(np.testing.assert_array_equal, run.params, latest.params)
  with pytest.raises(FileNotFoundError, match="no checkpoint 7 in"):
    trained.load(smoke_lm, mesh, step=7)


def test_export_a_trained_run(smoke_lm, tmp_path):
  assert cli.main(["export", str(smoke_lm), str(tmp_path / "out")]) == 0
  run = trained.load(smoke_lm, sharding.make_mesh())
  config, params = gpt2.load_hf(tmp_path / "out")
  assert config == dataclasses.replace(run.model, init_std=config.init_std)
  flat = safetensors.numpy.load_file(str(tmp_path / "out" / "params.safetensors"))
  np.testing.assert_array_equal(flat["h_0/attn/c_attn/kernel"], np.asarray(run.params["h_0"]["attn"]["c_attn"]["kernel"]))
  tokens = np.arange(12, dtype=np.int32)[None]
  np.testing.assert_array_equal(logits_of(config, params, tokens), logits_of(run.model, run.params, tokens))
  assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (smoke_lm / "tokenizer.model").read_bytes()
  assert cli.main(["export", str(tmp_path / "nothing"), str(tmp_path / "out2")]) == 2


def test_a_hugging_face_folder_loads_as_step_0_with_its_tokenizer(tmp_path):
  from rlhf_jax.models import hf
  from rlhf_jax.tokenizers import HFTokenizer
  folder = Path(__file__).parent / "data" / "tiny_hf" / "qwen2"
  run = trained.load(folder, sharding.make_mesh())
  config, params = hf.load_hf(folder)
  assert run.step == 0 and run.model == config and isinstance(run.tokenizer, HFTokenizer)
  jax.tree.map(np.testing.assert_array_equal, run.params, params)
  trained.copy_tokenizer(folder, tmp_path)  # what load_policy does for a run started from the folder
  assert sorted(p.name for p in tmp_path.iterdir()) == ["chat_template.jinja", "tokenizer.json",
                                                        "tokenizer_config.json"]
  assert trained.load_tokenizer(tmp_path).encode("Hello there") == run.tokenizer.encode("Hello there")


@pytest.mark.slow
def test_ppo_from_a_hugging_face_folder_exports_back_to_its_layout(tmp_path):
  from rlhf_jax import runs
  from rlhf_jax.models import hf
  folder = Path(__file__).parent / "data" / "tiny_hf" / "qwen2"
  runs.run_experiment(Path(__file__).parents[1] / "experiments" / "sentiment_ppo.py", smoke=True,
                      workdir=tmp_path / "ppo", overrides=[f"policy.init_from={folder}"])
  assert cli.main(["export", str(tmp_path / "ppo"), str(tmp_path / "out")]) == 0
  assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
  run = trained.load(tmp_path / "ppo", sharding.make_mesh())
  config, params = hf.load_hf(tmp_path / "out")
  assert config == run.model
  jax.tree.map(np.testing.assert_array_equal, params, run.params)


def test_hf_names_resolve_to_a_cached_hub_snapshot_and_otherwise_say_how_to_work_offline(tmp_path):
  folder = Path(__file__).parent / "data" / "tiny_hf" / "qwen2"
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = tmp_path / "hub" / "models--acme--tiny"
  shutil.copytree(folder, repo / "snapshots" / commit)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(commit)
  path = trained.resolve("hf:acme/tiny", cache_dir=tmp_path / "hub", offline=True)
  assert path == repo / "snapshots" / commit
  assert trained.resolve(str(folder)) == folder  # a path is a path
  run = trained.load(path, sharding.make_mesh())
  assert run.model.arch == "llama" and run.step == 0
  with pytest.raises(UserError, match=r"hf:acme/other: cannot fetch it from the Hugging Face Hub \(.*\)\. Without a "
                                      r"network, download .*huggingface-cli download acme/other --local-dir DIR"):
    trained.resolve("hf:acme/other", cache_dir=tmp_path / "hub", offline=True)
