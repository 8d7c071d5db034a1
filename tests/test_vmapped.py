"""Vmapped runs: run i of N stacked runs trains exactly as run i alone (step level and experiment level)."""

import dataclasses
import functools
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_dpo_step import LM as DPO_LM
from test_dpo_step import _pairs

from rlhf_jax import logs, runs, sharding, trained, vmapped
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, dpo, lm

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(vocab_size=64, max_len=16, d_model=32, n_layers=2, n_heads=4)


def test_vmapped_lm_steps_match_runs_trained_alone():
  model = Transformer(TINY)
  optim = common.OptimConfig(learning_rate=3e-3, warmup_steps=1)
  tx = common.make_optimizer(optim)
  mesh = sharding.make_mesh()
  step = functools.partial(lm.train_step, model=model, tx=tx, warmup_steps=1, total_steps=4, min_lr_ratio=0.1)
  init = functools.partial(common.init_state, model=model, tx=tx)
  seeds, lrs = (0, 1, 2), (1e-3, 3e-3, 1e-2)
  init_keys = [jax.random.key(s) for s in seeds]
  keys = [jax.random.key(100 + s) for s in seeds]
  hps = [dataclasses.replace(optim, learning_rate=lr).hparams() for lr in lrs]
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    tokens = rng.integers(0, 64, (8, 17)).astype(np.int32)
    batches.append(sharding.put_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                                       "loss_mask": np.ones((8, 16), np.float32)}, mesh))

  repl = sharding.replicated(mesh)  # what the steps return: the first call is the only compile
  stacked = jax.jit(vmapped.vmap_init(init), out_shardings=repl)(vmapped.stack_keys(init_keys))
  many = common.jit_step(vmapped.vmap_step(step), mesh)
  stacked_losses = []
  for batch in batches:
    stacked, metrics = many(stacked, batch, vmapped.stack_keys(keys), vmapped.stack(hps))
    stacked_losses.append(np.asarray(metrics["loss"]))
  assert stacked_losses[0].shape == (3,)

  one = common.jit_step(step, mesh)
  for i in range(3):
    state = jax.jit(init, out_shardings=repl)(init_keys[i])
    for t, batch in enumerate(batches):
      state, metrics = one(state, batch, keys[i], hps[i])
      np.testing.assert_allclose(stacked_losses[t][i], metrics["loss"], rtol=1e-5)
    # Batched and unbatched matmuls round differently, and Adam's first steps magnify that on
    # parameters whose gradient is ~0 (biases): hence the absolute tolerance (parameters ~1e-2).
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
                 vmapped.unstack(stacked, i).params, state.params)
  assert len({float(loss) for loss in stacked_losses[-1]}) == 3  # the runs did differ


def test_vmapped_pretraining_slices_equal_single_runs_load_and_resume(tmp_path, smoke_lm):
  """Two learning rates in one program; run 1 equals pretrain_tiny at that rate (the shared
  `smoke_lm` run: pretrain_tiny --smoke, 5 steps at its 3e-3; checkpoint and log cadence change no
  number), every run directory is a loadable LM run with its own metrics, and a stopped sweep
  resumes every run."""
  overrides = ["vmap.learning_rates=1e-3,3e-3", "vmap.seeds=0", "loop.steps=5", "loop.checkpoint_every=2",
               "loop.log_every=2"]
  runs.run_experiment(ROOT / "experiments" / "pretrain_sweep.py", smoke=True, workdir=tmp_path / "sweep",
                      overrides=overrides)
  names = sorted(p.name for p in (tmp_path / "sweep" / "runs").iterdir())
  assert names == ["optim.learning_rate=0.001,seed=0", "optim.learning_rate=0.003,seed=0"]
  alone = smoke_lm
  run_dir = tmp_path / "sweep" / "runs" / names[1]
  got, want = logs.read_metrics(run_dir, "train"), logs.read_metrics(alone, "train")
  assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 6))
  for a, b in zip(got, want):
    for name in ("loss", "grad_norm", "learning_rate"):
      assert a[name] == pytest.approx(b[name], rel=1e-5), name
  eval_a, eval_b = logs.read_metrics(run_dir, "eval")[-1], logs.read_metrics(alone, "eval")[-1]
  assert eval_a["perplexity"] == pytest.approx(eval_b["perplexity"], rel=1e-4)
  assert logs.read_metrics(tmp_path / "sweep" / "runs" / names[0], "train")[-1]["loss"] != got[-1]["loss"]
  mesh = sharding.make_mesh()
  loaded, single = trained.load(run_dir, mesh), trained.load(alone, mesh)
  assert loaded.step == single.step == 5
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
               jax.device_get(loaded.params), jax.device_get(single.params))

  # As if stopped after step 4: the rerun resumes both runs from the stacked checkpoint.
  sweep_dir = tmp_path / "sweep"
  before = {n: logs.read_metrics(sweep_dir / "runs" / n) for n in names}
  shutil.rmtree(sweep_dir / "checkpoints" / "5")
  for n in names:
    shutil.rmtree(sweep_dir / "runs" / n / "checkpoints")
  runs.run_experiment(ROOT / "experiments" / "pretrain_sweep.py", smoke=True, workdir=sweep_dir, overrides=overrides)
  for n in names:
    after = logs.read_metrics(sweep_dir / "runs" / n)
    assert [r for r in after if r["split"] != "perf"] == [r for r in before[n] if r["split"] != "perf"], n
    assert trained.load(sweep_dir / "runs" / n, mesh).step == 5


def test_vmapped_dpo_betas_match_runs_trained_alone():
  """A beta sweep of DPO from one reference: three betas in one program, each as if alone."""
  model = Transformer(DPO_LM)
  optim = common.OptimConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0)
  tx = common.make_optimizer(optim)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  start = common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  ref_fn = jax.jit(functools.partial(dpo.reference_logprobs, params, model=model))
  step = functools.partial(dpo.dpo_step, model=model, tx=tx, kind="dpo", warmup_steps=0, total_steps=10,
                           min_lr_ratio=1.0)
  hps = [dpo.DPOConfig(beta=b).hparams(optim) for b in (0.05, 0.1, 0.5)]
  batches = [{**b, **ref_fn(b)} for b in map(_pairs, range(3))]
  key = jax.random.key(1)
  many, one = jax.jit(vmapped.vmap_step(step)), jax.jit(step)
  stacked = vmapped.stack([start] * 3)
  for batch in batches:
    stacked, metrics = many(stacked, batch, vmapped.stack_keys([key] * 3), vmapped.stack(hps))
  for i, hp in enumerate(hps):
    state = start
    for batch in batches:
      state, alone = one(state, batch, key, hp)
    np.testing.assert_allclose(metrics["loss"][i], alone["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_margin"][i], alone["reward_margin"], rtol=1e-4, atol=1e-6)
  assert len({round(float(x), 6) for x in metrics["loss"]}) == 3

