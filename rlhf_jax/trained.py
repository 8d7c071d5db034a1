"""A trained model on disk: read back from a run's workdir, and written out for use elsewhere.

Later stages (reward models, value heads, RL policies) begin from a pretrained or SFT run, reward
models score for RL and for simulated labelers, and `rlhf-jax sample/chat/export` serve any run's
policy. A run's workdir holds `config.json` (its experiment's config, whose `model` section is the
model unless `model.json` says otherwise), its tokenizer (`tokenizer.model`, or a Hugging Face
`tokenizer.json`) and Orbax checkpoints; `load` reads the model back into this process's mesh,
whichever trainer wrote it. A Hugging Face model folder (Llama, Qwen2, Qwen3, Mistral or GPT-2:
`config.json`, safetensors, `tokenizer.json`) loads the same way, as step 0, and so does
`hf:ORG/NAME[@REVISION]`, fetched from the Hub when (and only when) a setting names it. A run whose model is not its
config's `model` section (a reward model grafted onto a pretrained LM, a PPO policy) records the
model it trained with `save_model_config`, and a run that trained LoRA adapters records their
settings in `lora.json`: `load` merges them into the base weights, so what every later stage reads
is a plain model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from jax.sharding import Mesh

from rlhf_jax import config as config_lib
from rlhf_jax import files, sharding
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.errors import UserError
from rlhf_jax.models import gpt2, hf, lora
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.tokenizers import HFTokenizer, SentencePieceTokenizer, Tokenizer


# A run's tokenizer: our sentencepiece model, or a Hugging Face tokenizer with its config and template.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  model: ModelConfig
  params: Any
  tokenizer: Tokenizer
  step: int  # of the checkpoint it was read from (0 for a Hugging Face folder)


def load_tokenizer(folder: str | Path) -> Tokenizer:
  """The tokenizer in `folder`: `tokenizer.model` (sentencepiece) or `tokenizer.json` (Hugging Face)."""
  folder = Path(folder)
  if (folder / "tokenizer.model").is_file():
    return SentencePieceTokenizer.load(folder / "tokenizer.model")
  if (folder / "tokenizer.json").is_file():
    return HFTokenizer(folder)
  raise FileNotFoundError(f"{folder}: no tokenizer.model or tokenizer.json (the run's tokenizer is needed to "
                          "encode and sample)")


def copy_tokenizer(source: str | Path, target: str | Path) -> None:
  """Copies the tokenizer files of `source` into `target`, so a run's workdir is self-contained."""
  found = [name for name in TOKENIZER_FILES if (Path(source) / name).is_file()]
  if not found:
    raise FileNotFoundError(f"{source}: no tokenizer.model or tokenizer.json to copy")
  for name in found:
    files.atomic_write_bytes(Path(target) / name, (Path(source) / name).read_bytes())


# What a model folder needs from the Hub: configs, safetensors, tokenizer and chat template.
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


def resolve(name: str | Path, *, cache_dir: str | Path | None = None, offline: bool = False) -> Path:
  """The folder `name` names: a path as it is, or `hf:ORG/NAME[@REVISION]` fetched from the Hugging
  Face Hub into huggingface_hub's cache (only its configs, safetensors and tokenizer; a cached
  snapshot is reused without asking the network when `offline`). Nothing is fetched unless named so."""
  name = str(name)
  if not name.startswith("hf:"):
    return Path(name)
  repo, _, revision = name[3:].partition("@")
  try:
    from huggingface_hub import snapshot_download
    return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES, cache_dir=cache_dir,
                                  local_files_only=offline))
  except Exception as e:  # no network, an unknown or gated repo, a missing revision: all end the same way
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"{name}: cannot fetch it from the Hugging Face Hub ({reason}). Without a network, download the "
                    f"folder elsewhere (`huggingface-cli download {repo} --local-dir DIR`) and name DIR "
                    "instead") from None


