"""Shared test setup.

Eight host CPU devices are forced before JAX is imported, so every test can build both a 1-device
and an 8-device mesh in one process: the data-parallel code is tested the way it runs on a pod.
"""

import os

# Compiles are most of the test time: without XLA's backend optimizations and with its older CPU
# fusion emitters a program compiles several times faster, and these tiny models run about as fast.
# Numbers move only by float rounding; every comparison in the tests is between runs made here.
# (RLHF_JAX_TEST_XLA_OPT=1 keeps XLA's defaults.)
_FAST_COMPILE = "" if os.environ.get("RLHF_JAX_TEST_XLA_OPT") == "1" else (
    " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           + _FAST_COMPILE).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX compiles dominate the test time; a persistent cache shared by the test processes (and the
# experiment subprocesses they start) turns every repeated compile into a lookup.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest  # noqa: E402


def pytest_configure(config):
  # With -n, pytest-xdist's "loadfile" rather than its default "load": a file's tests run on one
  # worker, so its module-scoped fixtures and compiled programs (the quickstart run, the samplers
  # of test_sampling, the golden steps) are built once, not once per worker. (Set here rather than
  # in addopts so that -p no:xdist still works; "loadgroup" would not group with pytest 9.)
  if getattr(config.option, "dist", None) == "load":
    config.option.dist = "loadfile"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """A corpus cache shared by the whole session (RLHF_JAX_CACHE), so each download happens once."""
  path = os.environ.get("RLHF_JAX_TEST_CACHE") or str(tmp_path_factory.mktemp("rlhf_jax_cache"))
  os.environ["RLHF_JAX_CACHE"] = path
  return path


@pytest.fixture(scope="session")
def smoke_lm(tmp_path_factory, cache_dir):
  """A tiny pretrained LM workdir (pretrain_tiny --smoke, 5 steps) for experiments that start from one.
  Trained once per test session: the pytest-xdist workers share it (the first to ask trains it
  under a file lock, the others wait for it), since a fixture of session scope is per worker."""
  import fcntl
  from pathlib import Path

  from rlhf_jax import runs

  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's own directory
  workdir = root / "smoke_lm"
  with open(root / "smoke_lm.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "trained").exists():
      runs.run_experiment(Path(__file__).resolve().parents[1] / "experiments" / "pretrain_tiny.py", smoke=True,
                          workdir=workdir, overrides=["loop.steps=5", "loop.checkpoint_every=5"])
      (workdir / "trained").write_text("")
  return workdir


def _record_saved_figures(monkeypatch) -> dict:
  from pathlib import Path

  from matplotlib.figure import Figure

  saved = {}
  savefig = Figure.savefig

  def recording_savefig(self, fname, *args, **kwargs):
    if isinstance(fname, (str, os.PathLike)):  # not a file object
      saved[Path(fname)] = self
    return savefig(self, fname, *args, **kwargs)
  monkeypatch.setattr(Figure, "savefig", recording_savefig)
  return saved


@pytest.fixture
def saved_figures(monkeypatch):
  """The matplotlib figures saved during a test, keyed by the path they were saved to, so that a
  test reads back the data a plot was given (`ax.lines`' get_xdata/get_ydata, `ax.collections`,
  `ax.containers`) rather than checking that a PNG exists. The files are still written."""
  return _record_saved_figures(monkeypatch)


@pytest.fixture(scope="module")
def module_saved_figures():
  """`saved_figures` for a module-scoped fixture (e.g. one experiment run that several tests read)."""
  with pytest.MonkeyPatch.context() as monkeypatch:
    yield _record_saved_figures(monkeypatch)
