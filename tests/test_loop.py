"""The host loop on a toy problem: checkpoints, resume, NaN guard and signals, without a model."""

import functools
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import logs, sharding
from rlhf_jax.checkpoint import CheckpointError, Checkpointer
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


def run(workdir, steps, *, nan_at=None, stop=None, checkpoint_every=3, evaluate=None):
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
                    mesh=mesh, tokens_per_step=4, stop=stop, evaluate=evaluate)


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


def _evaluate(state):
  return {"w": float(state["w"])}


def test_a_run_resumed_at_its_last_step_still_records_its_final_evaluation(tmp_path):
  run(tmp_path, 6, evaluate=_evaluate)
  evals = logs.read_metrics(tmp_path, "eval")
  assert [r["step"] for r in evals] == [0, 6]
  # Stopped after its last checkpoint and before its final evaluation: no record of it ...
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if json.loads(line) != evals[-1]))
  assert [r["step"] for r in logs.read_metrics(tmp_path, "eval")] == [0]
  run(tmp_path, 6, evaluate=_evaluate)  # ... the rerun evaluates the final state
  assert logs.read_metrics(tmp_path, "eval") == evals
  run(tmp_path, 6, evaluate=_evaluate)  # a rerun of a finished run: the same record, once
  assert logs.read_metrics(tmp_path, "eval") == evals


def test_a_torn_last_metrics_line_is_dropped_and_a_bad_line_named(tmp_path):
  run(tmp_path / "a", 10)
  run(tmp_path / "b", 6)
  path = tmp_path / "b" / "metrics.jsonl"
  intact = path.read_text()
  path.write_text(intact + '{"step": 7, "split": "tra')  # the process died mid-write
  with pytest.warns(UserWarning, match=r"metrics.jsonl:\d+: dropped a torn last line"):
    assert logs.read_metrics(tmp_path / "b", "train") == logs.read_metrics(tmp_path / "a", "train")[:6]
  with pytest.warns(UserWarning, match="torn last line"):
    run(tmp_path / "b", 10)  # resumes, and its records start on a line of their own
  assert logs.read_metrics(tmp_path / "b", "train") == logs.read_metrics(tmp_path / "a", "train")
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl:3: not a metrics record"):
    logs.read_metrics(tmp_path / "b")


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


def _flip_a_byte(step_dir):
  """A flipped bit on disk in the step's largest file (Orbax itself restores that silently)."""
  target = max((p for p in step_dir.rglob("*") if p.is_file() and p.name != "manifest.json"),
               key=lambda p: p.stat().st_size)
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0x10
  target.write_bytes(bytes(data))


def test_a_damaged_latest_checkpoint_is_named_kept_and_the_run_resumes_from_the_step_before(tmp_path, capsys):
  full = run(tmp_path / "a", 10)
  run(tmp_path / "b", 9)
  checkpoints = tmp_path / "b" / "checkpoints"
  assert (checkpoints / "9" / "manifest.json").is_file() and (checkpoints / "6" / "manifest.json").is_file()
  _flip_a_byte(checkpoints / "9")
  resumed = run(tmp_path / "b", 10)
  err = capsys.readouterr().err
  assert "checkpoint step 9" in err and "differ from its manifest" in err and "trying the step before it" in err
  assert float(resumed["w"]) == float(full["w"])  # from step 6, bitwise the unbroken run
  assert (checkpoints / "9.damaged-0").is_dir()  # kept, not deleted
  assert [r["step"] for r in logs.read_metrics(tmp_path / "b", "train")] == list(range(1, 11))


def test_a_checkpoint_that_cannot_be_restored_is_an_error_naming_its_step(tmp_path):
  run(tmp_path, 3)
  step_dir = tmp_path / "checkpoints" / "3"
  (step_dir / "manifest.json").unlink()  # as if saved before manifests, or stopped before writing one
  next(step_dir.glob("data/*.json")).write_text("")  # an emptied data-iterator file
  with pytest.raises(CheckpointError, match=r"step 3 .*no intact step.*restoring it failed \(JSONDecodeError.*"
                                            r"unreadable: 3/data/process_0-of-1.json"):
    run(tmp_path, 6)


def test_a_restored_state_with_non_finite_values_is_an_error(tmp_path):
  checkpointer = Checkpointer(tmp_path)
  state = {"w": jnp.array([1.0, jnp.nan])}
  checkpointer.save(1, state=state, rng=jax.random.key(0), config={})
  checkpointer.close()
  with pytest.raises(CheckpointError, match="step 1 .*non-finite"):
    Checkpointer(tmp_path).restore(1, abstract_state=jax.eval_shape(lambda: state))
