"""N runs in one compiled program (the purejaxrl pattern): seeds and numeric hyperparameters as a
batch axis.

A trainer's pure step `(state, batch, key, hp) -> (state, metrics)` becomes, under
`vmap_step`, a step over N stacked states, N keys and N hyperparameter sets that share one batch:
every array of the state, key and `hp` gains a leading axis of N, and so does every metric. Only
settings that change no shape can differ between runs (seed, learning rate, weight decay, KL
coefficient, clip range, DPO beta, ...); grids that change shapes, models or data are for
`rlhf-jax sweep`. Run i of a vmapped sweep is the run that would train alone from run i's
initial state, key and hyperparameters on the same batches (tests/test_vmapped.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp


def stack(trees: Sequence[Any]) -> Any:
  """[tree_0, ..., tree_{N-1}] -> one tree whose leaves have a leading axis of N."""
  if not trees:
    raise ValueError("stack: expected at least one tree")
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, i: int) -> Any:
  """Run i's slice of a stacked tree."""
  return jax.tree.map(lambda leaf: leaf[i], tree)


def stack_keys(keys: Sequence[jax.Array]) -> jax.Array:
  return jnp.stack(list(keys))


def vmap_step(step: Callable) -> Callable:
  """`step` over stacked (state, key, hp) with one shared batch: metrics come back stacked too."""
  return jax.vmap(step, in_axes=(0, None, 0, 0))


def vmap_init(init: Callable[[jax.Array], Any]) -> Callable[[jax.Array], Any]:
  """`init(key) -> state` over N keys: N states created in one program."""
  return jax.vmap(init)
