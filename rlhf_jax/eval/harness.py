"""The evaluation harness behind `rlhf-jax eval`: trained policies on fixed, versioned prompts.

  rlhf-jax eval workdirs/quickstart/lm workdirs/quickstart/ppo --out workdirs/quickstart/eval
  rlhf-jax eval RUN_A RUN_B --set scorers=vader,rm:workdirs/rm --set labeler_beta=5 --set store=h2h.db

For each run (any workdir `trained.load` reads: an LM, PPO or DPO run) it samples
one continuation of each prompt of a versioned set (`PROMPT_SETS`) and reports, with
`HarnessConfig`'s seed fixing every draw (the same seed gives the same numbers):

- reward under every scorer in `scorers` (lexicons, `rm:WORKDIR` reward models, `py:MOD:FN`
  user functions): mean, std, quantiles, and the distribution as a plot;
- KL(pi || pi_ref) per sequence on these fresh samples, against `reference` (default: the LM the
  run started from, `policy.init_from`, else the run itself);
- response length and EOS rate; diversity: distinct-1/2 and self-BLEU (`eval.diversity`);
- held-out perplexity on the validation split of `corpus`, and fluency: the perplexity of the
  samples under a separate, larger LM (`fluency_lm`) where one is given.

With two or more runs, the first is played against each other one on the same prompts: win rates
with bootstrap intervals by each scorer in `judges`, by a simulated labeler (`labeler_beta` > 0),
and by people: with `store`, the pairs go into that feedback store for `rlhf-jax label` (random
order, model hidden) and whatever verdicts it holds are read back (`eval.head_to_head`).
Written to `out`: `eval.json`, `eval.md` and `eval.png`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from rlhf_jax import files, logs
from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sharding, trained
from rlhf_jax.advantages import sequence_kl
from rlhf_jax.config import check_range
from rlhf_jax.data import lm_pipeline
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.data import records
from rlhf_jax.errors import UserError
from rlhf_jax.eval import diversity, head_to_head, perplexity
from rlhf_jax.feedback import labelers
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rewards import scorers
from rlhf_jax.steps import lm


def _wordnet_heldout(seed: int) -> list[str]:
  # The held-out prompts of sentiment_ppo and dpo_sentiment run with this seed (their defaults).
  return prompts_lib.split_prompts(prompts_lib.wordnet_openings(4096, 4, seed), 0.05)[1]


# Versioned: a set's name changes whenever what it returns would. Anything else names a dataset.
PROMPT_SETS = {
    "wordnet-openings-v1": functools.partial(_wordnet_heldout, 0),
}


def load_prompts(name: str, tokenizer=None) -> list[str]:
  """A versioned set's prompts, or the distinct prompts of any dataset `data.records` reads (a
  .txt of a prompt a line, JSONL/Parquet/CSV prompt, preference, completion or rating rows, tfds:,
  hf:; conversational prompts rendered by `tokenizer`'s chat template)."""
  if name in PROMPT_SETS:
    return PROMPT_SETS[name]()
  source = name[len("file:"):] if name.startswith("file:") else name
  if (not source.startswith(("tfds:", "hf:")) and Path(source).suffix not in records.FILE_SUFFIXES
      and records.builtin(source) is None):
    raise UserError(f"prompts: expected one of {sorted(PROMPT_SETS)} or a dataset (.txt, .jsonl, .parquet, .csv, "
                    f"tfds:NAME, hf:ORG/NAME), got {name!r}")
  return records.prompts(records.load(source), tokenizer)


