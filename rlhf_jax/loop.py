"""The host loop shared by trainers: resume, dispatch, log, evaluate, checkpoint, stop cleanly.

The loop never blocks on the device between log points: per-step metrics stay on device until a
flush (every `log_every` steps, before each checkpoint and at the end). The flush is also where a
non-finite loss is caught, so a state that produced NaN is never saved: the last good checkpoint
stays the latest one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import logs, sharding
from rlhf_jax.checkpoint import CheckpointError, Checkpointer
from rlhf_jax.config import check_range


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  steps: int = 2000
  log_every: int = 50
  eval_every: int = 500  # 0: evaluate only at the end
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  progress: bool = True  # a progress bar on stderr

  def __post_init__(self):
    check_range(self, "loop", "positive", "steps", "log_every", "checkpoint_every", "keep_checkpoints")
    check_range(self, "loop", ">= 0", "eval_every")


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss is NaN or infinite; the message names the step."""


_received_signals: list[int] = []  # every stopping signal this process received inside a loop


def note_signal(signum: int) -> None:
  """Records a stopping signal this process caught outside a loop: a composition experiment that
  forwarded it to the run it was waiting for (`sweep.run_all`) then exits unfinished, like that run."""
  _received_signals.append(signum)


def received_signal() -> int | None:
  """The first SIGTERM/SIGINT a training loop of this process caught, or None: `rlhf-jax run` then
  exits with 128 + its number (not 0), so a scheduler or a sweep knows the run is unfinished."""
  return _received_signals[0] if _received_signals else None


