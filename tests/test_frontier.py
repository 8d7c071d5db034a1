"""Reward-KL frontiers (rlhf_jax.eval.frontier) on hand-made runs, and the frontier experiment's smoke run."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
from matplotlib.collections import PathCollection

from rlhf_jax import logs, report, runs, sweep
from rlhf_jax.eval import frontier

ROOT = Path(__file__).resolve().parents[1]


def _run(path: Path, config: dict, evals: list[tuple[int, float, float]]) -> report.RunRecords:
  """A run's workdir with eval records (step, kl, gold), plus a train record that must be ignored."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  lines = [{"step": 1, "split": "train", "kl": 99.0, "gold_score": 99.0}]
  lines += [{"step": s, "split": "eval", "kl": kl, "gold_score": g} for s, kl, g in evals]
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  return report.load_run(path)


@pytest.fixture
def points(tmp_path):
  ppo = [_run(tmp_path / "ppo" / f"b{beta},s{seed}", {"ppo": {"kl_coef": beta}, "seed": seed}, evals)
         for beta, seed, evals in [(0.1, 0, [(25, 1.0, 0.2), (50, 3.0, 0.4)]),
                                   (0.1, 1, [(25, 2.0, 0.3), (50, 5.0, 0.6)]),
                                   (0.5, 0, [(50, 0.5, 0.1)])]]
  bon = [_run(tmp_path / "bon" / f"s{seed}", {"seed": seed}, [(1, 0.0, 0.05 + seed), (4, 1.5, 0.25 + seed)])
         for seed in (0, 1)]
  return frontier.collect(ppo, "ppo", "ppo.kl_coef") + frontier.collect(bon, "bon", frontier.STEP)


def test_each_setting_is_the_mean_of_its_seeds_final_evaluations(points):
  settings = frontier.by_setting(points)
  assert list(settings) == ["ppo", "bon"]
  ppo = {r["setting"]: r for r in settings["ppo"]}
  assert ppo[0.1]["n"] == 2 and ppo[0.1]["kl"] == pytest.approx(4.0) and ppo[0.1]["gold"] == pytest.approx(0.5)
  # Two values 0.4 and 0.6: sd 0.1414, t(0.975, 1) = 12.706, interval 12.706 * 0.1414 / sqrt(2) = 1.2706.
  assert ppo[0.1]["gold_ci95"] == pytest.approx(1.2706, rel=1e-4)
  assert ppo[0.5]["n"] == 1 and math.isnan(ppo[0.5]["gold_ci95"])
  # Best-of-n: every evaluation is a setting (n), none of them a point on the way.
  assert [(r["setting"], r["n"], r["gold"]) for r in settings["bon"]] == [(1.0, 2, pytest.approx(0.55)),
                                                                          (4.0, 2, pytest.approx(0.75))]


def test_gold_at_matched_kl_pools_every_evaluation_in_the_band(points):
  bands = frontier.matched_kl(points, [0.0, 1.0, 2.0, 8.0])
  ppo = bands["ppo"]
  assert [r["n"] for r in ppo] == [1, 1, 3]  # KL 0.5 | 1.0 | 2.0, 3.0, 5.0 (lower edges closed)
  assert ppo[1]["gold"] == pytest.approx(0.2) and ppo[1]["kl"] == pytest.approx(1.0)
  assert ppo[2]["gold"] == pytest.approx(1.3 / 3) and ppo[2]["kl"] == pytest.approx(10 / 3)
  assert [r["n"] for r in bands["bon"]] == [2, 2, 0] and math.isnan(bands["bon"][2]["gold"])
  with pytest.raises(ValueError, match="increasing"):
    frontier.matched_kl(points, [0.0, 2.0, 1.0])


def test_tables(points):
  text = frontier.markdown(points, [0.0, 1.0, 2.0, 8.0], {"ppo": "ppo.kl_coef", "bon": "n"})
  assert "| ppo | ppo.kl_coef=0.1 | 2 | 4.00 ± " in text and "| bon | n=4 | 2 | 1.50 ± 0.00 | 0.750 ± " in text
  assert "| bon | 0.550 (0.0, 2) | 0.750 (1.5, 2) | - |" in text


def test_the_plot_draws_each_setting_mean_with_its_intervals_and_every_evaluation(points, tmp_path, saved_figures):
  frontier.plot(points, tmp_path / "f.png")
  (ax,) = saved_figures[tmp_path / "f.png"].axes
  means = {c.get_label(): c for c in ax.containers}
  assert list(means) == ["ppo", "bon"]
  # Settings joined in order of KL: ppo's kl_coef 0.5 (one seed: KL 0.5, gold 0.1) before 0.1 (seeds
  # at KL 3 and 5, gold 0.4 and 0.6); best-of-n's n=1 (KL 0, gold 0.05 and 1.05) before n=4.
  for method, kl, gold in (("ppo", [0.5, 4.0], [0.1, 0.5]), ("bon", [0.0, 1.5], [0.55, 0.75])):
    line = means[method].lines[0]
    assert list(line.get_xdata()) == pytest.approx(kl) and list(line.get_ydata()) == pytest.approx(gold)
  # ppo's kl_coef=0.1: t(0.975, 1) = 12.706 x sd / sqrt(2) of KL 3, 5 and of gold 0.4, 0.6; kl_coef=0.5 has none.
  xbars, ybars = means["ppo"].lines[2]
  assert [s[:, 0].tolist() for s in xbars.get_segments()] == [[0.5, 0.5], pytest.approx([4 - 12.706, 4 + 12.706],
                                                                                        rel=1e-4)]
  assert [s[:, 1].tolist() for s in ybars.get_segments()] == [[0.1, 0.1], pytest.approx([0.5 - 1.2706, 0.5 + 1.2706],
                                                                                        rel=1e-4)]
  dots = [c.get_offsets().tolist() for c in ax.collections if isinstance(c, PathCollection)]
  assert dots == [[[1.0, 0.2], [3.0, 0.4], [2.0, 0.3], [5.0, 0.6], [0.5, 0.1]],  # every evaluation, not only the final
                  [[0.0, 0.05], [1.5, 0.25], [0.0, 1.05], [1.5, 1.25]]]


