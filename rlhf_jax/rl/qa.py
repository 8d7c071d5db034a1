"""Question answering judged by the rubric experts: every method's answers to the same held-out
questions, scored on each criterion by the experts' noiseless signals (`feedback.rubric`).

  pool = answer_pool(sample, params, frozen, prompts, tokenizer, n=8, ...)   # [P, n] answers
  row = judge(prompts.texts, pool.best_by_reward(), gold, expert)          # best-of-8 by the reward

A method is a sampler of the RL trainer's kind (`trainer.make_sampler`; ILQL's advantage decoding,
`offline_ilql.make_sampler`) and its parameters; the reference is the SFT policy every method
started from, so `kl` is each answer's log pi(y|x) - log pi_sft(y|x) summed over its tokens, as
the trainer reports it (best-of-n: the bound log n - (n-1)/n, Stiennon et al. 2020). `judge`
reports accuracy (a right answer by `data.wordnet_qa.is_correct`: the experts' accuracy signal
without noise, as a rate), each criterion's mean noiseless score on its scale, the reward model's
mean raw reward, and the answer length in tokens.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sharding
from rlhf_jax.advantages import sequence_kl
from rlhf_jax.data import rows, wordnet_qa
from rlhf_jax.feedback.rubric import SimulatedExpert
from rlhf_jax.rl.task import Prompts


@dataclasses.dataclass(frozen=True)
class Pool:
  """n answers to each of P questions, with their reward, KL to the reference and length ([P, n])."""
  texts: list[list[str]]
  reward_PxN: np.ndarray
  kl_PxN: np.ndarray
  length_PxN: np.ndarray

  def first(self) -> "Pool":
    return self.pick(np.zeros(len(self.texts), np.int64))

  def best_by_reward(self) -> "Pool":
    """Each question's answer with the highest reward (ties: the first), KL the best-of-n bound."""
    n = self.reward_PxN.shape[1]
    best = self.pick(np.argmax(self.reward_PxN, axis=1))
    return dataclasses.replace(best, kl_PxN=np.full_like(best.kl_PxN, math.log(n) - (n - 1) / n))

  def pick(self, index_P: np.ndarray) -> "Pool":
    take = lambda x: np.take_along_axis(x, index_P[:, None], axis=1)  # noqa: E731
    return Pool([[t[i]] for t, i in zip(self.texts, index_P)], take(self.reward_PxN), take(self.kl_PxN),
                take(self.length_PxN))


def answer_pool(sample, params, frozen: dict, prompts: Prompts, tokenizer, *, n: int, batch_size: int,
                key: jax.Array, temperature: jax.Array, mesh: Mesh) -> Pool:
  """n samples of `params` for each prompt (`sample` as `trainer.make_sampler` returns; batch i of
  the prompt-major rows with `fold_in(key, i)`), with raw reward and KL to `frozen["ref"]`."""
  arrays = {"p": np.repeat(prompts.tokens_NxP, n, axis=0), "m": np.repeat(prompts.mask_NxP, n, axis=0)}
  texts, rewards, kls, lengths = [], [], [], []
  for i, batch in enumerate(rows.eval_row_batches(arrays, batch_size)):
    placed = sharding.put_batch({"p": batch["p"], "m": batch["m"]}, mesh)
    r, raw_B = sample(params, frozen, placed["p"], placed["m"], jax.random.fold_in(key, i), temperature)
    real = int(batch["row_mask"].sum())
    texts += rollout_lib.decode_responses(tokenizer, r.response_BxN[:real], r.response_mask_BxN[:real])
    rewards.append(np.asarray(raw_B, np.float64)[:real])
    kls.append(np.asarray(sequence_kl(r.logp_BxN, r.ref_logp_BxN, r.response_mask_BxN), np.float64)[:real])
    lengths.append(np.asarray(r.response_mask_BxN).sum(-1)[:real])
  shape = (len(prompts), n)
  return Pool([texts[i * n:(i + 1) * n] for i in range(len(prompts))], np.concatenate(rewards).reshape(shape),
              np.concatenate(kls).reshape(shape), np.concatenate(lengths).reshape(shape).astype(np.float64))