@contextlib.contextmanager
def stop_on_signals(event: threading.Event):
  """SIGTERM and SIGINT set `event` (the loop then saves and returns) instead of killing the run."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {}

  def handler(signum, frame):
    del frame
    print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint before exiting", flush=True)
    _received_signals.append(signum)
    event.set()

  for sig in (signal.SIGTERM, signal.SIGINT):
    previous[sig] = signal.signal(sig, handler)
  try:
    yield
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def abstract_state(init_fn: Callable[[], Any], shardings: Any) -> Any:
  """Shapes, dtypes and shardings of `init_fn()` without running it (what a restore needs)."""
  shapes = jax.eval_shape(init_fn)
  if isinstance(shardings, jax.sharding.Sharding):  # one sharding for every leaf
    shardings = jax.tree.map(lambda _: shardings, shapes)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


@dataclasses.dataclass
class _Pending:
  """Metrics of dispatched steps not yet fetched from the device."""
  steps: list[int] = dataclasses.field(default_factory=list)
  metrics: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)


def _restore_latest_good(checkpointer: Checkpointer, abstract: Any, data_iterator) -> tuple[Any, jax.Array, int]:
  """The newest step that restores intact; a damaged one is reported and the step before it tried
  (each restore puts the data iterator at its own step). None intact: the error of the newest."""
  errors = []
  for step in sorted(checkpointer.all_steps(), reverse=True):
    print(f"resuming from the checkpoint at step {step} in {checkpointer.directory}", flush=True)
    try:
      state, rng = checkpointer.restore(step, abstract_state=abstract, data_iterator=data_iterator)
    except CheckpointError as e:
      print(f"warning: {e}; trying the step before it", file=sys.stderr, flush=True)
      errors.append(e)
      continue
    for damaged in errors:  # the resumed run saves these steps again
      print(f"warning: kept the damaged step as {checkpointer.set_aside(damaged.step)}", file=sys.stderr, flush=True)
    return state, rng, step
  raise CheckpointError(errors[0].step, checkpointer.directory,
                        f"no intact step to resume from ({'; '.join(str(e) for e in errors)})") from errors[0]


def train_loop(*, workdir: str | Path, loop: LoopConfig, config: dict, init_fn: Callable[[], Any],
               state_shardings: Any, step_fn: Callable, data_iterator: Iterator[dict[str, np.ndarray]],
               hp: Any, rng: jax.Array, mesh: Mesh, tokens_per_step: int,
               evaluate: Callable[[Any], dict[str, float]] | None = None,
               stop: threading.Event | None = None, run_dirs: Sequence[Path] | None = None) -> Any:
  """Runs `step_fn(state, batch, rng, hp)` until `loop.steps`, resuming from `workdir` if it can.

  `init_fn` must be a jitted initializer with `out_shardings=state_shardings`; `data_iterator` a
  checkpointable grain iterator. Returns the final state (also saved). `stop` (set by SIGTERM /
  SIGINT, or by a caller) ends the run early after saving a checkpoint. `run_dirs`: the state holds
  len(run_dirs) vmapped runs on its leading axis (`rlhf_jax.vmapped`); their metrics, split row
  by row, go to one metrics stream per run dir, while the checkpoint holds them all.
  """
  workdir = Path(workdir)
  checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=loop.keep_checkpoints)
  stop = stop or threading.Event()
  start = checkpointer.latest_step()
  if start is None:
    state = init_fn()
    start = 0
  else:
    state, rng, start = _restore_latest_good(checkpointer, abstract_state(init_fn, state_shardings), data_iterator)
    # A run whose last checkpoint is its final step is evaluated again below: it may have stopped
    # between that checkpoint and its final evaluation (every process decides alike, from the
    # checkpoint alone); the record of an evaluation that did happen is dropped, not duplicated.
    if jax.process_index() == 0:
      for metrics_dir in run_dirs or [workdir]:
        logs.truncate_metrics(metrics_dir, start, drop_eval_at=start if start >= loop.steps else None)
  # Opened only after the truncation above, which replaces the file: a writer opened before it
  # would append to the replaced (unlinked) file and lose every record of the resumed run. In a
  # multi-host run only the first process writes metrics (they are global values).
  writer = (logs.MetricWriter(workdir, enabled=jax.process_index() == 0) if run_dirs is None else
            logs.StackedMetricWriter(run_dirs, enabled=jax.process_index() == 0))

  pending = _Pending()
  progress = None
  if loop.progress:
    from tqdm.auto import tqdm
    progress = tqdm(total=loop.steps, initial=start, unit="step", dynamic_ncols=True)
  last_time, last_step = time.perf_counter(), start

  def flush(step: int) -> None:
    nonlocal last_time, last_step
    fetched = jax.device_get(pending.metrics)
    for s, m in zip(pending.steps, fetched):
      loss = np.asarray(m["loss"])  # one per run when runs are vmapped
      if not np.isfinite(loss).all():
        latest = checkpointer.latest_step()
        where = "" if loss.ndim == 0 else f" in run(s) {np.flatnonzero(~np.isfinite(loss)).tolist()}"
        raise NonFiniteLossError(
            f"loss is {loss}{where} at step {s}; stopping. The last good checkpoint is step {latest} "
            f"in {checkpointer.directory}")
      writer.write(s, m, split="train")
    now = time.perf_counter()
    if pending.steps:
      tokens_per_s = tokens_per_step * (step - last_step) / max(now - last_time, 1e-9)
      writer.write(step, {"tokens_per_s": tokens_per_s}, split="perf")
      if progress is not None:  # advanced here, not on dispatch, so it shows finished steps
        progress.update(step - last_step)
        progress.set_postfix(loss=f"{float(np.mean(fetched[-1]['loss'])):.3f}", tok_s=f"{tokens_per_s:,.0f}")
    writer.flush()
    pending.steps.clear()
    pending.metrics.clear()
    last_time, last_step = now, step

  def save(step: int) -> None:
    flush(step)
    checkpointer.save(step, state=state, rng=rng, config=config, data_iterator=data_iterator)

  step = start
  try:
    if start == 0 and evaluate is not None:  # the baseline every later evaluation is read against
      writer.write(0, evaluate(state), split="eval")
    with stop_on_signals(stop):
      while step < loop.steps and not stop.is_set():
        batch = sharding.put_batch(next(data_iterator), mesh)
        state, metrics = step_fn(state, batch, rng, hp)
        step += 1
        pending.steps.append(step)
        pending.metrics.append(metrics)
        if step % loop.log_every == 0:
          flush(step)
        if evaluate is not None and loop.eval_every and step % loop.eval_every == 0 and step < loop.steps:
          flush(step)
          writer.write(step, evaluate(state), split="eval")
        if step % loop.checkpoint_every == 0:
          save(step)
      if step != checkpointer.latest_step():
        save(step)
      if not stop.is_set() and evaluate is not None and (step > start or start >= loop.steps > 0):
        writer.write(step, evaluate(state), split="eval")
  finally:
    checkpointer.close()
    writer.close()
    if progress is not None:
      progress.close()
  if stop.is_set():
    print(f"stopped at step {step}; the checkpoint is saved, run the same command to resume", flush=True)
  return state
