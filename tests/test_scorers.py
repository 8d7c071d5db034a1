"""Tests for rlhf_jax.rewards.scorers: the lexicons, the registry, Python functions, checked scores."""

import numpy as np
import pytest

from rlhf_jax.rewards import scorers

POSITIVE = "This is wonderful. I love it, the best and most delicious snack I have ever had!"
NEGATIVE = "This is awful. I hate it, the worst and most disgusting snack I have ever had."


# The sentiment lexicons: every scorer but the QA gold, which judges an answer to its question.
LEXICONS = sorted(name for name, make in scorers.SCORERS.items() if not getattr(make, "reads_prompt", False))


@pytest.mark.parametrize("name", LEXICONS)
def test_lexicon_scorers_rank_positive_above_negative(name):
  scorer = scorers.get_scorer(name)
  assert isinstance(scorer, scorers.Scorer)
  assert scorer.name == name
  scores = scorer.score([POSITIVE, NEGATIVE, ""])
  assert scores.dtype == np.float32 and scores.shape == (3,)
  assert scores[0] > 0 > scores[1]
  assert scores[2] == 0
  bounds = scorers.score_range_of(scorer)
  if bounds is not None:
    assert bounds[0] <= scores.min() and scores.max() <= bounds[1]


def test_afinn_normalized_is_mean_valence_per_word():
  raw, per_word = scorers.AfinnScorer(), scorers.AfinnScorer(normalize=True)
  assert per_word.name == "afinn-per-word" and per_word.score_range == (-5.0, 5.0)
  assert raw.score_range is None
  # "good" is +3 in AFINN-en-165; 4 words.
  assert raw.score(["good good good good"])[0] == 12
  assert per_word.score(["good good good good", "good and so on"]).tolist() == [3.0, 0.75]


def test_get_scorer_suggests_nearest_name():
  with pytest.raises(ValueError, match=r"unknown scorer 'vadr'; did you mean 'vader'\?"):
    scorers.get_scorer("vadr")
  with pytest.raises(ValueError, match="afinn, textblob, vader"):
    scorers.get_scorer("txtblob")


def test_python_function_scorer(tmp_path, monkeypatch):
  (tmp_path / "my_rewards.py").write_text("def exclaim(texts):\n  return [t.count('!') for t in texts]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  scorer = scorers.get_scorer("py:my_rewards:exclaim")
  assert scorer.name == "py:my_rewards:exclaim"
  np.testing.assert_array_equal(scorer.score(["a!", "b!!!", "c"]), [1, 3, 0])
  with pytest.raises(ValueError, match="has no attribute 'missing'"):
    scorers.get_scorer("py:my_rewards:missing")
  with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
    scorers.get_scorer("py:no_such_module_xyz:f")
  with pytest.raises(ValueError, match="expected py:MODULE:FUNCTION"):
    scorers.get_scorer("py:my_rewards")


class Length:
  name = "len"

  def score(self, texts):
    return [len(t) for t in texts]


def test_score_responses_scores_the_response_or_the_prompt_and_response():
  prompts, responses = ["ab", "abcd"], ["xyz", ""]
  np.testing.assert_array_equal(scorers.score_responses(Length(), prompts, responses, False), [3, 0])
  np.testing.assert_array_equal(scorers.score_responses(Length(), prompts, responses, True), [5, 4])
  assert scorers.score_responses(Length(), prompts, responses, True).dtype == np.float32


def test_scores_are_checked_for_shape_and_finiteness():
  class Bad:
    name = "bad"

    def __init__(self, out):
      self.out = out

    def score(self, texts):
      return self.out

  with pytest.raises(ValueError, match=r"scorer 'bad': expected scores of shape \(2,\)"):
    scorers.score_texts(Bad([1.0]), ["a", "b"])
  with pytest.raises(ValueError, match="score of text 1 is nan"):
    scorers.score_texts(Bad([1.0, float("nan")]), ["a", "b"])
