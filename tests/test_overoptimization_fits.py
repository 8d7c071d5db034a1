"""Gao et al. 2022's functional forms: exact recovery of known coefficients, and a fit by hand; the
points, fits, tables and files of the overoptimization experiment, from hand-made runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax import logs, report
from rlhf_jax.eval import overoptimization_fits as oo


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


def test_plot_draws_gold_and_proxy_with_and_without_a_fit(tmp_path, saved_figures):
  d = [0.0, 0.5, 1.0, 1.5]
  entry = {"d": d, "gold_gain": [0.0, 0.4, 0.6, 0.5], "proxy_gain": [0.0, 1.0, 2.0, 3.0]}
  bon = dict(entry, fit=oo.fit(np.array(d), np.array(entry["gold_gain"]), "bon"))
  oo.plot({"small": {"bon": bon, "ppo": dict(entry, fit=None)}}, tmp_path / "plot.png")
  bon_gold, ppo_gold, bon_proxy, ppo_proxy = saved_figures[tmp_path / "plot.png"].axes
  for ax, y in ((bon_gold, entry["gold_gain"]), (ppo_gold, entry["gold_gain"]), (bon_proxy, entry["proxy_gain"]),
                (ppo_proxy, entry["proxy_gain"])):
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [list(p) for p in zip(d, y)]
  # The best-of-n fit drawn from d = 0 to the largest d: d (alpha - beta d); the PPO column has none.
  curves = [line for ax in (bon_gold, ppo_gold) for line in ax.lines if len(line.get_xdata()) > 2]  # not y = 0
  assert len(curves) == 1 and curves[0].axes is bon_gold
  x, y = curves[0].get_xdata(), curves[0].get_ydata()
  assert (x[0], x[-1], len(x)) == (0.0, 1.5, 100)
  alpha, beta = bon["fit"]["alpha"], bon["fit"]["beta"]
  assert beta > 0 and y[-1] == pytest.approx(1.5 * alpha - 2.25 * beta) and y[0] == 0.0


def _run(path: Path, evals: list[dict]) -> Path:
  """A run's workdir whose metrics.jsonl holds `evals` as its 'eval' records (steps 0, 1, ...)."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"seed": 0}))
  (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "eval", **r}) + "\n"
                                              for s, r in enumerate(evals)))
  return path


def _evals(points: list[tuple[float, float, float]]) -> list[dict]:
  return [{"kl": kl, "gold_score": g, "proxy_score": p} for kl, g, p in points]


def test_gains_are_over_each_runs_first_evaluation_and_tables_name_missing_peaks(tmp_path):
  a = report.load_run(_run(tmp_path / "a", _evals([(0.0, 0.5, 1.0), (-0.2, 0.7, 2.0), (4.0, 0.4, 3.0)])))
  b = report.load_run(_run(tmp_path / "b", _evals([(0.01, 0.1, -1.0), (1.0, 0.3, 0.0)])))
  d, gold, proxy = oo.gold_gains([a, b])
  assert d.tolist() == pytest.approx([0.0, 0.0, 2.0, 0.1, 1.0])  # a KL estimate below 0 counts as 0
  assert gold.tolist() == pytest.approx([0.0, 0.2, -0.1, 0.0, 0.2])
  assert proxy.tolist() == pytest.approx([0.0, 1.0, 2.0, 0.0, 1.0])
  with pytest.raises(ValueError, match="no 'eval' records"):
    oo.gold_gains([report.load_run(_run(tmp_path / "empty", []))])
  fits = {"bon": {"alpha": 2.0, "beta": 1.0, "r2": 0.9, "n": 3}, "ppo": {"alpha": 1.0, "beta": -0.5, "r2": 0.5, "n": 3}}
  entry = {"proxy_accuracy": 0.75, **{m: {"d": [0.0, 1.0], "gold_gain": [0.0, 0.3], "proxy_gain": [0, 1],
                                          "fit": fit} for m, fit in fits.items()}}
  text = oo.markdown({"d64,prompts=512": entry})
  assert "| d64,prompts=512 | 0.750 | bon | 2 | 1.00 | 0.300 | 2.000 | 1.000 | 0.90 | 1 |" in text  # d* = 2 / (2 * 1)
  assert "| ppo | 2 | 1.00 | 0.300 | 1.000 | -0.500 | 0.50 | none (beta <= 0) |" in text
  # The RL form's peak: exp(alpha / beta - 1); a method without a fit has dashes.
  entry["ppo"]["fit"] = {"alpha": 1.0, "beta": 0.5, "r2": 0.5, "n": 3}
  entry["bon"]["fit"] = None
  text = oo.markdown({"p": entry})
  assert f"| 1.000 | 0.500 | 0.50 | {np.e:.3g} |" in text and "| bon | 2 | 1.00 | 0.300 | - | - | - | - |" in text


def test_a_proxy_entry_pools_its_seeds_and_the_report_writes_every_file(tmp_path, saved_figures):
  proxies = [_run(tmp_path / "proxy" / f"s{s}", [{"accuracy_vs_noiseless": 0.5}, {"accuracy_vs_noiseless": acc}])
             for s, acc in ((0, 0.7), (1, 0.8))]
  bon = [_run(tmp_path / "bon" / f"s{s}", _evals([(0.0, 0.1, 0.0), (1.0, 0.4 + s, 1.0), (4.0, 0.3, 2.0)]))
         for s in (0, 1)]
  ppo = [_run(tmp_path / "ppo" / "s0", _evals([(0.0, 0.0, 0.0), (1.0, 0.1, 1.0)]))]
  entry = oo.proxy_entry(proxies, {"bon": bon, "ppo": ppo})
  assert entry["proxy_accuracy"] == pytest.approx(0.75)  # the final evaluations' mean
  assert entry["bon"]["d"] == [0.0, 1.0, 2.0] * 2
  assert entry["bon"]["gold_gain"] == pytest.approx([0, 0.3, 0.2, 0, 1.3, 0.2])
  assert entry["bon"]["fit"] == oo.fit(entry["bon"]["d"], entry["bon"]["gold_gain"], "bon")
  assert entry["ppo"]["fit"] is None  # two points: nothing to fit
  result, text = oo.write_report({"p": entry}, tmp_path)
  assert result == {"proxies": {"p": entry}}
  assert json.loads((tmp_path / "overoptimization.json").read_text()) == logs.json_ready(result)
  assert (tmp_path / "overoptimization.md").read_text() == text and "| p | 0.750 | bon | 6 |" in text
  bon_gold = saved_figures[tmp_path / "overoptimization.png"].axes[0]
  np.testing.assert_allclose(bon_gold.collections[0].get_offsets(),  # every evaluation of both seeds
                             [[0, 0], [1, 0.3], [2, 0.2], [0, 0], [1, 1.3], [2, 0.2]], atol=1e-12)
