"""Rubrics, and simulated experts who score answers on them from checkable signals.

A rubric is data: named criteria, each with a scale and optional guidance for the person scoring
(`DEFAULT`: accuracy, fluency and satisfaction, 1..5). People score a question's answer on each
criterion (`FeedbackStore.score`); in experiments `SimulatedExpert`s stand in for them, as the
lexicon labelers stand in for people comparing pairs. An expert's score of a criterion is a
signal on the 1..scale range, plus the expert's bias for that criterion and Gaussian noise, rounded
and clipped to the scale:

- accuracy: `scale` when the answer is right (`data.wordnet_qa.is_correct` against every gold
  answer), 1 when it is empty, 2 when it is wrong;
- fluency: the mean log-probability per token of the answer under a separate language model
  (`fluency_logp`, nats), mapped linearly from `FLUENCY_NATS` = (-6, -1) to 1..scale;
- satisfaction: 0.6 accuracy + 0.25 fluency + 0.15 brevity, where brevity is `scale` for an answer
  of at most 4 words, falling linearly to 1 at 20 words and more (a person wants the right answer,
  readable and short).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from rlhf_jax.data import wordnet_qa

FLUENCY_NATS = (-6.0, -1.0)  # mean log-prob per token that maps to the lowest and the highest fluency
SATISFACTION_MIX = {"accuracy": 0.6, "fluency": 0.25, "brevity": 0.15}


@dataclasses.dataclass(frozen=True)
class Criterion:
  name: str
  scale: int = 5
  guidance: str = ""

  def __post_init__(self):
    if not self.name or self.scale < 2:
      raise ValueError(f"criterion: expected a name and a scale >= 2, got {self.name!r}, {self.scale}")


@dataclasses.dataclass(frozen=True)
class Rubric:
  criteria: tuple[Criterion, ...]

  def __post_init__(self):
    names = [c.name for c in self.criteria]
    if not names or len(set(names)) != len(names):
      raise ValueError(f"rubric: expected distinct criteria, got {names}")

  @property
  def scales(self) -> dict[str, int]:
    return {c.name: c.scale for c in self.criteria}

  @classmethod
  def parse(cls, spec: str) -> "Rubric":
    """`"accuracy:5,fluency:5,satisfaction:3"` (a criterion without `:N` is scored 1..5)."""
    criteria = []
    for item in (part.strip() for part in spec.split(",") if part.strip()):
      name, _, scale = item.partition(":")
      try:
        criteria.append(Criterion(name.strip(), int(scale) if scale else 5))
      except ValueError:
        raise ValueError(f"rubric: expected NAME[:SCALE] items separated by commas, got {item!r}") from None
    return cls(tuple(criteria))


DEFAULT = Rubric((
    Criterion("accuracy", 5, "Is the answer right? 5: right; 1: no answer at all."),
    Criterion("fluency", 5, "Is it well-formed English, whatever its content? 5: reads naturally."),
    Criterion("satisfaction", 5, "Would the person who asked be happy with it? Right, readable, to the point."),
))


def _linear(x: np.ndarray, lo: float, hi: float, scale: int) -> np.ndarray:
  return 1.0 + (scale - 1) * np.clip((x - lo) / (hi - lo), 0.0, 1.0)


@dataclasses.dataclass
class SimulatedExpert:
  """Scores answers on `rubric` (module docstring) with per-criterion `bias` and Gaussian `noise`
  (in scale points), the draws fixed by `seed` and taken in order of the answers scored."""
  rubric: Rubric = DEFAULT
  fluency_logp: Callable[[Sequence[str], Sequence[str]], np.ndarray] | None = None  # (prompts, answers) -> nats
  noise: float = 0.5
  bias: dict[str, float] = dataclasses.field(default_factory=dict)
  seed: int = 0
  name: str = "expert"

  def __post_init__(self):
    self._rng = np.random.default_rng(self.seed)

  def signals(self, prompts: Sequence[str], answers: Sequence[str],
              gold: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Each criterion's noiseless score (floats in 1..scale) of each answer."""
    unknown = [c.name for c in self.rubric.criteria if c.name not in ("accuracy", "fluency", "satisfaction")]
    if unknown:
      raise ValueError(f"no simulated signal for criteria {unknown} (accuracy, fluency, satisfaction)")
    needs_lm = any(c.name in ("fluency", "satisfaction") for c in self.rubric.criteria)
    if needs_lm and self.fluency_logp is None:
      raise ValueError("fluency and satisfaction need fluency_logp (a language model's log-probs)")
    # Each signal computed once (the fluency LM runs once however many criteria read it), then put
    # on each criterion's own scale.
    correct = np.array([wordnet_qa.is_correct(a, g) for a, g in zip(answers, gold)])
    empty = np.array([not a.strip() for a in answers])
    logp = np.asarray(self.fluency_logp(prompts, answers), np.float64) if needs_lm else None
    words = np.array([len(a.split()) for a in answers], np.float64)
    out = {}
    for c in self.rubric.criteria:
      accuracy = np.where(correct, c.scale, np.where(empty, 1.0, 2.0))
      if c.name == "accuracy":
        out[c.name] = accuracy
        continue
      fluency = _linear(logp, *FLUENCY_NATS, c.scale)
      brevity = _linear(-words, -20.0, -4.0, c.scale)
      out[c.name] = fluency if c.name == "fluency" else (
          SATISFACTION_MIX["accuracy"] * accuracy + SATISFACTION_MIX["fluency"] * fluency
          + SATISFACTION_MIX["brevity"] * brevity)
    return out

  def score(self, prompts: Sequence[str], answers: Sequence[str],
            gold: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Each criterion's integer score in 1..scale of each answer: signal + bias + noise, rounded."""
    return self.score_signals(self.signals(prompts, answers, gold))

  def score_signals(self, signals: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`score` from signals already computed (`signals`, by any expert with the same rubric and
    fluency LM: experts differ only in bias and noise, so a panel computes the signals once)."""
    return {c.name: np.clip(np.rint(signals[c.name] + self.bias.get(c.name, 0.0)
                                    + self.noise * self._rng.standard_normal(len(signals[c.name]))), 1,
                            c.scale).astype(int)
            for c in self.rubric.criteria}
