"""The host loop on a toy problem: checkpoints, resume, NaN guard and signals, without a model."""

import functools
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import logs, sharding
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.loop import LoopConfig, NonFiniteLossError, train_loop


def toy_step(state, batch, key, hp, *, nan_at=None):
  """Gradient descent on (w - mean(batch))^2, plus noise from the key: every input matters."""
  noise = jax.random.normal(jax.random.fold_in(key, state["step"]), ())
  target = jnp.mean(batch["x"])
  loss = (state["w"] - target) ** 2
  if nan_at is not None:
    loss = jnp.where(state["step"] + 1 == nan_at, jnp.nan, loss)
  w = state["w"] - hp * 2 * (state["w"] - target) + 1e-3 * noise
  return {"step": state["step"] + 1, "w": w}, {"loss": loss}


def run(workdir, steps, *, nan_at=None, stop=None, checkpoint_every=3):
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1))
  repl = sharding.replicated(mesh)
  init_fn = jax.jit(lambda: {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros(())}, out_shardings=repl)
  data = grain.MapDataset.range(1000).shuffle(seed=0).repeat().batch(4).map(
      lambda i: {"x": i.astype(np.float32)}).to_iter_dataset(grain.ReadOptions(num_threads=0))
  step_fn = jax.jit(functools.partial(toy_step, nan_at=nan_at))
  loop = LoopConfig(steps=steps, log_every=2, eval_every=0, checkpoint_every=checkpoint_every,
                    keep_checkpoints=10, progress=False)
  return train_loop(workdir=workdir, loop=loop, config={"toy": True}, init_fn=init_fn, state_shardings=repl,
                    step_fn=step_fn, data_iterator=iter(data), hp=jnp.float32(0.1), rng=jax.random.key(0),
                    mesh=mesh, tokens_per_step=4, stop=stop)


def test_resume_matches_uninterrupted(tmp_path):
  full = run(tmp_path / "a", 10)
  # Crash-like interruption: the first invocation only reaches step 6 (its last checkpoint) ...
  run(tmp_path / "b", 6)
  resumed = run(tmp_path / "b", 10)  # ... and the second resumes there.
  assert int(resumed["step"]) == 10
  assert float(full["w"]) == float(resumed["w"])  # bitwise
  train_a = logs.read_metrics(tmp_path / "a", "train")
  train_b = logs.read_metrics(tmp_path / "b", "train")
  assert [r["step"] for r in train_b] == list(range(1, 11))  # each step logged exactly once
  assert [r["loss"] for r in train_a] == [r["loss"] for r in train_b]
  assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[0])["split"] == "train"


def test_stop_event_saves_and_returns(tmp_path):
  import threading
  stop = threading.Event()
  stop.set()  # as if SIGTERM arrived before the first step
  state = run(tmp_path, 10, stop=stop)
  assert int(state["step"]) == 0
  assert Checkpointer(tmp_path / "checkpoints").latest_step() == 0


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  with pytest.raises(NonFiniteLossError, match="loss is nan at step 5.*last good checkpoint is step 3"):
    run(tmp_path, 10, nan_at=5)
  ckpt = Checkpointer(tmp_path / "checkpoints")
  assert ckpt.all_steps() == [3]
  # The good checkpoint restores, and a fixed run continues from it.
  state = run(tmp_path, 8)
  assert int(state["step"]) == 8