@dataclasses.dataclass(frozen=True)
class HarnessConfig:
  prompts: str = "wordnet-openings-v1"  # a versioned set, or any prompt dataset (`load_prompts`)
  num_prompts: int = 128  # the first this many of the set
  prompt_len: int = 8
  max_new_tokens: int = 24
  temperature: float = 1.0
  batch_size: int = 64
  scorers: tuple[str, ...] = ("vader", "textblob", "afinn")
  with_prompt: tuple[str, ...] = ()  # scorers that read prompt + response (reward models trained on both)
  reference: str = ""  # LM workdir for KL; "": the run's policy.init_from, else the run itself
  corpus: str = "brown"  # held-out perplexity on its validation split; "": skipped
  perplexity_tokens: int = 32768  # of that split, from its start
  fluency_lm: str = ""  # a separate, larger LM workdir: the perplexity of the samples under it
  judges: tuple[str, ...] = ("vader",)  # head-to-head by score (higher wins)
  labeler_beta: float = 0.0  # > 0: also a simulated labeler on judges[0] with this Bradley-Terry beta
  store: str = ""  # a feedback store for people's head-to-head verdicts
  seed: int = 0

  def __post_init__(self):
    check_range(self, "eval", "positive", "num_prompts", "prompt_len", "max_new_tokens", "batch_size",
                error=UserError)
    check_range(self, "eval", ">= 0", "labeler_beta", error=UserError)


@dataclasses.dataclass
class RunSamples:
  """One run's samples of the prompt set (kept for head-to-head comparisons)."""
  name: str
  prompts: list[str]
  responses: list[str]


def reference_dir(workdir: Path, hc: HarnessConfig) -> Path:
  if hc.reference:
    return Path(hc.reference)
  config = json.loads((workdir / "config.json").read_text())
  init_from = (config.get("policy") or {}).get("init_from", "")
  if init_from:
    return Path(init_from)
  return workdir / "policy" if (workdir / "policy" / "config.json").is_file() else workdir


def _summary(x: np.ndarray) -> dict[str, float]:
  q = np.quantile(x, [0.1, 0.5, 0.9]) if x.size else [math.nan] * 3
  return {"mean": float(x.mean()), "std": float(x.std()), "p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])}


def sample_run(policy, ref, hc: HarnessConfig, prompts: list[str], mesh) -> dict[str, Any]:
  """Responses, KL to `ref`, lengths and EOS of `policy` on `prompts`, batch i with key fold_in(seed, i)."""
  tok = policy.tokenizer
  if hc.prompt_len + hc.max_new_tokens > policy.model.max_len:
    raise UserError(f"eval.prompt_len + eval.max_new_tokens = {hc.prompt_len + hc.max_new_tokens} exceeds the "
                     f"model's max_len={policy.model.max_len}")
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=Transformer(policy.model), value_model=None,
                                   max_new_tokens=hc.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id))
  key = jax.random.key(hc.seed)
  responses, kls, lengths, ended = [], [], [], []
  B = hc.batch_size
  for i in range(0, len(prompts), B):
    chunk = prompts[i:i + B]
    tokens, mask = prompts_lib.encode_prompts(tok, chunk + [chunk[0]] * (B - len(chunk)), hc.prompt_len)
    placed = sharding.put_batch({"tokens": tokens, "mask": mask}, mesh)
    key_i = jax.device_put(jax.random.fold_in(key, i), sharding.replicated(mesh))
    r = jax.device_get(roll(policy.params, None, ref.params, placed["tokens"], placed["mask"], key_i, hc.temperature))
    n = len(chunk)  # the last batch is padded with copies of its first prompt, whose samples are dropped
    responses += rollout_lib.decode_responses(tok, r.response_BxN, r.response_mask_BxN)[:n]
    kls.append(np.asarray(sequence_kl(r.logp_BxN, r.ref_logp_BxN, r.response_mask_BxN))[:n])
    lengths.append(r.response_mask_BxN.sum(-1)[:n])
    ended.append(np.asarray(r.ended_B)[:n])
  return {"responses": responses, "kl": np.concatenate(kls), "length": np.concatenate(lengths),
          "ended": np.concatenate(ended)}


def _perplexity(run, token_ids: np.ndarray, mesh, batch_size: int = 32) -> float:
  seq_len = min(128, run.model.max_len)
  eval_step = lm.jit_eval_step(mesh, model=Transformer(run.model))
  batches = lm_pipeline.eval_batches(token_ids, seq_len, batch_size, pad_id=run.tokenizer.pad_id)
  return perplexity.perplexity(eval_step, run.params, batches, mesh)["perplexity"]


