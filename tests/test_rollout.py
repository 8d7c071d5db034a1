"""`rlhf_jax.rollout` on a tiny random policy: the log-probs and values a rollout hands the update
are teacher-forced recomputations (checked against forwards of each row alone, without padding),
EOS ends a response, and the host side decodes the texts a scorer reads."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import rollout as rollout_lib
from rlhf_jax.models.transformer import ModelConfig, Transformer, init_params

POLICY = ModelConfig(vocab_size=16, max_len=12, d_model=32, n_layers=1, n_heads=2)
VALUE = dataclasses.replace(POLICY, scalar_head=True, scalar_head_init="reward")  # a head that is not all 0
EOS, PAD, P, N = 1, 0, 3, 6
TEMPERATURE = 0.7
PROMPT_PAD = (0, 2, 1, 0)  # left padding of the four prompts; each prompt is sampled twice (rows 2i, 2i + 1)


class DigitTokenizer:
  """Ids to space-separated numbers: enough to decode."""
  eos_id, pad_id = EOS, PAD

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


@pytest.fixture(scope="module")
def models():
  policy, ref, value = (jax.jit(init_params, static_argnums=0)(c, jax.random.key(s)) for c, s in
                        ((POLICY, 0), (POLICY, 1), (VALUE, 2)))
  return {"policy": policy, "ref": ref, "value": value}


@pytest.fixture(scope="module")
def prompts():
  tokens_4xP = np.random.default_rng(0).integers(2, 16, (4, P)).astype(np.int32)
  mask_4xP = (np.arange(P)[None, :] >= np.array(PROMPT_PAD)[:, None]).astype(np.int32)
  tokens_4xP = np.where(mask_4xP, tokens_4xP, PAD)
  return np.repeat(tokens_4xP, 2, axis=0), np.repeat(mask_4xP, 2, axis=0)


@pytest.fixture(scope="module")
def rolled(models, prompts):
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=Transformer(POLICY),
                                   value_model=Transformer(VALUE), max_new_tokens=N, eos_id=EOS, pad_id=PAD))
  r = roll(models["policy"], models["value"], models["ref"], *prompts, jax.random.key(3), jnp.float32(TEMPERATURE))
  return jax.device_get(r)


@pytest.fixture(scope="module")
def unpadded(rolled, models):
  """Each row's real tokens (prompt without its padding, response up to and including EOS) moved to
  the start of a row of P + N, the rest padding that a causal model cannot see from them; the
  policy's and reference's log-softmax at TEMPERATURE and the value head on those rows, with no
  input mask; and where each row's response starts and how long it is."""
  r = rolled
  tokens_BxT = np.full((8, P + N), PAD, np.int32)
  starts, lengths = [], []
  for b in range(8):
    prompt = r.prompt_BxP[b][r.prompt_mask_BxP[b].astype(bool)]
    response = r.response_BxN[b][r.response_mask_BxN[b].astype(bool)]
    tokens_BxT[b, :len(prompt) + len(response)] = np.concatenate([prompt, response])
    starts.append(len(prompt))
    lengths.append(len(response))
  logits = jax.jit(lambda params: Transformer(POLICY).apply({"params": params}, tokens_BxT).logits_BxTxV)
  value = jax.jit(lambda params: Transformer(VALUE).apply({"params": params}, tokens_BxT).scalar_BxT)
  return {"tokens_BxT": tokens_BxT, "start_B": starts, "length_B": lengths,
          "policy": np.asarray(jax.nn.log_softmax(logits(models["policy"]) / TEMPERATURE, axis=-1)),
          "ref": np.asarray(jax.nn.log_softmax(logits(models["ref"]) / TEMPERATURE, axis=-1)),
          "value": np.asarray(value(models["value"]))}


def test_responses_stop_at_their_first_eos_and_each_row_draws_its_own(rolled):
  r = rolled
  assert r.response_BxN.shape == r.response_mask_BxN.shape == (8, N)
  for b in range(8):
    tokens, mask = r.response_BxN[b], r.response_mask_BxN[b].astype(bool)
    eos_at = [t for t in range(N) if tokens[t] == EOS]
    length = eos_at[0] + 1 if eos_at else N
    assert r.ended_B[b] == bool(eos_at)
    np.testing.assert_array_equal(mask, np.arange(N) < length)  # real up to and including the EOS
    np.testing.assert_array_equal(tokens[length:], PAD)
  assert r.ended_B.any() and not r.ended_B.all(), "the seed should give rows that end and rows that do not"
  # Rows 2i and 2i + 1 repeat a prompt: each row samples with its own key.
  assert all((r.response_BxN[2 * i] != r.response_BxN[2 * i + 1]).any() for i in range(4))
  np.testing.assert_array_equal(r.prompt_BxP[::2], r.prompt_BxP[1::2])


