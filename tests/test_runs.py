"""Composing experiments (`rlhf_jax.runs`): a stage run in-process unless done, and stages of swept
runs, each checked before any starts, on a toy experiment that trains nothing. (`sweep.run_all`'s
processes and signals: test_sweep.py.)"""

from pathlib import Path

import pytest

from rlhf_jax import config as config_lib
from rlhf_jax import runs, sweep

# Counts its starts in the workdir; `fail` fails it.
EXPERIMENT = '''
import dataclasses
from pathlib import Path

@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  fail: bool = False

def get_config(smoke=False):
  return Config()

def main(config, workdir):
  with open(Path(workdir) / "starts", "a") as f:
    f.write("x")
  if config.fail:
    raise RuntimeError("asked to fail")
  return config.seed
'''


@pytest.fixture
def experiment(tmp_path):
  path = tmp_path / "toy.py"
  path.write_text(EXPERIMENT)
  return path


def test_run_unless_done_runs_a_stage_once(experiment, tmp_path):
  workdir = tmp_path / "stage"
  with pytest.raises(RuntimeError, match="asked to fail"):
    runs.run_unless_done(experiment, workdir, overrides=["fail=true"])
  assert sweep.status(workdir) == "started"  # not done: the next call runs it again
  runs.run_unless_done(experiment, workdir, overrides=["seed=3"])
  assert sweep.status(workdir) == "done" and (workdir / "starts").read_text() == "xx"
  runs.run_unless_done(experiment, workdir, overrides=["seed=3"])
  assert (workdir / "starts").read_text() == "xx"
  with pytest.raises(config_lib.ConfigError, match="finished run with a different config.*seed"):
    runs.run_unless_done(experiment, workdir, overrides=["seed=4"])  # not silently the seed-3 results
  assert (workdir / "starts").read_text() == "xx"


def test_a_stage_edited_in_python_records_the_overrides_it_amounts_to(experiment, tmp_path):
  import dataclasses
  import json
  workdir = tmp_path / "stage"
  seed_5 = lambda c: dataclasses.replace(c, seed=5)  # noqa: E731
  runs.run_unless_done(experiment, workdir, edit=seed_5)
  assert json.loads((workdir / "config.json").read_text())["seed"] == 5
  assert json.loads((workdir / "run.json").read_text())["command"][-2:] == ["--set", "seed=5"]
  runs.run_unless_done(experiment, workdir, edit=seed_5)  # done: skipped
  assert (workdir / "starts").read_text() == "x"
  with pytest.raises(config_lib.ConfigError, match="finished run with a different config.*seed"):
    runs.run_unless_done(experiment, workdir, edit=lambda c: dataclasses.replace(c, seed=6))


PATHS = '''
import dataclasses

@dataclasses.dataclass(frozen=True)
class Policy:
  init_from: str = ""

@dataclasses.dataclass(frozen=True)
class Config:
  policy: Policy = Policy()
  reward: str = "vader"
  corpus: str = "brown"

def get_config(smoke=False):
  return Config()

def main(config, workdir):
  return "ran"
'''


def test_settings_that_name_paths_are_checked_before_the_run_writes_anything(tmp_path):
  experiment = tmp_path / "paths.py"
  experiment.write_text(PATHS)
  lm = tmp_path / "lm"
  lm.mkdir()
  (lm / "config.json").write_text("{}")
  (tmp_path / "corpus.txt").write_text("text")
  for override, message in ((f"policy.init_from={tmp_path / 'nope'}", r"policy.init_from: .*nope/config.json not found"),
                            (f"reward=rm:{tmp_path / 'nope'}", r"reward: .*nope is not a directory"),
                            (f"corpus=file:{tmp_path / 'nope.txt'}", r"corpus: .*nope.txt not found")):
    with pytest.raises(config_lib.ConfigError, match=message):
      runs.run_experiment(experiment, workdir=tmp_path / "w", overrides=[override])
    assert not (tmp_path / "w").exists()  # no config.json, no run.json
  assert runs.run_experiment(experiment, workdir=tmp_path / "w", overrides=[
      f"policy.init_from={lm}", f"reward=rm:{lm}", f"corpus=file:{tmp_path / 'corpus.txt'}"]) == "ran"


def _stages(experiment: Path, root: Path) -> list[runs.Stage]:
  return [runs.Stage(experiment, root / "a", tuple(sweep.plan([{"seed": 0}, {"seed": 1}]))),
          runs.Stage(experiment, root / "b", (sweep.Run.of("one", {"seed": 2}),), base=("fail=false",), label="bee")]


def test_run_stages_checks_every_config_first_and_reports_by_stage(experiment, tmp_path, monkeypatch):
  calls, outcomes = [], {}

  def run_all(path, root, stage_runs, *, base, smoke):
    calls.append((Path(root).name, [r.name for r in stage_runs], base, smoke))
    return {r.name: outcomes.get(r.name, "done") for r in stage_runs}

  monkeypatch.setattr(sweep, "run_all", run_all)
  stages = _stages(experiment, tmp_path)
  assert [s.name for s in stages] == ["toy.py", "bee"]
  assert runs.run_stages(stages, smoke=True) is None
  assert calls == [("a", ["seed=0", "seed=1"], (), True), ("b", ["one"], ("fail=false",), True)]

  # A bad override in the last stage stops everything before the first run starts.
  calls.clear()
  bad = [stages[0], runs.Stage(experiment, tmp_path / "b", (sweep.Run("one", ("sed=2",)),))]
  with pytest.raises(config_lib.ConfigError, match="run one: .*sed"):
    runs.run_stages(bad)
  assert calls == []

  # A signal: the stage is named, the later ones never start.
  outcomes["seed=1"] = "interrupted"
  assert runs.run_stages(stages) == "toy.py" and [c[0] for c in calls] == ["a"]

  # A failure stops at its stage, or (keep_going) after the others ran; either names every failed run.
  calls.clear()
  outcomes["seed=1"] = "failed (exit 1)"
  with pytest.raises(RuntimeError, match=r"retry them\): toy.py/seed=1: failed \(exit 1\)$"):
    runs.run_stages(stages)
  assert [c[0] for c in calls] == ["a"]
  calls.clear()
  outcomes["one"] = "failed (exit 2)"
  with pytest.raises(RuntimeError, match=r"toy.py/seed=1: failed \(exit 1\); bee/one: failed \(exit 2\)"):
    runs.run_stages(stages, keep_going=True)
  assert [c[0] for c in calls] == ["a", "b"]


def test_run_stages_runs_and_skips_each_run_in_its_own_process(experiment, tmp_path):
  stages = _stages(experiment, tmp_path)
  assert runs.run_stages(stages) is None
  assert all(sweep.status(tmp_path / d) == "done" for d in ("a/seed=0", "a/seed=1", "b/one"))
  assert runs.run_stages(stages) is None  # a rerun finds every run done
  assert (tmp_path / "b" / "one" / "starts").read_text() == "x"
