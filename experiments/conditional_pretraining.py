"""Pretraining with human preferences (Korbak et al. 2023): plain vs filtering vs conditional training.

  rlhf-jax run experiments/conditional_pretraining.py                 # 4 x 400 steps, ~25 min on 2 cores
  rlhf-jax run experiments/conditional_pretraining.py --smoke         # < 1 min, for tests
  rlhf-jax run experiments/conditional_pretraining.py --set condition.modes=plain,token

Every Brown sentence is scored by a labeler (VADER by default; any scorer name, `rm:WORKDIR` or
`py:MODULE:FUNCTION`); a sentence scoring below `condition.threshold` is "bad" (negative
sentiment stands in for the paper's toxicity). The same model then trains from scratch, at the
same tokenizer, steps and batch (matched compute), on each of `condition.modes`
(`rlhf_jax.data.conditional`):

- `plain`: every sentence; `filter`: bad sentences removed;
- `token`: `<|good|>` / `<|bad|>` before each sentence (1% left bare), sampled from `<|good|>` with
  `<|bad|>` suppressed;
- `embedding`: the same tags as a learned preference embedding added to the input;
- `contrastive`: the embedding plus `condition.contrastive_weight` x a contrastive loss (every token
  likelier under its own preference than under the opposite one, `losses.preference_contrastive_loss`).

Each mode trains in `<workdir>/<mode>/` (resumable). At the end every model is sampled from a
document start (`eval.samples` continuations of `eval.max_new_tokens` tokens, ancestral sampling)
under each conditioning it supports, the labeler scores the samples (control tokens removed), and
`results.md` / `results.json` report the rate of undesirable samples (score < threshold), their mean
score, and held-out perplexity on the same validation sentences: without any conditioning, and for
the conditional models also given the labeler's tags and given the opposite tags (the gap shows
how much the model uses its conditioning; control tokens never count as targets).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from rlhf_jax import config as config_lib
from rlhf_jax import files, logs, sampling, sharding, trained
from rlhf_jax.data import conditional, lm_pipeline
from rlhf_jax.eval import perplexity
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.rewards import scorers
from rlhf_jax.steps import common, lm

CONDITIONINGS = {"good": conditional.GOOD, "none": conditional.NONE, "bad": conditional.BAD}
METHODS = (*conditional.MODES, "contrastive")  # contrastive: embedding data and model, plus the loss
CONDITIONED = ("token", "embedding", "contrastive")


@dataclasses.dataclass(frozen=True)
class ConditionConfig:
  modes: tuple[str, ...] = METHODS
  scorer: str = "vader"
  threshold: float = -0.05  # a sentence scoring below this is undesirable (VADER's negative cut-off)
  unconditioned_fraction: float = 0.01  # sentences left without a tag (the paper's drop_token_fraction)
  max_documents: int = 0  # > 0: train on the first this many training documents only (smoke runs)
  max_val_documents: int = 0  # > 0: evaluate on the first this many validation documents only (smoke runs)
  contrastive_weight: float = 1.0  # of the contrastive loss, in the `contrastive` mode

  def __post_init__(self):
    bad = [m for m in self.modes if m not in METHODS]
    if bad or not self.modes:
      raise ValueError(f"condition.modes: expected a non-empty list of {METHODS}, got {self.modes}")
    if not self.contrastive_weight >= 0:
      raise ValueError(f"condition.contrastive_weight must be >= 0, got {self.contrastive_weight}")
    if not 0.0 <= self.unconditioned_fraction < 1.0:
      raise ValueError(f"condition.unconditioned_fraction must be in [0, 1), got {self.unconditioned_fraction}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  samples: int = 512
  batch_size: int = 128
  max_new_tokens: int = 48
  temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  data: lm_pipeline.LMDataConfig = lm_pipeline.LMDataConfig()
  model: ModelConfig = ModelConfig()
  optim: common.OptimConfig = common.OptimConfig()
  loop: LoopConfig = LoopConfig()
  mesh: sharding.MeshConfig = sharding.MeshConfig()
  condition: ConditionConfig = ConditionConfig()
  eval: EvalConfig = EvalConfig()

  def __post_init__(self):
    if self.model.vocab_size != self.data.vocab_size:
      raise ValueError(f"model.vocab_size={self.model.vocab_size} must equal data.vocab_size={self.data.vocab_size}")
    if self.data.seq_len > self.model.max_len:
      raise ValueError(f"data.seq_len={self.data.seq_len} exceeds model.max_len={self.model.max_len}")
    if 2 + self.eval.max_new_tokens > self.model.max_len:
      raise ValueError(f"eval.max_new_tokens={self.eval.max_new_tokens} + 2 prompt tokens exceeds "
                       f"model.max_len={self.model.max_len}")


def get_config(smoke: bool = False) -> Config:
  vocab = 2048  # pretrain_tiny's model and data at 400 steps per mode
  config = Config(
      data=lm_pipeline.LMDataConfig(corpus="brown", vocab_size=vocab, seq_len=128, batch_size=32),
      model=ModelConfig(vocab_size=vocab, max_len=128, d_model=128, n_layers=4, n_heads=4),
      optim=common.OptimConfig(learning_rate=3e-3, warmup_steps=50, weight_decay=0.1),
      loop=LoopConfig(steps=400, log_every=20, eval_every=200, checkpoint_every=200),
  )
  if smoke:
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, vocab_size=512, seq_len=32, batch_size=16),
        model=dataclasses.replace(config.model, vocab_size=512, max_len=64, d_model=32, n_layers=1, n_heads=2),
        optim=dataclasses.replace(config.optim, warmup_steps=2),
        loop=LoopConfig(steps=6, log_every=3, eval_every=0, checkpoint_every=3, progress=False),
        eval=EvalConfig(samples=16, batch_size=16, max_new_tokens=8),
        condition=dataclasses.replace(config.condition, max_documents=40, max_val_documents=4),
    )
  return config


def score_segments(docs, scorer, tokenizer, threshold: float, unconditioned_fraction: float, seed: int):
  """Per document: segment token ids, the labeler's scores and the tags (see `data.conditional`)."""
  segments = [conditional.split_segments(d.text) for d in docs]
  flat = [s for doc in segments for s in doc]
  scores = np.asarray(scorer.score(flat), np.float64)
  tags = conditional.tag_segments(scores, threshold, unconditioned_fraction, np.random.default_rng(seed))
  ids = tokenizer.encode_batch(flat)
  out_ids, out_scores, out_tags, i = [], [], [], 0
  for doc in segments:
    out_ids.append(ids[i:i + len(doc)])
    out_scores.append(scores[i:i + len(doc)])
    out_tags.append(tags[i:i + len(doc)])
    i += len(doc)
  return out_ids, out_scores, out_tags


