"""The command line's own surface: every help page renders."""

import argparse

from rlhf_jax import cli


def test_help_of_the_cli_and_of_every_subcommand_renders():
  parser = cli.build_parser()
  pages = [parser.format_help()]
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      pages += [sub.format_help() for sub in action.choices.values()]
      assert {"run", "sweep", "report", "eval"} <= set(action.choices)
  assert len(pages) > 5 and "95% CI" in pages[0]  # a bare % in a help string broke `rlhf-jax --help`
