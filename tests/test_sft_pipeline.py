"""SFT batches (`data.sft_pipeline`): the loss on completions only, packing that changes no
example's loss, and an iterator that resumes where it stopped."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import sft_pipeline
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import lm
from rlhf_jax.tokenizers import HFTokenizer

QWEN2 = Path(__file__).parent / "data" / "tiny_hf" / "qwen2"
ROWS = [{"prompt": f"Question {i}: what is {'very ' * (i % 4)}blue?", "completion": f" The sky{'!' * (i % 3)}"}
        for i in range(12)]


@pytest.fixture(scope="module")
def tok():
  return HFTokenizer(QWEN2)


def test_the_loss_counts_the_completion_and_its_eos_only(tok):
  (ex,) = sft_pipeline.examples(ROWS[:1], tok, seq_len=64)
  prompt, completion = tok.encode(ROWS[0]["prompt"]), tok.encode(ROWS[0]["completion"])
  tokens = prompt + completion + [tok.eos_id]
  np.testing.assert_array_equal(ex["inputs"], tokens[:-1])
  np.testing.assert_array_equal(ex["targets"], tokens[1:])
  np.testing.assert_array_equal(ex["loss_mask"], [0] * (len(prompt) - 1) + [1] * (len(completion) + 1))
  (text,) = sft_pipeline.examples([{"text": "The sky is blue."}], tok, seq_len=4)
  assert len(text["inputs"]) == 4 and text["loss_mask"].tolist() == [1, 1, 1, 1]  # cut to seq_len, all counted


@pytest.mark.parametrize("arch", [pytest.param("gpt2", marks=pytest.mark.slow), "llama"])
def test_a_packed_batch_has_the_loss_of_its_examples_computed_alone(tok, arch):
  config = ModelConfig(arch=arch, vocab_size=tok.vocab_size, max_len=128, d_model=32, n_layers=2, n_heads=4,
                       **({"n_kv_heads": 2} if arch == "llama" else {}))
  model = Transformer(config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  examples = sft_pipeline.examples(ROWS, tok, seq_len=32)
  batch = next(iter(sft_pipeline.dataset(examples, seq_len=96, batch_size=2, seed=0)))
  assert batch["segment_ids"].max() >= 2  # rows hold several examples
  total, sums = jax.jit(lambda p, b: lm.loss_sum(p, b, None, model=model))(params, batch)
  alone_total, alone_count = 0.0, 0.0
  for row in range(2):
    for segment in range(1, int(batch["segment_ids"][row].max()) + 1):
      where = batch["segment_ids"][row] == segment
      one = {name: batch[name][row][where][None] for name in ("inputs", "targets", "loss_mask")}
      t, s = lm.loss_sum(params, one, None, model=model)
      alone_total, alone_count = alone_total + float(t), alone_count + float(s["count"])
  assert float(sums["count"]) == alone_count > 0
  np.testing.assert_allclose(float(total), alone_total, rtol=1e-5)


def test_the_iterator_resumes_and_evaluation_counts_every_example_once(tok):
  examples = sft_pipeline.examples(ROWS, tok, seq_len=32)
  for pack in (True, False):
    it = iter(sft_pipeline.dataset(examples, seq_len=48, batch_size=2, seed=3, pack=pack))
    for _ in range(3):
      next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    again = iter(sft_pipeline.dataset(examples, seq_len=48, batch_size=2, seed=3, pack=pack))
    again.set_state(state)
    for want in expected:
      got = next(again)
      for name in want:
        np.testing.assert_array_equal(got[name], want[name])
  batches = sft_pipeline.eval_batches(examples, seq_len=32, batch_size=5)
  assert len(batches) == 3 and sum(int(b["loss_mask"].sum()) for b in batches) == sum(
      int(e["loss_mask"].sum()) for e in examples)
