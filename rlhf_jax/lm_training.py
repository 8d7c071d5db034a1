"""Language-model training on a token stream: pretraining from scratch and fine-tuning (SFT).

  lm_training.train(config, workdir, model=Transformer(model_config), tokenizer=tok, tokens=tokens)
  lm_training.train(config, workdir, model=adapted, tokenizer=tok, tokens=tokens, start_params=params)

`config` is an LM experiment's config: `seed`, `microbatches`, `data` (`lm_pipeline.LMDataConfig`),
`optim`, `loop`, `mesh` and `sample` (`SampleConfig`). Windows of `data.seq_len` tokens train with
the next-token loss, data-parallel over every device (and FSDP with `mesh.rules`); each
evaluation reports validation perplexity and writes samples of `sample.prompts` to
`samples.jsonl`. Without `start_params` the model starts at random (pretraining); with them it
starts there with a fresh optimizer (fine-tuning), and when they hold LoRA adapters
(`models.lora.add_adapters`) only the adapters train. Rerunning resumes from the checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
from tqdm import tqdm

from rlhf_jax import logs, sampling, sharding
from rlhf_jax.data import lm_pipeline
from rlhf_jax.eval import perplexity
from rlhf_jax.loop import train_loop
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common, lm
from rlhf_jax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  prompts: tuple[str, ...] = ("The", "It was a", "She said that", "In the morning", "He")
  max_new_tokens: int = 48
  temperature: float = 0.8
  top_p: float = 0.95


def train(config: Any, workdir: str | Path, *, model: Transformer, tokenizer: Tokenizer,
          tokens: lm_pipeline.LMTokens, start_params: Any = None) -> Any:
  """Trains `model` on `tokens` (module docstring); returns the final state (also saved)."""
  workdir = Path(workdir)
  data = config.data
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(data.batch_size, mesh, "data.batch_size")
  sharding.check_batch_divisible(data.eval_batch_size, mesh, "data.eval_batch_size")
  adapters = start_params is not None and lora.has_adapters(start_params)
  tx = common.make_optimizer(config.optim, lora.trainable() if adapters else None)
  key = jax.random.key(config.seed)
  # Parameters and optimizer state are created on their shards (mesh.rules; replicated unless the
  # mesh has fsdp/tensor axes larger than 1).
  if start_params is None:
    init, state_shardings = common.sharded_init(functools.partial(common.init_state, model=model, tx=tx), mesh,
                                                config.mesh.rules, jax.random.fold_in(key, 0))
    init_fn = functools.partial(init, jax.random.fold_in(key, 0))
  else:
    init, state_shardings = common.sharded_init(functools.partial(common.restart_state, tx=tx), mesh,
                                                config.mesh.rules, start_params)
    init_fn = functools.partial(init, start_params)
  step_fn = lm.jit_train_step(mesh, model=model, tx=tx, optim=config.optim, total_steps=config.loop.steps,
                              num_microbatches=config.microbatches, state_shardings=state_shardings)
  # Each process loads its own rows of the global batch (one process: all of them).
  dataset = lm_pipeline.lm_dataset(tokens.train_N, data.seq_len, data.batch_size // jax.process_count(),
                                   seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count())

  eval_step = lm.jit_eval_step(mesh, model=model, param_shardings=state_shardings.params)
  val_batches = lm_pipeline.eval_batches(tokens.validation_M, data.seq_len, data.eval_batch_size,
                                         pad_id=tokenizer.pad_id)
  generate = jax.jit(functools.partial(
      sampling.generate, model=model, max_new_tokens=config.sample.max_new_tokens,
      temperature=config.sample.temperature, top_p=config.sample.top_p,
      eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
  prompts = list(config.sample.prompts)

  def evaluate(state) -> dict[str, float]:
    metrics = perplexity.perplexity(eval_step, state.params, val_batches, mesh)
    step = int(state.step)
    completions = sampling.complete(generate, state.params, tokenizer, prompts,
                                    jax.random.fold_in(jax.random.fold_in(key, 2), step))
    if jax.process_index() == 0:  # in a multi-host run every process has the same samples
      logs.write_samples(workdir / "samples.jsonl", step, prompts, completions)
    tqdm.write(f"step {step}: validation loss {metrics['loss']:.3f}, perplexity {metrics['perplexity']:.1f}")
    for prompt, completion in zip(prompts, completions):
      tqdm.write(f"  {prompt!r} -> {completion!r}")
    return metrics

  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=init_fn,
                    state_shardings=state_shardings, step_fn=step_fn, data_iterator=iter(dataset),
                    hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=data.batch_size * data.seq_len, evaluate=evaluate)