def test_the_report_files(points, tmp_path, saved_figures):
  result, text = frontier.write_report(points, tmp_path, edges=[0.0, 1.0, 8.0], knobs={"ppo": "ppo.kl_coef"},
                                       seeds=[0, 1])
  assert text.startswith("# Reward-KL frontier\n\nFinal evaluation of each setting: mean ± 95% t-interval over "
                         "seeds [0, 1].") and text.endswith("![frontier](frontier.png)\n")
  assert (tmp_path / "frontier.md").read_text() == text and "| bon | n" not in text and "| bon | setting=4 |" in text
  assert result["by_setting"] == frontier.by_setting(points) and len(result["points"]) == len(points)
  saved = json.loads((tmp_path / "frontier.json").read_text())
  assert saved["points"][0] == dataclasses.asdict(points[0]) and saved["by_setting"]["ppo"][1]["gold_ci95"] is None
  assert saved["matched_kl"] == logs.json_ready(frontier.matched_kl(points, [0.0, 1.0, 8.0]))
  (ax,) = saved_figures[tmp_path / "frontier.png"].axes  # the plot of all points (drawn: the test above)
  assert [c.get_label() for c in ax.containers] == ["ppo", "bon"]
  assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_without_the_knob_or_evaluations_is_named(tmp_path):
  no_knob = _run(tmp_path / "a", {"seed": 0}, [(1, 1.0, 0.1)])
  with pytest.raises(ValueError, match=r"a/config.json has no 'ppo.kl_coef'"):
    frontier.collect([no_knob], "ppo", "ppo.kl_coef")
  no_evals = _run(tmp_path / "b", {"seed": 0}, [])
  with pytest.raises(ValueError, match="no 'eval' record with 'kl'"):
    frontier.collect([no_evals], "bon", frontier.STEP)


EXPERIMENT = ROOT / "experiments" / "reward_kl_frontier.py"


@pytest.mark.network
def test_frontier_experiment_runs_each_method_once_and_reruns_nothing(smoke_lm, tmp_path, saved_figures):
  """Best-of-n only, the cheapest method (every method's smoke run has its own test; all four
  through this experiment: the slow test below)."""
  overrides = [f"init_from={smoke_lm}", "methods=best-of-n", "seeds=0,1"]
  result = runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=overrides)
  assert list(result["by_setting"]) == ["best-of-n"]
  bon = result["by_setting"]["best-of-n"]
  assert [(r["setting"], r["n"]) for r in bon] == [(1.0, 2), (2.0, 2), (4.0, 2)]  # two seeds each
  assert bon[0]["kl"] == 0.0 and bon[2]["kl"] == pytest.approx(math.log(4) - 3 / 4)
  for seed in (0, 1):
    run = tmp_path / "best-of-n" / f"seed={seed}"
    assert sweep.status(run) == "done"
    config = json.loads((run / "config.json").read_text())
    assert config["policy"]["init_from"] == str(smoke_lm.absolute()) and config["seed"] == seed
    assert config["fine_tune"] is False and config["bon"]["n"] == [1, 2, 4]
  (ax,) = saved_figures[tmp_path / "frontier.png"].axes  # the plot draws the settings the result holds
  assert [c.get_label() for c in ax.containers] == ["best-of-n"]
  line = ax.containers[0].lines[0]
  assert list(line.get_xdata()) == [r["kl"] for r in bon] and list(line.get_ydata()) == [r["gold"] for r in bon]
  assert "Gold at matched KL" in (tmp_path / "frontier.md").read_text()
  # A rerun finds every run done: it samples nothing and reports the same frontier.
  mtime = (tmp_path / "best-of-n/seed=0/metrics.jsonl").stat().st_mtime_ns
  again = runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=overrides)
  assert again["points"] == result["points"]
  assert (tmp_path / "best-of-n/seed=0/metrics.jsonl").stat().st_mtime_ns == mtime


def test_frontier_experiment_rejects_an_unknown_method(tmp_path):
  with pytest.raises(ValueError, match=r"methods: expected some of \['ppo', 'rloo', 'dpo', 'best-of-n'\]"):
    runs.prepare_run(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=["methods=ppo,sft"])


@pytest.mark.slow
@pytest.mark.network
def test_frontier_experiment_smoke_all_methods(smoke_lm, tmp_path):
  result = runs.run_experiment(EXPERIMENT, smoke=True, workdir=tmp_path, overrides=[f"init_from={smoke_lm}"])
  by_method = result["by_setting"]
  assert list(by_method) == ["ppo", "rloo", "dpo", "best-of-n"]
  for method in ("ppo", "rloo", "dpo"):
    (row,) = by_method[method]
    assert row["n"] == 1 and math.isfinite(row["kl"]) and math.isfinite(row["gold"])
  for run in ("ppo/ppo.kl_coef=0.1,seed=0", "rloo/pg.kl_coef=0.1,seed=0", "dpo/dpo.beta=0.1,seed=0"):
    assert sweep.status(tmp_path / run) == "done"
    assert json.loads((tmp_path / run / "config.json").read_text())["policy"]["init_from"] == str(smoke_lm.absolute())
  assert json.loads((tmp_path / "ppo/ppo.kl_coef=0.1,seed=0/config.json").read_text())["ppo"]["adaptive_kl"] is False
