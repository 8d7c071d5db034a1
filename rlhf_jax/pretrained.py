"""Start from a trained model: its tokenizer, model config and parameters from a workdir.

Later stages (reward models, value heads, RL policies) begin from a pretrained or SFT run, and
simulated labelers may use a trained reward model as their "gold" taste. The workdir of such a run
holds `config.json` (with `optim` and, unless `model.json` says otherwise, `model` sections),
`tokenizer.model` and Orbax checkpoints; this module reads them back into this process's mesh.
A run whose model config is not its config's `model` section (a reward model grafted onto a
pretrained LM) writes the model it trained to `model.json` with `save_model_config`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors.numpy
from jax.sharding import Mesh

from rlhf_jax import config as config_lib
from rlhf_jax import sharding
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.data import rows
from rlhf_jax.data.corpora import atomic_write_bytes
from rlhf_jax.errors import UserError
from rlhf_jax.loop import abstract_state
from rlhf_jax.models import gpt2
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, reward
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
  model_file = workdir / "model.json"
  if model_file.is_file():
    config["model"] = json.loads(model_file.read_text())
  for section in ("model", "optim"):
    if section not in config:
      raise UserError(f"{saved} has no {section!r} section: expected the config of a model run")
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


def policy_checkpoints(workdir: str | Path) -> Path:
  """Where a run keeps its policy's checkpoints: `checkpoints/`, or an online DPO run's last round's."""
  workdir = Path(workdir)
  if (workdir / "checkpoints").is_dir():
    return workdir / "checkpoints"
  rounds = sorted((p for p in workdir.glob("round_*") if p.name[6:].isdigit() and (p / "checkpoints").is_dir()),
                  key=lambda p: int(p.name[6:]))
  if rounds:
    return rounds[-1] / "checkpoints"
  raise FileNotFoundError(f"no checkpoints in {workdir} (checkpoints/ or round_K/checkpoints/): expected the "
                          "workdir of a trained policy (pretrain_tiny, sentiment_ppo, dpo_sentiment, ...)")


