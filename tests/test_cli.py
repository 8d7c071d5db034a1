"""The command line's own surface: every help page renders."""

import argparse

import pytest

from rlhf_jax import cli


def test_help_of_the_cli_and_of_every_subcommand_renders():
  parser = cli.build_parser()
  pages = [parser.format_help()]
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      pages += [sub.format_help() for sub in action.choices.values()]
      assert {"run", "sweep", "report", "eval"} <= set(action.choices)
  assert len(pages) > 5 and "95% CI" in pages[0]  # a bare % in a help string broke `rlhf-jax --help`


TOY = """
import dataclasses
from rlhf_jax import loop

@dataclasses.dataclass(frozen=True)
class Config:
  fail: str = "nan"

def get_config(smoke=False):
  return Config()

def main(config, workdir):
  if config.fail == "nan":
    raise loop.NonFiniteLossError("loss is nan at step 3; stopping")
  if config.fail == "missing":
    raise FileNotFoundError("policy.init_from: workdirs/nope does not exist")
  raise ValueError("a bug")
"""


def test_a_run_that_cannot_go_on_is_one_error_line_and_a_bug_keeps_its_traceback(tmp_path, capsys):
  experiment = tmp_path / "toy.py"
  experiment.write_text(TOY)
  for fail, message in (("nan", "error: loss is nan at step 3"), ("missing", "error: policy.init_from")):
    assert cli.main(["run", str(experiment), "--workdir", str(tmp_path / fail), "--set", f"fail={fail}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err
    assert not (tmp_path / fail / "done.json").exists()
  with pytest.raises(ValueError, match="a bug"):
    cli.main(["run", str(experiment), "--workdir", str(tmp_path / "bug"), "--set", "fail=bug"])


def test_an_experiment_without_main_is_a_user_error_and_a_bug_in_get_config_a_traceback(tmp_path, capsys):
  no_main = tmp_path / "no_main.py"
  no_main.write_text("def get_config(smoke=False):\n  return None\n")
  assert cli.main(["run", str(no_main), "--workdir", str(tmp_path / "a")]) == 2
  assert "must define main()" in capsys.readouterr().err
  buggy = tmp_path / "buggy.py"
  buggy.write_text("def get_config(smoke=False):\n  return {}.learning_rate\n\ndef main(config, workdir):\n  pass\n")
  with pytest.raises(AttributeError, match="learning_rate"):  # not "error: 'dict' object has no attribute"
    cli.main(["run", str(buggy), "--workdir", str(tmp_path / "b")])


def test_only_the_projects_user_errors_are_one_line_errors_and_a_bug_keeps_its_traceback(tmp_path, capsys,
                                                                                         monkeypatch):
  from rlhf_jax import report
  from rlhf_jax.errors import UserError

  def broken(*args, **kwargs):
    raise ValueError("a bug deep inside report")
  monkeypatch.setattr(report, "write_report", broken)
  with pytest.raises(ValueError, match="a bug deep inside report"):  # not "error: ..." and exit 2
    cli.main(["report", str(tmp_path)])

  def refused(*args, **kwargs):
    raise UserError("--metrics: no run has gold in its final 'eval' record")
  monkeypatch.setattr(report, "write_report", refused)
  assert cli.main(["report", str(tmp_path)]) == 2
  assert capsys.readouterr().err == "error: --metrics: no run has gold in its final 'eval' record\n"


def test_a_value_a_config_dataclass_refuses_is_a_config_error_naming_the_override():
  from rlhf_jax import config as config_lib
  from rlhf_jax.eval import harness
  with pytest.raises(config_lib.ConfigError, match=r"num_prompts=0: eval.num_prompts must be positive"):
    config_lib.apply_overrides(harness.HarnessConfig(), ["num_prompts=0"])
