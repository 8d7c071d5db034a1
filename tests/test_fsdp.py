"""Sharding rules, parameters created on their shards, and FSDP / tensor-parallel training that
matches plain data parallelism (8 forced CPU devices)."""

import functools
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_jax import logs, runs, sharding
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, lm

CONFIG = ModelConfig(vocab_size=64, max_len=16, d_model=32, n_layers=2, n_heads=4)


def test_rules_by_hand():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
  rules = sharding.RULES["fsdp"]
  assert sharding.spec_for("params/h_0/attn/c_attn/kernel", (32, 96), mesh, rules) == P("fsdp", None)
  assert sharding.spec_for("opt_state/0/mu/wte/embedding", (64, 32), mesh, rules) == P("fsdp", None)
  assert sharding.spec_for("params/h_0/ln_1/scale", (32,), mesh, rules) == P()  # no rule: replicated
  assert sharding.spec_for("params/h_0/mlp/c_fc/kernel", (30, 8), mesh, rules) == P(None, None)  # 4 does not divide 30
  tp = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2, rules="fsdp_tensor"))
  rules = sharding.RULES["fsdp_tensor"]
  assert sharding.spec_for("params/h_1/attn/c_proj/kernel", (32, 32), tp, rules) == P("tensor", "fsdp")
  assert sharding.spec_for("params/h_1/mlp/c_fc/bias", (128,), tp, rules) == P("tensor")
  with pytest.raises(ValueError, match="mesh.rules"):
    sharding.MeshConfig(rules="zero3")
  with pytest.raises(ValueError, match="does not divide"):
    sharding.make_mesh(sharding.MeshConfig(fsdp=3))
  sharding.check_batch_divisible(8, mesh)
  with pytest.raises(ValueError, match="data x fsdp"):
    sharding.check_batch_divisible(4, mesh)


def _train(mesh_config: sharding.MeshConfig, steps: int = 3):
  mesh = sharding.make_mesh(mesh_config)
  model = Transformer(CONFIG)
  optim = common.OptimConfig(learning_rate=1e-2, warmup_steps=1, weight_decay=0.1)
  tx = common.make_optimizer(optim)
  init, shardings = common.sharded_init(functools.partial(common.init_state, model=model, tx=tx), mesh,
                                        mesh_config.rules, jax.random.key(0))
  state = init(jax.random.key(0))
  step = lm.jit_train_step(mesh, model=model, tx=tx, optim=optim, total_steps=steps, state_shardings=shardings)
  rng = np.random.default_rng(0)
  losses = []
  for i in range(steps):
    tokens = rng.integers(0, CONFIG.vocab_size, (8, 17)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((8, 16), np.int32)}
    state, metrics = step(state, sharding.put_batch(batch, mesh), jax.random.key(1), optim.hparams())
    losses.append(float(metrics["loss"]))
  return state, losses


def test_fsdp_creates_shards_and_trains_like_data_parallel():
  base, base_losses = _train(sharding.MeshConfig(data=8, rules="replicated"))
  # fsdp_tensor splits over both parameter axes; the fsdp-only rules are checked by hand above and
  # in the slow pretraining test.
  for mesh_config in (sharding.MeshConfig(data=2, fsdp=2, tensor=2, rules="fsdp_tensor"),):
    state, losses = _train(mesh_config)
    kernel = state.params["h_0"]["mlp"]["c_fc"]["kernel"]
    # Each device holds its shard only: 1/fsdp of the rows (and 1/tensor of the columns).
    assert kernel.addressable_shards[0].data.shape == (32 // mesh_config.fsdp, 128 // mesh_config.tensor)
    mu = state.opt_state.inner_state[1][0].mu["h_0"]["mlp"]["c_fc"]["kernel"]
    assert mu.sharding.spec == kernel.sharding.spec
    np.testing.assert_allclose(losses, base_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4),
                 state.params, base.params)


@pytest.mark.slow  # sharded restore is also exercised by the multi-host resume test (slow too)
def test_pretrain_with_fsdp_resumes_on_shards(tmp_path, cache_dir):
  experiment = Path(__file__).resolve().parents[1] / "experiments" / "pretrain_tiny.py"
  overrides = ["mesh.data=2", "mesh.fsdp=4", "loop.steps=4", "loop.checkpoint_every=2", "loop.log_every=1"]
  runs.run_experiment(experiment, smoke=True, workdir=tmp_path, overrides=overrides)
  unbroken = logs.read_metrics(tmp_path, "eval")[-1]
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # restart from step 2's sharded checkpoint
  runs.run_experiment(experiment, smoke=True, workdir=tmp_path, overrides=overrides)
  assert logs.read_metrics(tmp_path, "eval")[-1]["loss"] == pytest.approx(unbroken["loss"], abs=1e-5)
  assert [r["step"] for r in logs.read_metrics(tmp_path, "train")] == [1, 2, 3, 4]


def count_e(texts):
  """A reward the smoke LM's gibberish varies under (lexicons score it all 0, and whitening would
  then blow the sharded run's 1e-8 float noise up into random advantages)."""
  return [float(t.count("e")) for t in texts]


@pytest.mark.slow  # two PPO runs; the default run stays under 10 minutes on 2 cores
def test_ppo_with_fsdp_matches_data_parallel(smoke_lm, tmp_path):
  experiment = Path(__file__).resolve().parents[1] / "experiments" / "sentiment_ppo.py"
  base = [f"policy.init_from={smoke_lm}", "loop.steps=2", "loop.eval_every=0", f"task.reward=py:{__name__}:count_e"]
  runs.run_experiment(experiment, smoke=True, workdir=tmp_path / "dp", overrides=base + ["mesh.data=8"])
  runs.run_experiment(experiment, smoke=True, workdir=tmp_path / "fsdp", overrides=base + ["mesh.data=2", "mesh.fsdp=4"])
  dp, fsdp = logs.read_metrics(tmp_path / "dp", "train"), logs.read_metrics(tmp_path / "fsdp", "train")
  assert len(dp) == len(fsdp) == 2
  for a, b in zip(dp, fsdp):
    assert a["score"] != 0.0
    for name in ("score", "kl", "value_loss", "approx_kl"):
      assert a[name] == pytest.approx(b[name], rel=1e-3, abs=1e-5), name
