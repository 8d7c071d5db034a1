"""Language-model training: pretraining from scratch and fine-tuning (SFT).

  data = lm_training.corpus_data(config.data, tokens, seed=config.seed)     # windows of a corpus
  data = lm_training.sft_data(train_rows, held_out_rows, tok, ...)          # demonstrations, packed
  lm_training.train(config, workdir, model=Transformer(model_config), tokenizer=tok, data=data)
  lm_training.train(config, workdir, model=adapted, tokenizer=tok, data=data, start_params=params)

`config` is an LM experiment's config: `seed`, `microbatches`, `data` (with `batch_size` and
`eval_batch_size`), `optim`, `loop`, `mesh` and `sample` (`SampleConfig`). Batches train with the
next-token loss, data-parallel over every device (and FSDP with `mesh.rules`); each evaluation
reports held-out perplexity and writes samples of `sample.prompts` to `samples.jsonl`. Without `start_params` the model starts at random (pretraining); with them it
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

import grain

from rlhf_jax import logs, sampling, sharding
from rlhf_jax.data import lm_pipeline, sft_pipeline
from rlhf_jax.errors import UserError
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


@dataclasses.dataclass(frozen=True)
class Data:
  """What a run trains and evaluates on."""
  train: grain.IterDataset  # batches {"inputs", "targets", "loss_mask"[, "segment_ids"]} of this process's rows
  validation: list[dict]  # every held-out target once (loss_mask 0 on padding)
  tokens_per_step: int  # of the global batch, for throughput
  prompts: tuple[str, ...] = ()  # sampled at each evaluation (default: the config's `sample.prompts`)


def corpus_data(config: lm_pipeline.LMDataConfig, tokens: lm_pipeline.LMTokens, *, seed: int, pad_id: int) -> Data:
  """Windows of `config.seq_len` tokens of a corpus' train stream, and its validation stream."""
  # Each process loads its own rows of the global batch (one process: all of them).
  train = lm_pipeline.lm_dataset(tokens.train_N, config.seq_len, config.batch_size // jax.process_count(),
                                 seed=seed, shard_index=jax.process_index(), shard_count=jax.process_count())
  validation = lm_pipeline.eval_batches(tokens.validation_M, config.seq_len, config.eval_batch_size, pad_id=pad_id)
  return Data(train, validation, config.batch_size * config.seq_len)


def sft_data(train_rows, held_out_rows, tokenizer: Tokenizer, *, seq_len: int, batch_size: int,
             eval_batch_size: int, seed: int, pack: bool = True, num_samples: int = 4) -> Data:
  """Text rows (`records.as_text`: prompt + completion, or text) as `sft_pipeline` batches: the
  loss on completions only, several examples packed to a row; each evaluation samples the first
  `num_samples` held-out prompts. A row whose prompt fills all
  `seq_len` tokens has nothing to learn from and is left out (and counted)."""
  kept = {}
  for name, rows in (("train", train_rows), ("held-out", held_out_rows)):
    examples = sft_pipeline.examples(rows, tokenizer, seq_len)
    kept[name] = [e for e in examples if e["loss_mask"].any()]
    if len(kept[name]) < len(examples):
      tqdm.write(f"{len(examples) - len(kept[name])} of {len(examples)} {name} rows left out: their prompt fills all "
                 f"data.seq_len={seq_len} tokens")
    if not kept[name]:
      raise UserError(f"no {name} row has a completion token within data.seq_len={seq_len} tokens: raise it (up to "
                      "the model's max_len) or shorten the prompts")
  train = sft_pipeline.dataset(kept["train"], seq_len, batch_size // jax.process_count(), seed=seed, pack=pack,
                               shard_index=jax.process_index(), shard_count=jax.process_count())
  prompts = tuple(r["prompt"] for r in held_out_rows[:num_samples]) if "prompt" in held_out_rows[0] else ()
  return Data(train, sft_pipeline.eval_batches(kept["held-out"], seq_len, eval_batch_size), batch_size * seq_len,
              prompts)


def train(config: Any, workdir: str | Path, *, model: Transformer, tokenizer: Tokenizer, data: Data,
          start_params: Any = None) -> Any:
  """Trains `model` on `data` (module docstring); returns the final state (also saved)."""
  workdir = Path(workdir)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  sharding.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
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
  eval_step = lm.jit_eval_step(mesh, model=model, param_shardings=state_shardings.params)
  generate = jax.jit(functools.partial(
      sampling.generate, model=model, max_new_tokens=config.sample.max_new_tokens,
      temperature=config.sample.temperature, top_p=config.sample.top_p,
      eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
  prompts = list(data.prompts or config.sample.prompts)

  def evaluate(state) -> dict[str, float]:
    metrics = perplexity.perplexity(eval_step, state.params, data.validation, mesh)
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
                    state_shardings=state_shardings, step_fn=step_fn, data_iterator=iter(data.train),
                    hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=data.tokens_per_step, evaluate=evaluate)
