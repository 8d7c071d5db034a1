"""Fine-tune a trained language model on text (SFT): a run's workdir or a Hugging Face folder.

  rlhf-jax run experiments/sft.py --set init_from=path/to/Qwen2.5-0.5B --set data.corpus=file:demos.jsonl#text
  rlhf-jax run experiments/sft.py --set init_from=path/to/Qwen2.5-0.5B --set lora.rank=16   # adapters only
  rlhf-jax run experiments/sft.py --smoke --set init_from=tests/data/tiny_hf/qwen2            # < 1 min on CPU

Documents (`data.corpus`: a packaged corpus, `file:PATH.txt`, `file:PATH.jsonl#field`, or
`tfds:NAME`) are tokenized with the model's own tokenizer, each ended by its EOS, packed into
windows of `data.seq_len` tokens, and the model trains on the next-token loss from its own weights
with a fresh optimizer; with `lora.rank` set, only LoRA adapters of its projections train (the
saved run merges them when it is loaded or exported). Validation perplexity and samples are
reported as pretraining reports them; the result is an LM run any later stage takes as `init_from`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from rlhf_jax import lm_training, sharding, trained
from rlhf_jax.data import lm_pipeline
from rlhf_jax.errors import UserError
from rlhf_jax.lm_training import SampleConfig
from rlhf_jax.loop import LoopConfig
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common


@dataclasses.dataclass(frozen=True)
class Config:
  init_from: str = ""  # the model to fine-tune: a run's workdir, a Hugging Face folder, or hf:ORG/NAME
  seed: int = 0
  microbatches: int = 1
  # vocab_size is unused: the model's own tokenizer encodes the corpus.
  data: lm_pipeline.LMDataConfig = lm_pipeline.LMDataConfig(corpus="brown", seq_len=128, batch_size=16)
  lora: lora.LoraConfig = lora.LoraConfig()  # rank > 0: train adapters only
  optim: common.OptimConfig = common.OptimConfig(learning_rate=1e-4, warmup_steps=20, weight_decay=0.0,
                                                 min_lr_ratio=0.1)
  loop: LoopConfig = LoopConfig(steps=300, log_every=10, eval_every=100, checkpoint_every=100)
  mesh: sharding.MeshConfig = sharding.MeshConfig()
  sample: SampleConfig = SampleConfig(max_new_tokens=32)


def get_config(smoke: bool = False) -> Config:
  config = Config()
  if smoke:
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, seq_len=32, batch_size=8, eval_batch_size=32, val_fraction=0.01),
        optim=dataclasses.replace(config.optim, learning_rate=1e-3, warmup_steps=2),
        loop=LoopConfig(steps=8, log_every=4, eval_every=8, checkpoint_every=4, progress=False),
        sample=dataclasses.replace(config.sample, prompts=("The",), max_new_tokens=8))
  return config


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  if not config.init_from:
    raise UserError("init_from is empty: name the model to fine-tune (a run's workdir or a Hugging Face folder)")
  mesh = sharding.make_mesh(config.mesh)
  start = trained.load(config.init_from, mesh)
  if config.data.seq_len > start.model.max_len:
    raise UserError(f"data.seq_len={config.data.seq_len} exceeds the model's max_len={start.model.max_len}")
  trained.copy_tokenizer(trained.resolve(config.init_from), workdir)
  trained.save_model_config(workdir, start.model, config.lora)
  tokens = lm_pipeline.prepare_lm_tokens(config.data.corpus, start.tokenizer, val_fraction=config.data.val_fraction,
                                         num_threads=config.data.tokenizer_threads)
  print(f"tokens: train {tokens.train_N.size:,}, validation {tokens.validation_M.size:,}", flush=True)
  model, params = Transformer(start.model), start.params
  if config.lora.rank:
    model = lora.adapt(model, config.lora)
    params = lora.add_adapters(model, params, jax.random.fold_in(jax.random.key(config.seed), 3))
  return lm_training.train(config, workdir, model=model, tokenizer=start.tokenizer, tokens=tokens,
                           start_params=params)