def main(config: Config, workdir: Path) -> dict:
  workdir = Path(workdir)
  condition, evaluation = config.condition, config.eval
  tokenizer = lm_pipeline.prepare_tokenizer(config.data, workdir / "tokenizer.model",
                                            user_defined_symbols=conditional.CONTROL_TOKENS)
  control_ids = tuple(tokenizer.piece_to_id(p) for p in conditional.CONTROL_TOKENS)
  scorer = scorers.get_scorer(condition.scorer)
  train_docs, val_docs = lm_pipeline.split_corpus(config.data.corpus, config.data.val_fraction)
  train_docs, val_docs = train_docs[:condition.max_documents or None], val_docs[:condition.max_val_documents or None]
  train_ids, train_scores, train_tags = score_segments(train_docs, scorer, tokenizer, condition.threshold,
                                                       condition.unconditioned_fraction, config.seed)
  # Validation keeps every tag: "perplexity given the labeler's tags" conditions every sentence.
  val_ids, _, val_tags = score_segments(val_docs, scorer, tokenizer, condition.threshold, 0.0, config.seed)
  bad_fraction = float(np.mean(np.concatenate(train_scores) < condition.threshold))
  print(f"{sum(map(len, train_ids)):,} training sentences, {bad_fraction:.1%} scored < {condition.threshold} by "
        f"{condition.scorer}", flush=True)

  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  sharding.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  sharding.check_batch_divisible(evaluation.batch_size, mesh, "eval.batch_size")
  stream = functools.partial(conditional.build_stream, control_ids=control_ids, eos_id=tokenizer.eos_id)
  val_plain = stream(val_ids, val_tags, mode="plain")
  eval_batches = functools.partial(lm_pipeline.eval_batches, seq_len=config.data.seq_len,
                                   batch_size=config.data.eval_batch_size, pad_id=tokenizer.pad_id)
  plain_batches = eval_batches(val_plain.tokens_N)
  key = jax.random.key(config.seed)
  results = {"scorer": condition.scorer, "threshold": condition.threshold, "bad_fraction_train": bad_fraction,
             "modes": {}}
  # Modes with the same model and loss (plain, filter, token) share their compiled programs.
  programs, generators = {}, {}
  for method in condition.modes:
    mode = "embedding" if method == "contrastive" else method
    train = stream(train_ids, train_tags, mode=mode)
    model_config = dataclasses.replace(config.model, n_preferences=conditional.N_PREFERENCES if mode == "embedding"
                                       else 0)
    model = Transformer(model_config)
    contrastive_weight = condition.contrastive_weight if method == "contrastive" else 0.0
    if (model_config, contrastive_weight) not in programs:
      tx = common.make_optimizer(config.optim)
      init, state_shardings = common.sharded_init(functools.partial(common.init_state, model=model, tx=tx), mesh,
                                                  config.mesh.rules, jax.random.fold_in(key, 0))
      init_fn = functools.partial(init, jax.random.fold_in(key, 0))
      programs[model_config, contrastive_weight] = (init_fn, state_shardings, lm.jit_eval_step(
          mesh, model=model, param_shardings=state_shardings.params), lm.jit_train_step(
              mesh, model=model, tx=tx, optim=config.optim, total_steps=config.loop.steps,
              contrastive_weight=contrastive_weight, preference_flip=conditional.FLIP,
              state_shardings=state_shardings))
    init_fn, state_shardings, eval_step, train_step = programs[model_config, contrastive_weight]
    tagged = {}
    if mode in ("token", "embedding"):
      # Given the labeler's tags, and given the opposite tags: if the model uses its conditioning,
      # the true tags make the text likelier than the flipped ones.
      for name, tags in (("tagged", val_tags), ("flipped", [np.asarray(conditional.FLIP)[t] for t in val_tags])):
        val = stream(val_ids, tags, mode=mode)
        tagged[name] = conditional.mask_targets(
            eval_batches(val.tokens_N, preference_N=val.preference_N if mode == "embedding" else None), control_ids)

    evaluate = functools.partial(perplexities, eval_step=eval_step, plain_batches=plain_batches, tagged=tagged,
                                 mesh=mesh)
    dataset = lm_pipeline.lm_dataset(train.tokens_N, config.data.seq_len, config.data.batch_size // jax.process_count(),
                                     seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count(),
                                     preference_N=train.preference_N if mode == "embedding" else None)
    # Each method's directory is a loadable model run (`trained.load`, `rlhf-jax export`) whose
    # config names its method alone, so `rlhf-jax report` tells the methods apart.
    (workdir / method).mkdir(parents=True, exist_ok=True)
    config_lib.save(dataclasses.replace(config, condition=dataclasses.replace(condition, modes=(method,))),
                    workdir / method / "config.json")
    trained.save_model_config(workdir / method, model_config)
    shutil.copyfile(workdir / "tokenizer.model", workdir / method / "tokenizer.model")
    tqdm.write(f"[{method}] {train.tokens_N.size:,} training tokens ({int(train.control_N.sum()):,} control tokens)")
    state = train_loop(
        workdir=workdir / method, loop=config.loop, config={**dataclasses.asdict(config), "mode": method},
        init_fn=init_fn, state_shardings=state_shardings, step_fn=train_step,
        data_iterator=iter(dataset), hp=config.optim.hparams(), rng=jax.random.fold_in(key, 1), mesh=mesh,
        tokens_per_step=config.data.batch_size * config.data.seq_len, evaluate=evaluate)
    if state.step < config.loop.steps:  # stopped early (SIGTERM): the rerun resumes
      return results
    out = {"train_tokens": int(train.tokens_N.size), **evaluate(state)}
    for name, pref in CONDITIONINGS.items():
      if name != "none" and method not in CONDITIONED:
        continue
      texts = sample(state.params, model, tokenizer, mode, pref, control_ids, evaluation,
                     jax.random.fold_in(jax.random.fold_in(key, 2), pref), mesh, generators)
      scores = np.asarray(scorer.score(texts), np.float64)
      out[f"undesirable_{name}"] = float(np.mean(scores < condition.threshold))
      out[f"score_{name}"] = float(np.mean(scores))
      with open(workdir / method / f"samples_{name}.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t, "score": float(s)}) + "\n" for t, s in zip(texts, scores))
    results["modes"][method] = out
    # The final evaluation record, with the sample rates: the one `rlhf-jax report` tabulates.
    writer = logs.MetricWriter(workdir / method, tensorboard=False, enabled=jax.process_index() == 0)
    writer.write(config.loop.steps, out, split="eval")
    writer.close()
    tqdm.write(f"[{method}] " + ", ".join(f"{k} {v:.3f}" for k, v in out.items() if isinstance(v, float)))
  files.atomic_write_bytes(workdir / "results.json", (json.dumps(results, indent=2) + "\n").encode())
  files.atomic_write_bytes(workdir / "results.md", results_table(results).encode())
  print(results_table(results), flush=True)
  return results


def perplexities(state, *, eval_step, plain_batches, tagged: dict, mesh) -> dict[str, float]:
  """Validation perplexity without conditioning, and `perplexity_<name>` for each of `tagged`'s
  batch lists (the labeler's tags, the flipped tags)."""
  metrics = {"perplexity": perplexity.perplexity(eval_step, state.params, plain_batches, mesh)["perplexity"]}
  for name, batches in tagged.items():
    metrics[f"perplexity_{name}"] = perplexity.perplexity(eval_step, state.params, batches, mesh)["perplexity"]
  return metrics


def sample(params, model: Transformer, tokenizer, mode: str, pref: int, control_ids: tuple[int, int],
           evaluation: EvalConfig, key: jax.Array, mesh, generators: dict) -> list[str]:
  """`evaluation.samples` continuations of a document start under conditioning `pref`, as text without
  control tokens. Token mode puts the control token after the EOS and suppresses the opposite one.
  `generators` keeps the jitted samplers (one compile per model and suppressed token)."""
  prompt = [tokenizer.eos_id] + ([control_ids[pref - 1]] if mode == "token" and pref else [])
  suppress = (control_ids[2 - pref],) if mode == "token" and pref else ()
  if (model.config, suppress) not in generators:
    generators[model.config, suppress] = jax.jit(functools.partial(
        sampling.generate, model=model, max_new_tokens=evaluation.max_new_tokens, temperature=evaluation.temperature,
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, suppress_ids=suppress))
  generate = generators[model.config, suppress]
  prompt_BxP = np.tile(np.asarray(prompt, np.int32), (evaluation.batch_size, 1))
  batch = {"prompt": prompt_BxP, "mask": np.ones_like(prompt_BxP)}
  if mode == "embedding":
    batch["preference"] = np.full([evaluation.batch_size], pref, np.int32)
  batch = sharding.put_batch(batch, mesh)
  texts = []
  for b in range(-(-evaluation.samples // evaluation.batch_size)):
    out = jax.device_get(generate(params, batch["prompt"], batch["mask"], jax.random.fold_in(key, b),
                                  preference_B=batch.get("preference")))
    for row, mask in zip(out.tokens_BxN, out.mask_BxN):
      ids = [int(t) for t, m in zip(row, mask) if m and t != tokenizer.eos_id]
      texts.append(conditional.strip_control(tokenizer.decode(ids)))
  return texts[:evaluation.samples]


def results_table(results: dict) -> str:
  header = ("| mode | undesirable (good) | undesirable (none) | undesirable (bad) | mean score (good) | "
            "mean score (none) | val ppl | val ppl given tags | given flipped tags |")
  caption = (f"Undesirable = {results['scorer']} score < {results['threshold']} "
             f"({results['bad_fraction_train']:.1%} of training sentences).")
  lines = [caption, "", header, "|---|---|---|---|---|---|---|---|---|"]

  def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)

  for mode, r in results["modes"].items():
    lines.append(f"| {mode} | {fmt(r.get('undesirable_good'))} | {fmt(r.get('undesirable_none'))} | "
                 f"{fmt(r.get('undesirable_bad'))} | {fmt(r.get('score_good'))} | {fmt(r.get('score_none'))} | "
                 f"{fmt(r['perplexity'], '.1f')} | {fmt(r.get('perplexity_tagged'), '.1f')} | "
                 f"{fmt(r.get('perplexity_flipped'), '.1f')} |")
  return "\n".join(lines) + "\n"
