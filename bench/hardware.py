"""Model shapes and the accelerator limits the benchmarks measure against (vendors' data sheets)."""

from __future__ import annotations

SHAPES = {
    "tiny": dict(vocab_size=2048, max_len=128, d_model=128, n_layers=4, n_heads=4),  # pretrain_tiny
    "peer": dict(vocab_size=8000, max_len=64, d_model=256, n_layers=4, n_heads=4),  # ../shared/peer-bench's model
    "gpt2-small": dict(vocab_size=50304, max_len=1024, d_model=768, n_layers=12, n_heads=12),
}

# Dense bf16 peak FLOP/s per device.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5": 459e12}
# HBM bandwidth, bytes/s per device (H100 SXM, H200 SXM, A100 80GB SXM).
HBM_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.04e12, "TPU v4": 1.2e12, "TPU v5": 2.76e12}


def lookup(table: dict[str, float], device) -> float | None:
  """The entry whose name is in the device's kind ("NVIDIA H100 80GB HBM3" -> "H100"), or None."""
  kind = device.device_kind.lower()
  return next((value for name, value in table.items() if name.lower() in kind), None)
