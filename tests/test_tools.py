import runpy
import sys
from pathlib import Path

import pytest

from rlhf_jax import logs

ROOT = Path(__file__).resolve().parents[1]


def test_plot_metrics_writes_a_png(tmp_path, monkeypatch):
  writer = logs.MetricWriter(tmp_path / "run", tensorboard=False)
  for step in range(1, 6):
    writer.write(step, {"loss": 5.0 / step})
  writer.write(5, {"perplexity": 40.0}, split="eval")
  writer.close()
  out = tmp_path / "c.png"
  monkeypatch.setattr(sys, "argv", ["plot_metrics.py", str(tmp_path / "run"), "--out", str(out)])
  runpy.run_path(str(ROOT / "tools" / "plot_metrics.py"), run_name="__main__")
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  monkeypatch.setattr(sys, "argv", ["plot_metrics.py", str(tmp_path / "run"), "--metric", "train/grad_norm"])
  with pytest.raises(ValueError, match="no 'train' records with 'grad_norm'"):
    runpy.run_path(str(ROOT / "tools" / "plot_metrics.py"), run_name="__main__")
