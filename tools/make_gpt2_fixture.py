"""Writes tests/data/tiny_gpt2/: a randomly initialised small GPT-2 saved by Hugging Face
transformers (config.json + model.safetensors) and its logits on fixed tokens (reference.npz).

The import test compares our Transformer on these weights with transformers' own logits, so the
fixture must come from transformers itself. Needs torch and transformers (not dependencies of
rlhf_jax; e.g. `pip install torch transformers` in a separate venv), run once:

  python tools/make_gpt2_fixture.py tests/data/tiny_gpt2
"""

import sys
from pathlib import Path

import numpy as np
import torch
import transformers


def main(out: Path) -> None:
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=95, eos_token_id=95,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():  # GPT-2's init leaves biases at 0 and LayerNorms at 1: perturb everything
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(out, safe_serialization=True)
  tokens = torch.randint(0, config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    logits = model(tokens).logits.numpy()
  np.savez(out / "reference.npz", tokens=tokens.numpy().astype(np.int32), logits=logits.astype(np.float32),
           versions=np.array([f"torch {torch.__version__}", f"transformers {transformers.__version__}"]))
  print(f"wrote {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
  main(Path(sys.argv[1]))
