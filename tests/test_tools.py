import runpy
import sys
from pathlib import Path

import pytest

from rlhf_jax import logs

ROOT = Path(__file__).resolve().parents[1]


def test_plot_metrics_draws_each_metric_of_each_run(tmp_path, monkeypatch, saved_figures):
  writer = logs.MetricWriter(tmp_path / "run", tensorboard=False)
  for step in range(1, 6):
    writer.write(step, {"loss": 5.0 / step})
  writer.write(5, {"perplexity": 40.0}, split="eval")
  writer.close()
  out = tmp_path / "c.png"
  monkeypatch.setattr(sys, "argv", ["plot_metrics.py", str(tmp_path / "run"), "--out", str(out)])
  runpy.run_path(str(ROOT / "tools" / "plot_metrics.py"), run_name="__main__")
  loss, perplexity = saved_figures[out].axes  # the default panels: train loss, eval perplexity
  (line,) = loss.lines
  assert (loss.get_title(), line.get_label()) == ("train loss", "run")
  assert list(line.get_xdata()) == [1, 2, 3, 4, 5] and list(line.get_ydata()) == [5.0, 2.5, 5.0 / 3, 1.25, 1.0]
  (line,) = perplexity.lines
  assert (list(line.get_xdata()), list(line.get_ydata()), perplexity.get_yscale()) == ([5], [40.0], "log")
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  monkeypatch.setattr(sys, "argv", ["plot_metrics.py", str(tmp_path / "run"), "--metric", "train/grad_norm"])
  with pytest.raises(ValueError, match="no 'train' records with 'grad_norm'"):
    runpy.run_path(str(ROOT / "tools" / "plot_metrics.py"), run_name="__main__")
