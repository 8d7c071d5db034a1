"""Start from a trained language model: its tokenizer, model config and parameters from a workdir.

Later stages (reward models, value heads, RL policies) begin from a pretrained or SFT run. The
workdir of such a run holds `config.json` (with `model` and `optim` sections), `tokenizer.model`
and Orbax checkpoints; this module reads them back into this process's mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from rlhf_jax import config as config_lib
from rlhf_jax import sharding
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.loop import abstract_state
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common
from rlhf_jax.tokenizers import SentencePieceTokenizer


@dataclasses.dataclass(frozen=True)
class Pretrained:
  model: ModelConfig
  params: Any
  tokenizer: SentencePieceTokenizer
  step: int


def load(workdir: str | Path, mesh: Mesh, step: int | None = None) -> Pretrained:
  """The latest (or given) checkpoint of an LM run in `workdir`, replicated over `mesh`."""
  workdir = Path(workdir)
  saved = workdir / "config.json"
  if not saved.is_file():
    raise FileNotFoundError(f"{saved} not found: expected the workdir of a finished or running LM run "
                            "(e.g. from experiments/pretrain_tiny.py)")
  config = json.loads(saved.read_text())
  for section in ("model", "optim"):
    if section not in config:
      raise ValueError(f"{saved} has no {section!r} section: expected the config of an LM run")
  model_config = config_lib.from_dict(ModelConfig, config["model"])
  optim = config_lib.from_dict(common.OptimConfig, config["optim"])
  checkpointer = Checkpointer(workdir / "checkpoints")
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
    model, tx = Transformer(model_config), common.make_optimizer(optim)
    init = functools.partial(common.init_state, jax.random.key(0), model=model, tx=tx)
    state, _ = checkpointer.restore(step, abstract_state=abstract_state(init, sharding.replicated(mesh)))
  finally:
    checkpointer.close()
  tokenizer = SentencePieceTokenizer.load(workdir / "tokenizer.model")
  return Pretrained(model=model_config, params=state.params, tokenizer=tokenizer, step=step)


def init_with_trunk(key: jax.Array, lm_params: Any, *, model: Transformer,
                    tx: optax.GradientTransformation) -> common.TrainState:
  """Train state of a scalar-head model (reward or value) whose trunk starts from `lm_params`.

  Only the head is freshly initialised (with `model.config.scalar_head_init`); jit this with
  `out_shardings` like any initializer.
  """
  if not model.config.scalar_head:
    raise ValueError("init_with_trunk needs a model with scalar_head=True")
  if "scalar_head" in lm_params:
    raise ValueError("these parameters already have a scalar head")
  fresh = common.init_state(key, model=model, tx=tx)
  params = {**lm_params, "scalar_head": fresh.params["scalar_head"]}
  return common.TrainState(step=fresh.step, params=params, opt_state=tx.init(params))