def load_trained_policy(workdir: str | Path, mesh: Mesh, step: int | None = None) -> Pretrained:
  """The policy of any run, replicated over `mesh`: an LM run's parameters, a PPO run's
  `params["policy"]`, an online DPO run's last round. Its model config is `model.json` (or the
  config's `model` section); parameters that do not fit it are an error naming the first misfit."""
  workdir = Path(workdir)
  saved = workdir / "config.json"
  if not saved.is_file():
    raise FileNotFoundError(f"{saved} not found: expected a run's workdir")
  model_file = workdir / "model.json"
  model_data = (json.loads(model_file.read_text()) if model_file.is_file()
                else json.loads(saved.read_text()).get("model"))
  if model_data is None:
    raise UserError(f"{workdir} has neither model.json nor a 'model' section in config.json: "
                     "expected the workdir of a model run")
  model_config = config_lib.from_dict(ModelConfig, model_data)
  if not (workdir / "tokenizer.model").is_file():
    raise FileNotFoundError(f"{workdir / 'tokenizer.model'} not found: the run's tokenizer is needed to sample")
  checkpointer = Checkpointer(policy_checkpoints(workdir))
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in checkpointer.all_steps():
      raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {checkpointer.directory}")
    state = checkpointer.restore_saved_tree(step, sharding.replicated(mesh))
  finally:
    checkpointer.close()
  params = state["params"]
  params = params.get("policy", params)
  expected = jax.eval_shape(functools.partial(Transformer(model_config).init, jax.random.key(0)),
                            jnp.zeros((1, 1), jnp.int32))["params"]
  got = {sharding.path_str(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
  for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
    name = sharding.path_str(path)
    if got.get(name) != leaf.shape:
      raise UserError(f"{checkpointer.directory}/{step}: parameter {name} is "
                       f"{'missing' if name not in got else got[name]}, expected {leaf.shape} for the model in "
                       f"{model_file if model_file.is_file() else saved}")
  return Pretrained(model=model_config, params=params, tokenizer=SentencePieceTokenizer.load(workdir / "tokenizer.model"),
                    step=step)


def load_policy(init_from: str, workdir: str | Path, mesh: Mesh, *,
                pretrain: Callable[[Path], Any]) -> tuple[Pretrained, Path]:
  """The starting policy of an experiment and its workdir: `init_from`, or (init_from="") a model
  that `pretrain(workdir=<workdir>/policy)` trains first (rerunning it resumes). The tokenizer is copied
  into `workdir` so the experiment's workdir is self-contained."""
  policy_dir = Path(init_from) if init_from else Path(workdir) / "policy"
  if not init_from:
    pretrain(workdir=policy_dir)
  policy = load(policy_dir, mesh)
  (Path(workdir) / "tokenizer.model").write_bytes((policy_dir / "tokenizer.model").read_bytes())
  return policy, policy_dir


def save_model_config(workdir: str | Path, model: ModelConfig) -> None:
  """Record the model a run trains (read back by `load` in place of the config's `model`)."""
  (Path(workdir) / "model.json").write_text(json.dumps(dataclasses.asdict(model), indent=2) + "\n")


class RewardModelScorer:
  """A trained reward model as a `labelers.Scorer`: the "gold reward model" labeler.

  Gao et al. (2022) label synthetic comparisons with a large "gold" reward model in place of
  people; any reward-model workdir (e.g. `experiments/reward_fine_foods.py`, trained on real human
  ratings) plays that part here. Texts are tokenized with the run's tokenizer, cut to `seq_len`
  tokens (default: the model's max_len, as in training) and scored in jitted batches of a fixed
  size (the last batch padded), so scoring never recompiles. An empty text is scored as a lone EOS.

  `normalize(texts)` returns a scorer whose rewards on `texts` (e.g. reference-policy samples)
  have mean 0 and std 1 (Ziegler et al. 2019), folded into the head's parameters.
  """

  def __init__(self, workdir: str | Path, mesh: Mesh | None = None, *, seq_len: int | None = None,
               batch_size: int = 64, step: int | None = None, _loaded: Pretrained | None = None):
    self.workdir = Path(workdir)
    self.mesh = mesh if mesh is not None else sharding.make_mesh(sharding.MeshConfig())
    self.loaded = _loaded or load(workdir, self.mesh, step)
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


def restart_state(params: Any, *, tx: optax.GradientTransformation) -> common.TrainState:
  """A fresh train state (step 0, new optimizer state) around trained `params`: fine-tuning again."""
  return common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


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


@dataclasses.dataclass(frozen=True)
class ScalarModelStart:
  """Where a scalar-head model (reward model, classifier) starts: tokenizer, model, initializer."""
  tokenizer: SentencePieceTokenizer
  model: Transformer
  init_fn: Any  # no-argument jitted initializer of the TrainState, created on its shards
  state_shardings: Any  # of that TrainState, by the sharding rules asked for


def start_scalar_model(workdir: str | Path, *, init_from: str, fallback: ModelConfig, texts: list[str],
                       mesh: Mesh, tx: optax.GradientTransformation, key: jax.Array,
                       rules: str = "replicated") -> ScalarModelStart:
  """A scalar-head model grafted onto the LM in `init_from`, or (init_from="") a fresh one.

  With `init_from`, the LM's tokenizer is copied into `workdir` and its trunk into the model; the
  head is new (`scalar_head_init="reward"`). Without, a tokenizer is trained on `texts` (or
  reused from `workdir` on resume) and `fallback` is initialised at random. Either way the model
  config is written to `workdir/model.json`, so the trained model loads back with `load`. The
  state is created on the shards `sharding.RULES[rules]` gives it (FSDP with `rules="fsdp"`).
  """
  workdir = Path(workdir)
  if init_from:
    start = load(init_from, mesh)
    tokenizer = start.tokenizer
    (workdir / "tokenizer.model").write_bytes((Path(init_from) / "tokenizer.model").read_bytes())
    model = Transformer(dataclasses.replace(start.model, scalar_head=True, scalar_head_init="reward"))
    init, shardings = common.jit_sharded(functools.partial(init_with_trunk, model=model, tx=tx), mesh, rules,
                                         key, start.params)
    init_fn = functools.partial(init, key, start.params)
  else:
    path = workdir / "tokenizer.model"
    tokenizer = (SentencePieceTokenizer.load(path) if path.exists() else
                 SentencePieceTokenizer.train(texts, fallback.vocab_size, path))
    model = Transformer(dataclasses.replace(fallback, scalar_head=True, scalar_head_init="reward"))
    init_fn, shardings = common.sharded_init(mesh, key, model=model, tx=tx, rules=rules)
  save_model_config(workdir, model.config)
  return ScalarModelStart(tokenizer=tokenizer, model=model, init_fn=init_fn, state_shardings=shardings)


def export(workdir: str | Path, out: str | Path, *, step: int | None = None) -> list[str]:
  """Writes a run's model for use elsewhere, without its training state; returns the file names.

  Always: `params.safetensors` (float32 arrays under flat names such as `h_0/attn/c_attn/kernel`),
  `model.json` (the `ModelConfig`) and `tokenizer.model`. For a plain language model also
  `model.safetensors` + `config.json` in Hugging Face's GPT-2 layout (`models.gpt2`), which
  `transformers.GPT2LMHeadModel.from_pretrained(out)` loads.
  """
  workdir, out = Path(workdir), Path(out)
  run = load_trained_policy(workdir, sharding.make_mesh(), step)  # an LM, reward model, PPO or DPO policy
  params = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), run.params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  out.mkdir(parents=True, exist_ok=True)
  atomic_write_bytes(out / "params.safetensors", safetensors.numpy.save(flat, metadata={"step": str(run.step)}))
  save_model_config(out, run.model)
  shutil.copyfile(workdir / "tokenizer.model", out / "tokenizer.model")
  written = ["params.safetensors", "model.json", "tokenizer.model"]
  if not run.model.scalar_head and not run.model.n_preferences:
    gpt2.save_hf(out, run.model, params, eos_token_id=run.tokenizer.eos_id)
    written += ["model.safetensors", "config.json"]
  return written