def evaluate_run(workdir: str | Path, hc: HarnessConfig, mesh, prompts: list[str],
                 by_name: dict[str, Any], fluency=None) -> tuple[dict[str, Any], RunSamples]:
  workdir = Path(workdir)
  policy = trained.load(workdir, mesh)
  ref_path = reference_dir(workdir, hc)
  ref = policy if ref_path.resolve() == workdir.resolve() else trained.load(ref_path, mesh)
  if ref.model != policy.model:
    raise UserError(f"reference {ref_path}: its model differs from {workdir}'s; KL needs the same architecture "
                     "(set eval.reference to the LM this run started from)")
  if ref.tokenizer.fingerprint != policy.tokenizer.fingerprint:
    raise UserError(f"reference {ref_path}: its tokenizer differs from {workdir}'s")
  s = sample_run(policy, ref, hc, prompts, mesh)
  result: dict[str, Any] = {
      "run": str(workdir), "step": policy.step, "reference": str(ref_path),
      "kl": float(s["kl"].mean()), "response_length": float(s["length"].mean()), "eos_rate": float(s["ended"].mean()),
      "distinct_1": diversity.distinct_n(s["responses"], 1), "distinct_2": diversity.distinct_n(s["responses"], 2),
      "self_bleu": diversity.self_bleu(s["responses"], seed=hc.seed), "scores": {},
  }
  for name, scorer in by_name.items():
    values = scorers.score_responses(scorer, prompts, s["responses"], name in hc.with_prompt).astype(np.float64)
    result["scores"][name] = {**_summary(values), "values": values.round(6).tolist()}
  if hc.corpus:
    tokens = lm_pipeline.prepare_lm_tokens(hc.corpus, policy.tokenizer)
    result["perplexity"] = _perplexity(policy, tokens.validation_M[:hc.perplexity_tokens], mesh)
  if fluency is not None:
    ids = [fluency.tokenizer.eos_id]
    for prompt, response in zip(prompts, s["responses"]):
      ids += fluency.tokenizer.encode(prompt + response) + [fluency.tokenizer.eos_id]
    result["fluency_perplexity"] = _perplexity(fluency, np.asarray(ids, np.int32), mesh)
  name = f"{workdir}@{policy.step}"
  return result, RunSamples(name=name, prompts=prompts, responses=s["responses"])


def compare_runs(a: RunSamples, b: RunSamples, hc: HarnessConfig, judges: dict[str, Any]) -> dict[str, Any]:
  """Win rates of a against b by every judge (and people, through `hc.store`)."""
  out: dict[str, Any] = {"a": a.name, "b": b.name}
  for name, scorer in judges.items():
    texts_a, texts_b = a.responses, b.responses
    if name in hc.with_prompt:
      texts_a, texts_b = [p + t for p, t in zip(a.prompts, texts_a)], [p + t for p, t in zip(b.prompts, texts_b)]
    out[name] = head_to_head.win_rate(head_to_head.scorer_outcomes(scorer, texts_a, texts_b), seed=hc.seed)
  if hc.labeler_beta > 0:
    labeler = labelers.SimulatedLabeler(next(iter(judges.values())), beta=hc.labeler_beta, tie_margin=0.05,
                                        seed=hc.seed)
    out[labeler.name] = head_to_head.win_rate(head_to_head.labeler_outcomes(labeler, a.responses, b.responses),
                                              seed=hc.seed)
  if hc.store:
    with FeedbackStore(hc.store) as store:
      out["pairs_in_store"] = head_to_head.push_pairs(store, a.prompts, a.responses, b.responses,
                                                      model_a=a.name, model_b=b.name)
      out["people"] = head_to_head.win_rate(head_to_head.store_outcomes(store, model_a=a.name, model_b=b.name),
                                            seed=hc.seed)
  return out


