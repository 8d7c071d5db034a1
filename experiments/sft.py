"""Supervised fine-tuning (SFT) of a trained language model: a run's workdir or a Hugging Face folder.

  rlhf-jax run experiments/sft.py --set init_from=path/to/Qwen2.5-0.5B --set data.path=demos.jsonl
  rlhf-jax run experiments/sft.py --set init_from=... --set data.path=hf:ORG/NAME:train --set lora.rank=16
  rlhf-jax run experiments/sft.py --set init_from=... --set data.corpus=austen      # plain text windows
  rlhf-jax run experiments/sft.py --smoke --set init_from=tests/data/tiny_hf/qwen2  # < 1 min on CPU

`data.path` is a dataset of demonstrations in TRL's formats (`data.records`): prompt-completion
rows train on the completion's tokens only, language-modeling rows on all of theirs; conversational
rows are rendered by the model's chat template. Several examples are packed to a row (attention
kept within each: `data.sft_pipeline`; `data.pack=false` pads instead), and the rows whose prompt
hashes into `data.test_fraction` are held out. Without `data.path`, the documents of `data.corpus`
(a packaged corpus, `file:PATH.txt`, `file:PATH.jsonl#field`, `tfds:NAME`) train as pretraining
does, in windows of `data.seq_len` tokens. The model starts from its own weights with a fresh
optimizer; with `lora.rank` only LoRA adapters of its projections train (the saved run merges
them when it is loaded or exported). Held-out perplexity and samples are reported as pretraining
reports them; the result is an LM run any later stage takes as `init_from`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from rlhf_jax import lm_training, sharding, trained
from rlhf_jax.data import lm_pipeline, records
from rlhf_jax.errors import UserError
from rlhf_jax.lm_training import SampleConfig
from rlhf_jax.loop import LoopConfig
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common


@dataclasses.dataclass(frozen=True)
class DataConfig(lm_pipeline.LMDataConfig):
  """Demonstrations (`path`, read by `records.load`) or, without them, a text corpus (`corpus`);
  vocab_size is unused: the model's own tokenizer encodes either."""
  path: str = ""  # prompt-completion or language-modeling rows: .jsonl/.parquet/.csv, tfds:..., hf:...
  format: str = ""  # "" infers it from the columns
  fields: tuple[str, ...] = ()  # "OURS=THEIRS" column renames
  test_fraction: float = 0.05  # demonstrations held out, by a stable hash of their prompt
  max_rows: int = 0
  pack: bool = True  # several demonstrations to a row (segment ids keep them apart)

  def __post_init__(self):
    super().__post_init__()
    records.DataConfig(path=self.path, format=self.format, fields=self.fields, test_fraction=self.test_fraction,
                       max_rows=self.max_rows)  # the same checks


@dataclasses.dataclass(frozen=True)
class Config:
  init_from: str = ""  # the model to fine-tune: a run's workdir, a Hugging Face folder, or hf:ORG/NAME
  seed: int = 0
  microbatches: int = 1
  data: DataConfig = DataConfig(corpus="brown", seq_len=128, batch_size=16)
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
        config, data=dataclasses.replace(config.data, seq_len=64, batch_size=8, eval_batch_size=32, val_fraction=0.01),
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
  data = demonstrations(config, start.tokenizer) if config.data.path else corpus(config, start.tokenizer)
  model, params = Transformer(start.model), start.params
  if config.lora.rank:
    model = lora.adapt(model, config.lora)
    params = lora.add_adapters(model, params, jax.random.fold_in(jax.random.key(config.seed), 3))
  return lm_training.train(config, workdir, model=model, tokenizer=start.tokenizer, data=data,
                           start_params=params)


def demonstrations(config: Config, tokenizer) -> lm_training.Data:
  dc = config.data
  dataset = records.load(dc.path, kind=dc.format, fields=dc.fields, max_rows=dc.max_rows)
  if dataset.kind not in ("prompt_completion", "language_modeling"):
    raise UserError(f"{dc.path}: SFT trains on prompt-completion or language-modeling rows, not {dataset.kind} "
                    "(preferences: experiments/dpo.py or experiments/reward_model.py)")
  rows = records.as_text(dataset, tokenizer)
  train, held_out = records.split(rows, dc.test_fraction, key="prompt" if dataset.kind != "language_modeling" else "text")
  if not held_out:
    raise UserError(f"{dc.path}: none of its {len(rows)} rows is held out at data.test_fraction={dc.test_fraction}: "
                    "raise it or add rows")
  print(f"{dataset.kind} rows ({'conversational' if dataset.conversational else 'plain'}): {len(train)} train, "
        f"{len(held_out)} held out", flush=True)
  return lm_training.sft_data(train, held_out, tokenizer, seq_len=dc.seq_len, batch_size=dc.batch_size,
                              eval_batch_size=dc.eval_batch_size, seed=config.seed, pack=dc.pack)


def corpus(config: Config, tokenizer) -> lm_training.Data:
  tokens = lm_pipeline.prepare_lm_tokens(config.data.corpus, tokenizer, val_fraction=config.data.val_fraction,
                                         num_threads=config.data.tokenizer_threads)
  print(f"tokens: train {tokens.train_N.size:,}, validation {tokens.validation_M.size:,}", flush=True)
  return lm_training.corpus_data(config.data, tokens, seed=config.seed, pad_id=tokenizer.pad_id)
