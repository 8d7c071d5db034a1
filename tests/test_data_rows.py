import numpy as np
import pytest

from rlhf_jax.data import rows


def test_pad_rows_right_pads_and_truncates():
  tokens, mask = rows.pad_rows([[5, 6], [1, 2, 3, 4, 5]], 4, pad_id=0)
  np.testing.assert_array_equal(tokens, [[5, 6, 0, 0], [1, 2, 3, 4]])
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0], [1, 1, 1, 1]])
  with pytest.raises(ValueError, match="row 1 has no tokens"):
    rows.pad_rows([[1], []], 4, pad_id=0)


def test_rows_dataset_epochs_are_permutations_and_resume_exactly():
  arrays = {"x": np.arange(12), "y": np.arange(12) * 10}
  it = iter(rows.rows_dataset(arrays, 4, seed=0))
  epoch = np.concatenate([next(it)["x"] for _ in range(3)])
  assert sorted(epoch) == list(range(12))
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  it2 = iter(rows.rows_dataset(arrays, 4, seed=0))
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    np.testing.assert_array_equal(got["x"], want["x"])
    np.testing.assert_array_equal(got["y"], got["x"] * 10)


def test_eval_row_batches_cover_every_row_once():
  arrays = {"x": np.arange(10)}
  batches = rows.eval_row_batches(arrays, 4)
  seen = np.concatenate([b["x"][b["row_mask"] > 0] for b in batches])
  np.testing.assert_array_equal(seen, np.arange(10))
  assert [len(b["x"]) for b in batches] == [4, 4, 4]
  with pytest.raises(ValueError, match="same number of rows"):
    rows.eval_row_batches({"a": np.zeros(3), "b": np.zeros(4)}, 2)