def evaluate(workdirs: Sequence[str | Path], hc: HarnessConfig, out: str | Path, mesh=None) -> dict[str, Any]:
  """Evaluates every run, plays the first against the others, writes eval.json/md/png to `out`."""
  if not workdirs:
    raise UserError("expected at least one run's workdir")
  mesh = mesh if mesh is not None else sharding.make_mesh()
  sharding.check_batch_divisible(hc.batch_size, mesh, "eval.batch_size")
  first = trained.load_tokenizer(trained.resolve(workdirs[0])) if hc.prompts not in PROMPT_SETS else None
  prompts = load_prompts(hc.prompts, first)[:hc.num_prompts]
  by_name = {name: scorers.get_scorer(name) for name in hc.scorers}
  judges = {name: by_name.get(name) or scorers.get_scorer(name) for name in hc.judges}
  fluency = trained.load(hc.fluency_lm, mesh) if hc.fluency_lm else None
  runs, samples = [], []
  for workdir in workdirs:
    result, run_samples = evaluate_run(workdir, hc, mesh, prompts, by_name, fluency)
    runs.append(result)
    samples.append(run_samples)
  report = {"settings": dataclasses.asdict(hc), "prompt_set": hc.prompts, "num_prompts": len(prompts), "runs": runs,
            "head_to_head": [compare_runs(samples[0], other, hc, judges) for other in samples[1:]],
            "samples": [{"prompt": p, **{f"run_{i}": s.responses[j] for i, s in enumerate(samples)}}
                        for j, p in enumerate(prompts[:8])]}
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  files.atomic_write_bytes(out / "eval.json", (json.dumps(logs.json_ready(report), indent=2) + "\n").encode())
  files.atomic_write_bytes(out / "eval.md", markdown(report).encode())
  plot(report, out / "eval.png")
  return report


def _fmt(x) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown(report: dict) -> str:
  runs = report["runs"]
  scorer_names = list(runs[0]["scores"])
  head = ["run", "step", *[f"{s} (mean)" for s in scorer_names], "KL", "length", "EOS", "distinct-1", "distinct-2",
          "self-BLEU", "perplexity", "fluency ppl"]
  lines = [f"# Evaluation: {report['num_prompts']} prompts of `{report['prompt_set']}`, seed "
           f"{report['settings']['seed']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in runs:
    cells = [r["run"], str(r["step"]), *[_fmt(r["scores"][s]["mean"]) for s in scorer_names], _fmt(r["kl"]),
             _fmt(r["response_length"]), _fmt(r["eos_rate"]), _fmt(r["distinct_1"]), _fmt(r["distinct_2"]),
             _fmt(r["self_bleu"]), _fmt(r.get("perplexity")), _fmt(r.get("fluency_perplexity"))]
    lines.append("| " + " | ".join(cells) + " |")
  for h in report["head_to_head"]:
    lines += ["", f"## {h['a']} against {h['b']}", "", "| judge | win rate of A | 95% interval | A wins | B wins | ties |",
              "|---|---|---|---|---|---|"]
    for judge, w in h.items():
      if isinstance(w, dict):
        lines.append(f"| {judge} | {_fmt(w['win_rate'])} | {_fmt(w['ci_low'])} - {_fmt(w['ci_high'])} | "
                     f"{w['wins']} | {w['losses']} | {w['ties']} |")
    if "pairs_in_store" in h:
      lines.append(f"\n{h['pairs_in_store']} pairs are in the feedback store for people "
                   f"(`rlhf-jax label --store {report['settings']['store']}`); the people row counts their verdicts.")
  lines += ["", "## Samples", ""]
  for s in report["samples"]:
    lines.append(f"- **{s['prompt']}** " + " / ".join(f"[{k[4:]}] {v!r}" for k, v in s.items() if k != "prompt"))
  return "\n".join(lines) + "\n\n![eval](eval.png)\n"


def plot(report: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = report["runs"]
  scorer_names = list(runs[0]["scores"])
  fig, axes = plt.subplots(1, len(scorer_names) + 1, figsize=(4.2 * (len(scorer_names) + 1), 3.4), squeeze=False)
  for ax, name in zip(axes[0], scorer_names):
    values = [r["scores"][name]["values"] for r in runs]
    bins = np.histogram_bin_edges(np.concatenate(values), bins=20)
    for r, v in zip(runs, values):
      ax.hist(v, bins=bins, alpha=0.5, label=f"{Path(r['run']).name}@{r['step']}")
    ax.set(title=f"{name} score", xlabel="score", ylabel="samples")
  ax = axes[0][-1]
  for r in runs:
    ax.scatter(r["kl"], r["scores"][scorer_names[0]]["mean"], label=f"{Path(r['run']).name}@{r['step']}")
  ax.set(title=f"{scorer_names[0]} against KL", xlabel="KL (nats/sequence)", ylabel="mean score")
  for a in axes[0]:
    a.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