def is_hf_folder(folder: str | Path) -> bool:
  """Whether `folder` is a Hugging Face model folder (a transformers config.json), not a run's workdir."""
  config = Path(folder) / "config.json"
  if not config.is_file() or (Path(folder) / "checkpoints").is_dir():
    return False
  return "model_type" in json.loads(config.read_text())


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


def load(workdir: str | Path, mesh: Mesh, step: int | None = None, *,
         checkpoints: str | Path | None = None, combine_heads: bool = True) -> TrainedModel:
  """The model a run trained, replicated over `mesh`: an LM's or a reward model's parameters, a PPO
  run's `params["policy"]`, an online DPO run's last round; the latest checkpoint or `step` (of the
  folder `checkpoints`, default `policy_checkpoints(workdir)`). Its model config is `model.json`
  (or the config's `model` section); parameters that do not fit it are an error naming the first
  misfit."""
  workdir = resolve(workdir)
  saved = workdir / "config.json"
  if not saved.is_file():
    raise FileNotFoundError(f"{saved} not found: expected the workdir of a finished or running run "
                            "(e.g. from experiments/pretrain_tiny.py) or a Hugging Face model folder")
  if checkpoints is None and is_hf_folder(workdir):
    config, params = hf.load_hf(workdir, mesh=mesh)
    return TrainedModel(model=config, params=params, tokenizer=load_tokenizer(workdir), step=0)
  model_file = workdir / "model.json"
  model_data = (json.loads(model_file.read_text()) if model_file.is_file()
                else json.loads(saved.read_text()).get("model"))
  if model_data is None:
    raise UserError(f"{workdir} has neither model.json nor a 'model' section in config.json: "
                     "expected the workdir of a model run")
  model_config = config_lib.from_dict(ModelConfig, model_data)
  tokenizer = load_tokenizer(workdir)
  checkpointer = Checkpointer(policy_checkpoints(workdir) if checkpoints is None else checkpoints)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in checkpointer.all_steps():
      raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {checkpointer.directory}")
    state = checkpointer.restore_saved_tree(step, sharding.replicated(mesh))
  finally:
    checkpointer.close()
  params = state["params"]
  params = params.get("policy", params)
  lora_file = model_file.with_name("lora.json")
  if lora_file.is_file():
    params = lora.merge(params, config_lib.from_dict(lora.LoraConfig, json.loads(lora_file.read_text())))
  expected = jax.eval_shape(functools.partial(Transformer(model_config).init, jax.random.key(0)),
                            jnp.zeros((1, 1), jnp.int32))["params"]
  got = {sharding.path_str(p): leaf.shape for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
  for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
    name = sharding.path_str(path)
    if got.get(name) != leaf.shape:
      raise UserError(f"{checkpointer.directory}/{step}: parameter {name} is "
                       f"{'missing' if name not in got else got[name]}, expected {leaf.shape} for the model in "
                       f"{model_file if model_file.is_file() else saved}")
  if combine_heads and model_config.scalar_head and model_config.scalar_heads > 1:
    model_config, params = _combined(workdir, model_config, params)
  return TrainedModel(model=model_config, params=params, tokenizer=tokenizer, step=step)


RUBRIC_FILE = "rubric.json"  # a reward model's criteria (one head each) and the weights that combine them


def save_rubric(workdir: str | Path, criteria: Sequence[str], weights: Sequence[float]) -> None:
  """Records the criteria of a reward model's heads, in order, and the weights of its one reward."""
  if len(criteria) != len(weights):
    raise ValueError(f"{len(criteria)} criteria but {len(weights)} weights")
  files.atomic_write_text(Path(workdir) / RUBRIC_FILE, json.dumps(
      {"criteria": list(criteria), "weights": [float(w) for w in weights]}, indent=2) + "\n")


def _combined(workdir: Path, config: ModelConfig, params: Any) -> tuple[ModelConfig, Any]:
  """A reward model with one head per criterion as the one-head model of its weighted sum (the
  head is linear, so sum_k w_k (h W_k + b_k) = h (W w) + b . w): every consumer of a reward model
  reads it unchanged. `load(..., combine_heads=False)` keeps the heads."""
  path = workdir / RUBRIC_FILE
  if not path.is_file():
    raise UserError(f"{workdir}: a reward model with {config.scalar_heads} heads, and no {RUBRIC_FILE} with the weights "
                    "that combine them into one reward")
  weights = np.asarray(json.loads(path.read_text())["weights"], np.float32)
  if weights.shape != (config.scalar_heads,):
    raise UserError(f"{path}: {weights.size} weights for {config.scalar_heads} heads")
  head = params["scalar_head"]
  combined = {"kernel": head["kernel"] @ weights[:, None], "bias": head["bias"] @ weights[:, None]}
  return dataclasses.replace(config, scalar_heads=1), {**params, "scalar_head": combined}


def load_policy(init_from: str, workdir: str | Path, mesh: Mesh, *,
                pretrain: Callable[[Path], Any]) -> tuple[TrainedModel, Path]:
  """The starting policy of an experiment and its workdir: `init_from` (a run's workdir or a Hugging
  Face folder), or (init_from="") a model that `pretrain(workdir=<workdir>/policy)` trains first
  (rerunning it resumes). The tokenizer is copied into `workdir` so the experiment's workdir is
  self-contained."""
  policy_dir = resolve(init_from) if init_from else Path(workdir) / "policy"
  if not init_from:
    pretrain(workdir=policy_dir)
  policy = load(policy_dir, mesh)
  copy_tokenizer(policy_dir, workdir)
  return policy, policy_dir


def save_model_config(workdir: str | Path, model: ModelConfig, adapters: lora.LoraConfig | None = None) -> None:
  """Record the model a run trains (read back by `load` in place of the config's `model`), and the
  LoRA `adapters` it trains, if any (`load` merges them)."""
  workdir = Path(workdir)
  files.atomic_write_text(workdir / "model.json", json.dumps(dataclasses.asdict(model), indent=2) + "\n")
  if adapters is not None and adapters.rank:
    files.atomic_write_text(workdir / "lora.json", json.dumps(dataclasses.asdict(adapters), indent=2) + "\n")
  else:
    (workdir / "lora.json").unlink(missing_ok=True)


def export(workdir: str | Path, out: str | Path, *, step: int | None = None) -> list[str]:
  """Writes a run's model for use elsewhere, without its training state; returns the file names.

  Always: `params.safetensors` (float32 arrays under flat names such as `h_0/attn/c_attn/kernel`),
  `model.json` (the `ModelConfig`) and the run's tokenizer files. For a plain language model also
  `model.safetensors` + `config.json` in Hugging Face's layout: GPT-2's (`models.gpt2`) or the
  Llama family's (`models.hf`), which transformers' `AutoModelForCausalLM.from_pretrained(out)` loads.
  """
  workdir, out = resolve(workdir), Path(out)
  run = load(workdir, sharding.make_mesh(), step)  # an LM, reward model, PPO or DPO policy
  params = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), run.params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  out.mkdir(parents=True, exist_ok=True)
  files.atomic_write_bytes(out / "params.safetensors", safetensors.numpy.save(flat, metadata={"step": str(run.step)}))
  save_model_config(out, run.model)
  copy_tokenizer(workdir, out)
  written = ["params.safetensors", "model.json"] + [name for name in TOKENIZER_FILES if (out / name).is_file()]
  if not run.model.scalar_head and not run.model.n_preferences:
    if run.model.arch == "llama":
      bos = run.tokenizer.bos_id if run.tokenizer.bos_id != run.tokenizer.eos_id else None
      hf.save_hf(out, run.model, params, eos_token_id=run.tokenizer.eos_id, bos_token_id=bos)
    else:
      gpt2.save_hf(out, run.model, params, eos_token_id=run.tokenizer.eos_id)
    written += ["model.safetensors", "config.json"]
  return written