@pytest.mark.parametrize("which, field", [("policy", "logp_BxN"), ("ref", "ref_logp_BxN")])
def test_logprobs_equal_a_forward_of_each_row_alone(rolled, unpadded, which, field):
  """log pi(token t | prompt, tokens < t) at the rollout's temperature, from a forward of the row's
  real tokens only: the rollout's left padding and EOS padding change nothing."""
  got_BxN, logp_BxTxV, tokens_BxT = getattr(rolled, field), unpadded[which], unpadded["tokens_BxT"]
  for b, (start, n) in enumerate(zip(unpadded["start_B"], unpadded["length_B"])):
    want = [logp_BxTxV[b, start - 1 + t, tokens_BxT[b, start + t]] for t in range(n)]
    np.testing.assert_allclose(got_BxN[b, :n], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_BxN[b, n:], 0.0)
  # Two different models: the reference's numbers are its own, not a copy of the policy's.
  assert np.abs(rolled.logp_BxN - rolled.ref_logp_BxN).max() > 1e-2


def test_values_are_read_at_the_state_before_each_token(rolled, unpadded):
  for b, (start, n) in enumerate(zip(unpadded["start_B"], unpadded["length_B"])):
    np.testing.assert_allclose(rolled.values_BxN[b, :n], unpadded["value"][b, start - 1:start - 1 + n], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(rolled.values_BxN[b, n:], 0.0)
  assert np.abs(rolled.values_BxN).max() > 1e-2  # a head that is not 0, so the alignment is tested


def test_a_critic_free_rollout_samples_the_same_with_zero_values(rolled, models, prompts):
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=Transformer(POLICY), value_model=None,
                                   max_new_tokens=N, eos_id=EOS, pad_id=PAD))
  r = jax.device_get(roll(models["policy"], None, models["ref"], *prompts, jax.random.key(3),
                          jnp.float32(TEMPERATURE)))
  for field in ("response_BxN", "response_mask_BxN", "ended_B"):
    np.testing.assert_array_equal(getattr(r, field), getattr(rolled, field), err_msg=field)
  for field in ("logp_BxN", "ref_logp_BxN"):  # another program: equal up to its rounding
    np.testing.assert_allclose(getattr(r, field), getattr(rolled, field), rtol=1e-6, atol=1e-6, err_msg=field)
  np.testing.assert_array_equal(r.values_BxN, np.zeros((8, N), np.float32))


def test_values_of_responses_do_not_see_the_token_they_value(models, prompts):
  """V(s_t) is the value before token t: changing token t moves V(s_{t+1}) on, never V(s_t)."""
  values = jax.jit(functools.partial(rollout_lib.values_of_responses, value_model=Transformer(VALUE)))
  response_BxN = np.random.default_rng(1).integers(2, 16, (8, N)).astype(np.int32)
  mask_BxN = np.ones((8, N), np.int32)
  before = np.asarray(values(models["value"], *prompts, response_BxN, mask_BxN))
  response_BxN[:, 3] = (response_BxN[:, 3] + 1) % 14 + 2  # another token at t = 3
  after = np.asarray(values(models["value"], *prompts, response_BxN, mask_BxN))
  np.testing.assert_array_equal(after[:, :4], before[:, :4])
  assert (np.abs(after[:, 4:] - before[:, 4:]) > 1e-6).all()
  mask_BxN[:, 4:] = 0  # masked response tokens get no value
  np.testing.assert_array_equal(np.asarray(values(models["value"], *prompts, response_BxN, mask_BxN))[:, 4:], 0.0)


def test_decode_responses_stops_at_eos():
  tok = DigitTokenizer()
  response_BxN = np.array([[5, 6, EOS, PAD], [7, 8, 9, 3], [EOS, PAD, PAD, PAD]])
  mask_BxN = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
  assert rollout_lib.decode_responses(tok, response_BxN, mask_BxN) == ["5 6", "7 8 9 3", ""]


def test_decode_responses_of_a_rollout_are_its_tokens_before_eos(rolled):
  texts = rollout_lib.decode_responses(DigitTokenizer(), rolled.response_BxN, rolled.response_mask_BxN)
  for text, tokens in zip(texts, rolled.response_BxN):
    before_eos = list(tokens[:list(tokens).index(EOS)]) if EOS in tokens else list(tokens)
    assert text == " ".join(map(str, before_eos))
