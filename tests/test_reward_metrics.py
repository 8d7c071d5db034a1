"""Tests for rlhf_jax.eval.reward_metrics: ROC AUC, calibration and pairwise metrics on hand-checked inputs."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_jax.eval import reward_metrics


def test_roc_auc_hand_values():
  assert reward_metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
  assert reward_metrics.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
  # Positives {0.35, 0.8}, negatives {0.1, 0.4}: of the 4 (pos, neg) pairs, 0.35 beats 0.1,
  # 0.8 beats both -> 3/4.
  assert reward_metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
  # Positives {1, 2, 2}, negatives {2, 0}: wins 1>0, 2>0, 2>0 = 3, ties 2=2 twice = 2 x 1/2,
  # losses 1<2 -> (3 + 1) / 6.
  assert reward_metrics.roc_auc([1, 2, 2, 2, 0], [1, 1, 1, 0, 0]) == pytest.approx(4 / 6)
  assert reward_metrics.roc_auc([5, 5, 5], [1, 0, 1]) == 0.5  # all tied


def test_roc_auc_matches_pairwise_count():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, size=60).astype(float)  # many ties
  labels = rng.random(60) < 0.4
  pos, neg = scores[labels], scores[~labels]
  expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
  assert reward_metrics.roc_auc(scores, labels) == pytest.approx(expected / (len(pos) * len(neg)))


def test_roc_auc_errors():
  with pytest.raises(ValueError, match="both classes"):
    reward_metrics.roc_auc([0.1, 0.2], [1, 1])
  with pytest.raises(ValueError, match="same length"):
    reward_metrics.roc_auc([0.1, 0.2], [1])
  with pytest.raises(ValueError, match="labels"):
    reward_metrics.roc_auc([0.1, 0.2], [1, 2])
  with pytest.raises(ValueError, match="scores"):
    reward_metrics.roc_auc([np.nan, 0.2], [1, 0])


def test_calibration_hand_values():
  # Two bins of width 1/2. Bin [0, .5): p = .1, .3 -> conf .2, outcomes 0, 1 -> acc .5, |gap| .3.
  # Bin [.5, 1]: p = .8, 1.0 -> conf .9, outcomes 1, 1 -> acc 1, |gap| .1. ECE = .5*.3 + .5*.1.
  cal = reward_metrics.calibration([0.1, 0.3, 0.8, 1.0], [0, 1, 1, 1], num_bins=2)
  assert cal["ece"] == pytest.approx(0.2)
  assert cal["brier"] == pytest.approx((0.01 + 0.49 + 0.04 + 0.0) / 4)
  assert [b["count"] for b in cal["bins"]] == [2, 2]
  assert cal["bins"][1]["mean_prob"] == pytest.approx(0.9)
  assert cal["bins"][0]["frac_positive"] == pytest.approx(0.5)


def test_calibration_of_a_calibrated_forecaster_is_near_zero():
  rng = np.random.default_rng(0)
  p = rng.random(200_000)
  y = rng.random(p.size) < p  # outcomes drawn with exactly the predicted probability
  assert reward_metrics.calibration(p, y)["ece"] < 0.01
  overconfident = np.where(p > 0.5, 1.0, 0.0)  # same ranking, extreme probabilities
  assert reward_metrics.calibration(overconfident, y)["ece"] > 0.2


def test_pairwise_metrics():
  m = reward_metrics.pairwise_metrics([2.0, -1.0, 0.0, 3.0], [1, 1, 0, 0])
  assert m["accuracy"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)  # a zero margin is half right
  probs = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.0, 3.0])))
  assert m["brier"] == pytest.approx(np.mean((probs - [1, 1, 0, 0]) ** 2))
  assert reward_metrics.pairwise_metrics([800.0, -800.0], [1, 0])["log_loss"] < 1e-6  # no overflow


def test_calibration_errors():
  with pytest.raises(ValueError, match="probs"):
    reward_metrics.calibration([1.5], [1])
  with pytest.raises(ValueError, match="outcomes"):
    reward_metrics.calibration([0.5], [2])
  with pytest.raises(ValueError, match="same length"):
    reward_metrics.calibration([0.5, 0.5], [1])
