"""Gao et al. 2022's functional forms: exact recovery of known coefficients, and a fit by hand."""

import numpy as np
import pytest

from rlhf_jax.eval import overoptimization as oo


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_recovers_known_coefficients(form):
  d = np.linspace(0.0, 4.0, 17)
  y = oo.predict(d, 1.3, 0.4, form)
  got = oo.fit(d, y, form)
  assert got["alpha"] == pytest.approx(1.3) and got["beta"] == pytest.approx(0.4)
  assert got["r2"] == pytest.approx(1.0) and got["rmse"] < 1e-12 and got["n"] == 17
  noisy = oo.fit(d, y + np.random.default_rng(0).normal(0, 0.05, d.size), form)
  assert abs(noisy["alpha"] - 1.3) < 0.2 and 0.9 < noisy["r2"] < 1.0


def test_bon_fit_by_hand():
  # Points (1, 1), (2, 0), (3, -3) lie exactly on d (2 - d): alpha 2, beta 1.
  got = oo.fit([1.0, 2.0, 3.0], [1.0, 0.0, -3.0], "bon")
  assert (got["alpha"], got["beta"]) == (pytest.approx(2.0), pytest.approx(1.0))
  # RL form at d = e: R = e (alpha - beta).
  assert oo.predict([np.e], 2.0, 1.0, "rl")[0] == pytest.approx(np.e * (2.0 - 1.0))
  assert oo.predict([0.0], 2.0, 1.0, "rl")[0] == 0.0


def test_fit_rejects_bad_input():
  with pytest.raises(ValueError, match="form"):
    oo.fit([1, 2, 3], [1, 2, 3], "ppo")
  with pytest.raises(ValueError, match="at least 3"):
    oo.fit([1, 2], [1, 2], "bon")
  with pytest.raises(ValueError, match="same|one length"):
    oo.fit([1, 2, 3], [1, 2], "bon")


def test_plot_draws_gold_and_proxy_with_and_without_a_fit(tmp_path):
  d = [0.0, 0.5, 1.0, 1.5]
  entry = {"d": d, "gold_gain": [0.0, 0.4, 0.6, 0.5], "proxy_gain": [0.0, 1.0, 2.0, 3.0]}
  bon = dict(entry, fit=oo.fit(np.array(d), np.array(entry["gold_gain"]), "bon"))
  oo.plot({"small": {"bon": bon, "ppo": dict(entry, fit=None)}}, tmp_path / "plot.png")
  assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
