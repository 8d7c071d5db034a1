"""`rlhf_jax.report` (`rlhf-jax report`) on a tree of runs written by hand: which runs it finds, how
it groups their seeds, the mean and 95% Student-t interval of their final metrics (checked against
numbers worked out by hand), the tables and JSON it writes, and the data its two plots are given."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection

from rlhf_jax import cli, logs, report
from rlhf_jax.errors import UserError

# Student-t quantiles t(0.975, dof) from a printed table: the 95% half-width of n values is
# t(0.975, n - 1) * std(ddof=1) / sqrt(n).
T975_DOF1, T975_DOF2 = 12.7062, 4.3027
# The tree below, by hand. optim.lr=0.1: two seeds; seed 1 was resumed and logged eval step 2
# twice (the later record wins). optim.lr=0.2: three seeds; seed 2 never logged eval step 1.
#   final gold_score 0.1: [1, 3] -> mean 2, std sqrt(2), half = T975_DOF1 * sqrt(2) / sqrt(2)
#   final kl         0.1: [1, 2] -> mean 1.5, std sqrt(1/2), half = T975_DOF1 / 2
#   final gold_score 0.2: [1, 2, 6] -> mean 3, std sqrt(7), half = T975_DOF2 * sqrt(7) / sqrt(3)
#   final kl         0.2: [1, 2, 3] -> mean 2, std 1, half = T975_DOF2 / sqrt(3)
SUMMARY = {
    "optim.lr=0.1": {"gold_score": {"mean": 2.0, "ci95": T975_DOF1, "n": 2},
                     "kl": {"mean": 1.5, "ci95": T975_DOF1 / 2, "n": 2}},
    "optim.lr=0.2": {"gold_score": {"mean": 3.0, "ci95": T975_DOF2 * math.sqrt(7 / 3), "n": 3},
                     "kl": {"mean": 2.0, "ci95": T975_DOF2 / math.sqrt(3), "n": 3}},
}


def _write_run(path: Path, config: dict, records: list[dict]) -> Path:
  """A run's workdir as `rlhf-jax run` leaves it: config.json and metrics.jsonl."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config))
  (path / logs.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def _eval(step, gold, kl):
  return {"step": step, "split": "eval", "gold_score": gold, "kl": kl}


@pytest.fixture
def tree(tmp_path) -> Path:
  root = tmp_path / "sweep"
  config = lambda lr, seed: {"seed": seed, "optim": {"lr": lr, "b1": 0.9}, "task": "toy"}  # noqa: E731
  _write_run(root / "lr=0.1,seed=0", config(0.1, 0), [
      _eval(1, 0.0, 0.5), {"step": 2, "split": "train", "loss": 3.0}, _eval(2, 1.0, 1.0)])
  _write_run(root / "lr=0.1,seed=1", config(0.1, 1), [
      _eval(1, 2.0, 0.5), _eval(2, 99.0, 99.0), _eval(1, 2.0, 0.5), _eval(2, 3.0, 2.0)])  # resumed after step 2
  _write_run(root / "lr=0.2,seed=0", config(0.2, 0), [_eval(1, 0.5, 0.1), _eval(2, 1.0, 1.0)])
  _write_run(root / "lr=0.2,seed=1", config(0.2, 1), [_eval(1, 1.5, 0.3), _eval(2, 2.0, 2.0)])
  _write_run(root / "lr=0.2,seed=2", config(0.2, 2), [_eval(2, 6.0, 3.0)])
  return root


def _assert_summary(got, want):
  assert set(got) == set(want)
  for group, cells in want.items():
    assert set(got[group]) == set(cells), group
    for name, cell in cells.items():
      assert got[group][name]["n"] == cell["n"], (group, name)
      assert got[group][name]["mean"] == pytest.approx(cell["mean"], rel=1e-12), (group, name)
      assert got[group][name]["ci95"] == pytest.approx(cell["ci95"], rel=1e-4), (group, name)  # table: 5 digits


def test_mean_ci_is_the_student_t_interval_by_hand():
  assert report.mean_ci([1.0, 3.0]) == (2.0, pytest.approx(T975_DOF1, rel=1e-4), 2)
  assert report.mean_ci([1.0, 2.0, 6.0]) == (3.0, pytest.approx(T975_DOF2 * math.sqrt(7 / 3), rel=1e-4), 3)
  assert report.mean_ci([1.0, 2.0, 6.0], level=0.9)[1] == pytest.approx(2.9200 * math.sqrt(7 / 3), rel=1e-4)
  assert report.mean_ci([4.0, 4.0, 4.0]) == (4.0, 0.0, 3)
  mean, half, n = report.mean_ci([5.0])  # one seed: no interval
  assert (mean, n) == (5.0, 1) and math.isnan(half)
  mean, half, n = report.mean_ci([])
  assert n == 0 and math.isnan(mean) and math.isnan(half)


def test_load_run_keeps_the_last_record_of_a_step_and_sorts_by_split_and_step(tree):
  run = report.load_run(tree / "lr=0.1,seed=1")
  assert run.config == {"seed": 1, "optim.lr": 0.1, "optim.b1": 0.9, "task": "toy"}  # flattened
  assert run.records == [_eval(1, 2.0, 0.5), _eval(2, 3.0, 2.0)]  # the resumed run's eval 2, not the first
  mixed = report.load_run(tree / "lr=0.1,seed=0")
  assert [(r["split"], r["step"]) for r in mixed.records] == [("eval", 1), ("eval", 2), ("train", 2)]
  (tree / "lr=0.2,seed=2" / logs.METRICS_FILE).unlink()
  with pytest.raises(FileNotFoundError, match=r"lr=0.2,seed=2/metrics.jsonl not found"):
    report.load_run(tree / "lr=0.2,seed=2")


def test_find_runs_takes_a_run_folder_whole_and_skips_folders_that_are_not_runs(tree, tmp_path):
  runs = report.find_runs([tree])
  assert [r.path.name for r in runs] == ["lr=0.1,seed=0", "lr=0.1,seed=1", "lr=0.2,seed=0", "lr=0.2,seed=1",
                                         "lr=0.2,seed=2"]
  inner = _write_run(tree / "lr=0.1,seed=0" / "eval" / "inner", {"seed": 9}, [_eval(1, 0.0, 0.0)])
  (tree / "notes").mkdir()
  (tree / "notes" / "config.json").write_text("{}")  # no metrics.jsonl: not a run
  assert [r.path for r in report.find_runs([tree])] == [r.path for r in runs]  # inner sits inside a run
  assert [r.path for r in report.find_runs([inner, tree / "lr=0.2,seed=2"])] == [inner, tree / "lr=0.2,seed=2"]
  with pytest.raises(FileNotFoundError, match="no runs"):
    report.find_runs([tree / "notes"])
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    report.find_runs([tmp_path / "missing"])


def test_group_runs_keys_groups_by_the_settings_that_differ(tree):
  groups = report.group_runs(report.find_runs([tree]))
  assert {g: [r.path.name for r in runs] for g, runs in groups.items()} == {
      "optim.lr=0.1": ["lr=0.1,seed=0", "lr=0.1,seed=1"],
      "optim.lr=0.2": ["lr=0.2,seed=0", "lr=0.2,seed=1", "lr=0.2,seed=2"]}
  assert list(report.group_runs(report.find_runs([tree]), over=("seed", "optim.lr"))) == ["all"]
  # Without `over`, the seed is a setting too; a list value is written comma-separated.
  runs = [report.RunRecords(Path(str(i)), {"m": m, "seed": s, "x": 1}, []) for i, (m, s) in
          enumerate([(("a", "b"), 0), (("a", "b"), 1), (("c",), 0)])]
  assert {g: len(rs) for g, rs in report.group_runs(runs).items()} == {"m=a,b": 2, "m=c": 1}
  assert list(report.group_runs(runs, over=())) == ["m=a,b,seed=0", "m=a,b,seed=1", "m=c,seed=0"]


def test_final_metrics_are_the_numbers_of_the_last_record_of_the_split(tmp_path):
  run = report.load_run(_write_run(tmp_path / "r", {"seed": 0}, [
      {"step": 1, "split": "eval", "a": 1.0}, {"step": 3, "split": "eval", "a": 2, "ok": True, "note": "x", "b": 0.5},
      {"step": 5, "split": "train", "a": 9.0}]))
  assert report.final_metrics(run, "eval") == {"a": 2.0, "b": 0.5}  # booleans and text are not metrics
  assert report.final_metrics(run, "train") == {"a": 9.0}
  assert report.final_metrics(run, "test") == {}


def test_summarize_gives_mean_and_interval_over_seeds_by_hand(tree):
  groups = report.group_runs(report.find_runs([tree]))
  _assert_summary(report.summarize(groups), SUMMARY)
  _assert_summary(report.summarize(groups, metrics=["kl"]),
                  {g: {"kl": cells["kl"]} for g, cells in SUMMARY.items()})
  train = report.summarize(groups, split="train")
  assert train["optim.lr=0.1"]["loss"]["mean"] == 3.0 and train["optim.lr=0.1"]["loss"]["n"] == 1
  assert train["optim.lr=0.2"]["loss"]["n"] == 0 and math.isnan(train["optim.lr=0.2"]["loss"]["mean"])
  with pytest.raises(UserError, match=r"--metrics: no run has \['gold'\] .*available: \['gold_score', 'kl'\]"):
    report.summarize(groups, metrics=["gold", "kl"])


def test_markdown_table_writes_mean_interval_and_runs():
  summary = {"a": {"x": {"mean": 2.0, "ci95": 12.706, "n": 2}, "y": {"mean": 0.123456, "ci95": math.nan, "n": 1}},
             "b": {"x": {"mean": math.nan, "ci95": math.nan, "n": 0}, "y": {"mean": 1.5, "ci95": 0.25, "n": 3}}}
  assert report.markdown_table(summary) == ("| setting | runs | x | y |\n"
                                            "|---|---|---|---|\n"
                                            "| a | 2 | 2 ± 13 | 0.1235 |\n"
                                            "| b | 3 | - | 1.5 ± 0.25 |\n")


def test_curves_are_means_over_the_steps_every_seed_logged(tree):
  groups = report.group_runs(report.find_runs([tree]))
  got = report.curves(groups, "eval", "gold_score")
  assert got["optim.lr=0.1"]["step"] == [1, 2] and got["optim.lr=0.1"]["mean"] == [1.0, 2.0]  # (0 + 2) / 2, (1 + 3) / 2
  np.testing.assert_allclose(got["optim.lr=0.1"]["ci95"], [T975_DOF1, T975_DOF1], rtol=1e-4)
  # Seed 2 of lr=0.2 logged only step 2: step 1 is no curve point of that group.
  assert got["optim.lr=0.2"]["step"] == [2] and got["optim.lr=0.2"]["mean"] == [3.0]
  assert report.curves(groups, "train", "loss")["optim.lr=0.2"] == {"step": [], "mean": [], "ci95": []}


def test_plot_curves_draws_the_group_means_and_their_intervals(tree, tmp_path, saved_figures):
  groups = report.group_runs(report.find_runs([tree]))
  report.plot_curves(groups, "eval", ["gold_score", "kl"], tmp_path / "curves.png")
  fig = saved_figures[tmp_path / "curves.png"]
  gold, kl = fig.axes
  assert gold.get_title() == "eval gold_score" and kl.get_title() == "eval kl"
  assert [line.get_label() for line in gold.lines] == ["optim.lr=0.1", "optim.lr=0.2"]
  assert [list(line.get_xdata()) for line in gold.lines] == [[1, 2], [2]]
  assert [list(line.get_ydata()) for line in gold.lines] == [[1.0, 2.0], [3.0]]
  assert [list(line.get_ydata()) for line in kl.lines] == [[0.5, 1.5], [2.0]]
  # The shaded band of lr=0.1's gold: mean -/+ the half-width at each step.
  band_y = gold.collections[0].get_paths()[0].vertices[:, 1]
  np.testing.assert_allclose([band_y.min(), band_y.max()], [1.0 - T975_DOF1, 2.0 + T975_DOF1], rtol=1e-4)


def test_plot_frontier_draws_each_run_and_each_group_mean_with_its_intervals(tree, tmp_path, saved_figures):
  groups = report.group_runs(report.find_runs([tree]))
  report.plot_frontier(groups, "eval", "kl", "gold_score", tmp_path / "frontier.png")
  (ax,) = saved_figures[tmp_path / "frontier.png"].axes
  assert (ax.get_xlabel(), ax.get_ylabel()) == ("kl", "gold_score")
  means = {c.get_label(): c for c in ax.containers}  # one errorbar per group
  assert list(means) == ["optim.lr=0.1", "optim.lr=0.2"]
  for group, (x, y) in {"optim.lr=0.1": (1.5, 2.0), "optim.lr=0.2": (2.0, 3.0)}.items():
    data_line, _, (xbars, ybars) = means[group].lines
    assert (list(data_line.get_xdata()), list(data_line.get_ydata())) == ([x], [y])
    hx, hy = SUMMARY[group]["kl"]["ci95"], SUMMARY[group]["gold_score"]["ci95"]
    np.testing.assert_allclose(xbars.get_segments()[0], [[x - hx, y], [x + hx, y]], rtol=1e-4)
    np.testing.assert_allclose(ybars.get_segments()[0], [[x, y - hy], [x, y + hy]], rtol=1e-4)
  runs_01, runs_02 = (c.get_offsets().tolist() for c in ax.collections if isinstance(c, PathCollection))
  assert runs_01 == [[1.0, 1.0], [2.0, 3.0]] and runs_02 == [[1.0, 1.0], [2.0, 2.0], [3.0, 6.0]]  # (kl, gold)


def test_write_report_files_agree_with_the_summary_by_hand(tree, tmp_path, saved_figures):
  out = tmp_path / "report"
  result = report.write_report([tree], out)
  # kl and gold_score both logged: the frontier is plotted without being asked for.
  assert result["files"] == ["report.md", "report.json", "curves.png", "frontier.png"]
  assert set(saved_figures) == {out / "curves.png", out / "frontier.png"}
  _assert_summary(result["summary"], SUMMARY)
  assert result["runs"]["optim.lr=0.1"] == [str(tree / "lr=0.1,seed=0"), str(tree / "lr=0.1,seed=1")]
  assert json.loads((out / "report.json").read_text()) == {k: v for k, v in result.items() if k != "files"}
  assert (out / "report.md").read_text() == (
      "# Report: 5 runs in 2 settings\n\n"
      "Final `eval` metrics: mean ± 95% Student-t interval over seed.\n\n"
      "| setting | runs | gold_score | kl |\n"
      "|---|---|---|---|\n"
      "| optim.lr=0.1 | 2 | 2 ± 13 | 1.5 ± 6.4 |\n"
      "| optim.lr=0.2 | 3 | 3 ± 6.6 | 2 ± 2.5 |\n"
      "\n![curves.png](curves.png)\n![frontier.png](frontier.png)\n")


def test_write_report_of_one_seed_writes_null_intervals_and_no_default_frontier(tree, tmp_path, saved_figures):
  out = tmp_path / "one"
  result = report.write_report([tree / "lr=0.2,seed=2"], out, metrics=["kl"], curve_metrics=["kl"])
  assert result["files"] == ["report.md", "report.json", "curves.png"]  # gold_score not asked for
  assert json.loads((out / "report.json").read_text())["summary"] == {"all": {"kl": {"mean": 3.0, "ci95": None,
                                                                                     "n": 1}}}
  (line,) = saved_figures[out / "curves.png"].axes[0].lines
  assert (list(line.get_xdata()), list(line.get_ydata())) == ([2], [3.0])
  with pytest.raises(UserError, match=r"no run has a 'test' record with numbers"):
    report.write_report([tree], tmp_path / "test", split="test")
  with pytest.raises(UserError, match=r"--frontier: \['loss'\] not among the 'eval' metrics"):
    report.write_report([tree], tmp_path / "bad", frontier=("kl", "loss"))


def test_the_report_command_plots_the_frontier_it_is_asked_for(tree, tmp_path, capsys, saved_figures):
  out = tmp_path / "cli"
  assert cli.main(["report", str(tree), "--out", str(out), "--frontier", "gold_score,kl", "--curves", "kl"]) == 0
  assert "| optim.lr=0.2 | 3 | 3 ± 6.6 | 2 ± 2.5 |" in capsys.readouterr().out
  (ax,) = saved_figures[out / "frontier.png"].axes
  assert (ax.get_xlabel(), ax.get_ylabel()) == ("gold_score", "kl")
  assert [c.lines[0].get_xdata()[0] for c in ax.containers] == [2.0, 3.0]  # the mean gold_score per group
  assert cli.main(["report", str(tree), "--metrics", "gold"]) == 2
  assert "gold_score" in capsys.readouterr().err  # the error names what is there
