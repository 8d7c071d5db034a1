"""The layers of the code go one way: each module imports only modules of its own layer or below.

Following a config from an experiment's `main` then goes down the layers without climbing back
(README, "How the code is laid out"). `LAYERS` is that picture, lowest first; a new module
belongs in one of them, and an import that climbs fails here with the two modules named.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (layer, module-name prefixes), lowest first. A module is in the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("rlhf_jax.errors", "rlhf_jax.files", "rlhf_jax.config", "rlhf_jax.logs", "rlhf_jax.sharding",
                    "rlhf_jax.distributed", "rlhf_jax.local_http")),
    # The feedback store is data: SQLite tables of samples and judgements, read by the data pipelines.
    ("models, tokenizers, data, checkpoints", ("rlhf_jax.models", "rlhf_jax.tokenizers", "rlhf_jax.data",
                                                "rlhf_jax.checkpoint", "rlhf_jax.feedback.store")),
    ("math", ("rlhf_jax.losses", "rlhf_jax.advantages", "rlhf_jax.rewards.signals")),
    ("sampling", ("rlhf_jax.sampling", "rlhf_jax.rollout")),
    ("steps", ("rlhf_jax.steps",)),
    ("host loop, saved models, reports", ("rlhf_jax.loop", "rlhf_jax.trained", "rlhf_jax.report",
                                          "rlhf_jax.vmapped")),
    ("rewards", ("rlhf_jax.rewards",)),
    ("feedback", ("rlhf_jax.feedback",)),
    ("evaluation", ("rlhf_jax.eval",)),
    ("trainers", ("rlhf_jax.rl", "rlhf_jax.lm_training")),
    ("runs", ("rlhf_jax.sweep", "rlhf_jax.runs")),
    # Using a trained model: chat at the terminal, and serving it over HTTP (rlhf-jax serve).
    ("command line", ("rlhf_jax.cli", "rlhf_jax.chat", "rlhf_jax.serving", "rlhf_jax.__main__")),
]


def module_name(path: Path) -> str:
  name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
  return name.removesuffix(".__init__")


def layer_of(module: str) -> int:
  best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
              if module == p or module.startswith(p + ".")), default=None)
  assert best is not None, f"{module} is in no layer of tests/test_layers.py: add it to LAYERS"
  return best[1]


def imports(path: Path, known: set[str]) -> set[str]:
  """The project modules `path` imports, at the top or inside functions."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names}
  return {m for m in out if m.split(".")[0] in ("rlhf_jax", "experiments")}


def graph(folders=("rlhf_jax", "experiments")) -> dict[str, set[str]]:
  paths = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
  known = {module_name(p) for p in paths}
  return {module_name(p): imports(p, known) for p in paths}


def test_every_library_import_goes_down_the_layers():
  climbs = []
  for module, deps in graph(("rlhf_jax",)).items():
    for dep in deps - {module}:
      if layer_of(dep) > layer_of(module):
        climbs.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
  assert not climbs, "imports that climb a layer:\n" + "\n".join(sorted(climbs))


def test_library_modules_import_no_cycle():
  deps = {m: {d for d in ds if d != m} for m, ds in graph(("rlhf_jax",)).items()}
  state: dict[str, int] = {}

  def visit(m, stack):
    state[m] = 1
    for d in sorted(deps.get(m, ())):
      if state.get(d) == 1:
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
      if d not in state:
        visit(d, stack + [d])
    state[m] = 2

  for m in sorted(deps):
    if m not in state:
      visit(m, [m])


def test_experiments_import_the_library_only():
  for module, deps in graph(("experiments",)).items():
    assert not {d for d in deps if d.startswith("experiments")}, f"{module} imports another experiment"
    assert not {d for d in deps if d.startswith(("rlhf_jax.cli", "rlhf_jax.chat"))}, f"{module} imports the CLI"
  assert not any(d.startswith("experiments") for deps in graph(("rlhf_jax",)).values() for d in deps), \
      "the library imports an experiment"