def judge(questions: Sequence[str], pool: Pool, gold: Sequence[Sequence[str]],
          expert: SimulatedExpert) -> dict[str, float]:
  """The metrics of each question's first answer in `pool` (module docstring)."""
  answers = [t[0] for t in pool.texts]
  signals = expert.signals(questions, answers, gold)
  out = {"accuracy": float(np.mean([wordnet_qa.is_correct(a, g) for a, g in zip(answers, gold)]))}
  out.update({f"{name}_score": float(np.mean(values)) for name, values in signals.items()})
  out.update(reward=float(pool.reward_PxN[:, 0].mean()), kl=float(pool.kl_PxN[:, 0].mean()),
             length=float(pool.length_PxN[:, 0].mean()))
  return out


# The table's columns: (key, header, format).
COLUMNS = (("accuracy", "accuracy", "{:.3f}"), ("accuracy_score", "accuracy 1-5", "{:.2f}"),
           ("fluency_score", "fluency 1-5", "{:.2f}"), ("satisfaction_score", "satisfaction 1-5", "{:.2f}"),
           ("reward", "RM reward", "{:.2f}"), ("kl", "KL to SFT", "{:.2f}"), ("length", "tokens", "{:.1f}"))


def summary(results: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
  """{method: {metric: (mean, sd)}} over runs (seeds), each `results[k]` = {method: metrics}."""
  methods = list(dict.fromkeys(m for r in results for m in r))
  return {m: {key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
              for key in results[0][m] for v in [[r[m][key] for r in results if m in r]]}
          for m in methods}


def markdown(table: dict[str, dict[str, tuple[float, float]]], runs: int) -> str:
  head = "| method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
  for method, metrics in table.items():
    cells = [(fmt.format(metrics[k][0]) + (f" ± {fmt.format(metrics[k][1])}" if runs > 1 else "")) if k in metrics
             else "" for k, _, fmt in COLUMNS]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(table: dict[str, dict[str, tuple[float, float]]], path: str | Path) -> None:
  """Accuracy and satisfaction of each method against its KL to the SFT policy (mean ± sd)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label in ((axes[0], "accuracy", "accuracy (held-out questions)"),
                         (axes[1], "satisfaction_score", "satisfaction (experts' signal, 1-5)")):
    for method, metrics in table.items():
      (x, xs), (y, ys) = metrics["kl"], metrics[key]
      ax.errorbar([x], [y], xerr=[xs], yerr=[ys], fmt="o", capsize=3, label=method)
      ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("KL to the SFT policy (nats per answer)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_json(path: str | Path, value) -> None:
  Path(path).write_text(json.dumps(value, indent=2) + "\n")


def agreement(reward_eval: dict[str, float]) -> dict[str, dict[str, float]]:
  """{criterion: {"correlation", "accuracy"}} from a rubric reward model's evaluation record
  (`<criterion>_correlation`, `<criterion>_accuracy`: held-out agreement with the experts)."""
  names = [k[:-len("_correlation")] for k in reward_eval if k.endswith("_correlation")]
  return {n: {"correlation": reward_eval[f"{n}_correlation"], "accuracy": reward_eval[f"{n}_accuracy"]} for n in names}


def agreement_markdown(runs: Sequence[dict[str, dict[str, float]]]) -> str:
  """The reward model's held-out agreement with the experts per criterion, mean ± sd over runs."""
  lines = ["| criterion | correlation with the experts' scores | exact-level accuracy |", "|---|---|---|"]
  for name in runs[0]:
    cells = []
    for key in ("correlation", "accuracy"):
      values = [r[name][key] for r in runs]
      sd = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
      cells.append(f"{np.mean(values):.2f}{sd}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
