"""Reward models: starting one on a pretrained LM's trunk, and scoring texts with a trained one.

`start_scalar_model` grafts a fresh scalar head onto an LM run's trunk (or initialises a model at
random) for the reward-model and classifier experiments; `RewardModelScorer` makes any trained
reward model's workdir a `scorers.Scorer` (`rm:WORKDIR`), the "gold reward model" of simulated
labelers and a reward for RL on the host (`rewards.tokens.RewardModelReward` scores on the device).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import sharding, trained
from rlhf_jax.data import rows
from rlhf_jax.errors import UserError
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, reward
from rlhf_jax.tokenizers import SentencePieceTokenizer


class RewardModelScorer:
  """A trained reward model as a `scorers.Scorer`: the "gold reward model" labeler.

  Gao et al. (2022) label synthetic comparisons with a large "gold" reward model in place of
  people; any reward-model workdir (e.g. `experiments/reward_fine_foods.py`, trained on real human
  ratings) plays that part here. Texts are tokenized with the run's tokenizer, cut to `seq_len`
  tokens (default: the model's max_len, as in training) and scored in jitted batches of a fixed
  size (the last batch padded), so scoring never recompiles. An empty text is scored as a lone EOS.

  `normalize(texts)` returns a scorer whose rewards on `texts` (e.g. reference-policy samples)
  have mean 0 and std 1 (Ziegler et al. 2019), folded into the head's parameters.
  """

  def __init__(self, workdir: str | Path, mesh: Mesh | None = None, *, seq_len: int | None = None,
               batch_size: int = 64, step: int | None = None, _loaded: trained.TrainedModel | None = None):
    self.workdir = Path(workdir)
    self.mesh = mesh if mesh is not None else sharding.make_mesh(sharding.MeshConfig())
    self.loaded = _loaded or trained.load(workdir, self.mesh, step)
    if not self.loaded.model.scalar_head:
      raise UserError(f"{workdir}: expected a reward model (a model with scalar_head=True), got a language model")
    self.seq_len = seq_len or self.loaded.model.max_len
    if self.seq_len > self.loaded.model.max_len:
      raise UserError(f"seq_len={self.seq_len} exceeds the reward model's max_len={self.loaded.model.max_len}")
    self.batch_size = batch_size
    self._score = jax.jit(functools.partial(reward.rewards, model=Transformer(self.loaded.model)))

  @property
  def name(self) -> str:
    return f"rm:{self.workdir}@{self.loaded.step}"

  def score(self, texts) -> np.ndarray:
    tok = self.loaded.tokenizer
    ids = [t or [tok.eos_id] for t in tok.encode_batch(list(texts))]
    out = []
    for start in range(0, len(ids), self.batch_size):
      chunk = ids[start:start + self.batch_size]
      chunk = chunk + [[tok.eos_id]] * (self.batch_size - len(chunk))  # fixed shape: one compile
      tokens, mask = rows.pad_rows(chunk, self.seq_len, tok.pad_id)
      batch = sharding.put_batch({"tokens": tokens, "mask": mask}, self.mesh)
      out.append(np.asarray(self._score(self.loaded.params, batch["tokens"], batch["mask"])))
    scores = np.concatenate(out)[:len(ids)] if out else np.zeros(0)
    return scores.astype(np.float32)

  def normalize(self, texts) -> "RewardModelScorer":
    scores = self.score(texts).astype(np.float64)
    params = reward.normalize_head(self.loaded.params, float(scores.mean()), float(scores.std()))
    loaded = dataclasses.replace(self.loaded, params=params)
    return RewardModelScorer(self.workdir, self.mesh, seq_len=self.seq_len, batch_size=self.batch_size,
                             _loaded=loaded)


@dataclasses.dataclass(frozen=True)
class ScalarModelStart:
  """Where a scalar-head model (reward model, classifier) starts: tokenizer, model, initializer."""
  tokenizer: SentencePieceTokenizer
  model: Transformer  # with LoRA, the adapted module
  init_fn: Any  # no-argument jitted initializer of the TrainState, created on its shards
  state_shardings: Any  # of that TrainState, by the sharding rules asked for
  tx: common.Optimizer  # with LoRA, training the adapters and the head only


def start_scalar_model(workdir: str | Path, *, init_from: str, fallback: ModelConfig, texts: list[str],
                       mesh: Mesh, optim: common.OptimConfig, key: jax.Array, rules: str = "replicated",
                       adapters: lora.LoraConfig = lora.LoraConfig(), heads: int = 1) -> ScalarModelStart:
  """A scalar-head model grafted onto the LM in `init_from`, or (init_from="") a fresh one.

  With `init_from`, the LM's tokenizer is copied into `workdir` and its trunk into the model; the
  head is new (`scalar_head_init="reward"`); with `adapters.rank` set, the trunk is frozen and
  LoRA adapters of its projections train with the head. Without, a tokenizer is trained on `texts`
  (or reused from `workdir` on resume) and `fallback` is initialised at random. Either way the model
  config is written to `workdir/model.json` (and the adapters' to `lora.json`), so the trained
  model loads back with `trained.load`. The state is created on the shards `sharding.RULES[rules]`
  gives it (FSDP with `rules="fsdp"`). `heads` > 1: one output per rubric criterion.
  """
  workdir = Path(workdir)
  if adapters.rank and not init_from:
    raise UserError("LoRA adapters (lora.rank) need a trained trunk to adapt: set the reward model's init_from")
  tx = common.make_optimizer(optim, lora.trainable(also=r"^scalar_head/") if adapters.rank else None)
  if adapters.rank:
    start = trained.load(trained.resolve(init_from), mesh)
    trained.copy_tokenizer(trained.resolve(init_from), workdir)
    model = Transformer(dataclasses.replace(start.model, scalar_head=True, scalar_head_init="reward",
                                          scalar_heads=heads))
    # The head `init_with_trunk` gives, initialized alone (the rest of the fresh model compiled away).
    head = jax.jit(lambda k: model.init(k, jnp.zeros((1, 1), jnp.int32))["params"]["scalar_head"])(key)
    model = lora.adapt(model, adapters)
    params = lora.add_adapters(model, {**start.params, "scalar_head": head}, jax.random.fold_in(key, 1))
    init, shardings = common.sharded_init(functools.partial(common.restart_state, tx=tx), mesh, rules, params)
    trained.save_model_config(workdir, model.config, adapters)
    return ScalarModelStart(tokenizer=start.tokenizer, model=model, init_fn=functools.partial(init, params),
                            state_shardings=shardings, tx=tx)
  if init_from:
    init_from = str(trained.resolve(init_from))
    start = trained.load(init_from, mesh)
    tokenizer = start.tokenizer
    trained.copy_tokenizer(init_from, workdir)
    model = Transformer(dataclasses.replace(start.model, scalar_head=True, scalar_head_init="reward",
                                          scalar_heads=heads))
    init, shardings = common.sharded_init(functools.partial(common.init_with_trunk, model=model, tx=tx), mesh,
                                          rules, key, start.params)
    init_fn = functools.partial(init, key, start.params)
  else:
    path = workdir / "tokenizer.model"
    tokenizer = (SentencePieceTokenizer.load(path) if path.exists() else
                 SentencePieceTokenizer.train(texts, fallback.vocab_size, path))
    model = Transformer(dataclasses.replace(fallback, scalar_head=True, scalar_head_init="reward",
                                          scalar_heads=heads))
    init, shardings = common.sharded_init(functools.partial(common.init_state, model=model, tx=tx), mesh, rules, key)
    init_fn = functools.partial(init, key)
  trained.save_model_config(workdir, model.config)
  return ScalarModelStart(tokenizer=tokenizer, model=model, init_fn=init_fn, state_shardings=shardings, tx=tx)
