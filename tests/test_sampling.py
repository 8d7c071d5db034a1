"""Tests for rlhf_jax.sampling on a tiny random-init Transformer.

Compiling is the cost here (seconds per program on a small CPU), so the compiled `generate` and
the runs that several tests read are module-scoped fixtures, and eos_id / pad_id / temperature are
traced so that changing them reuses a program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import sampling
from rlhf_jax.models.transformer import ModelConfig, Transformer, init_params

VOCAB, MAX_LEN = 64, 32
B, P, N = 4, 8, 12
PAD = 0
TEMPERATURE = 0.8
LOGP_ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
  # init_std 0.3 (not GPT-2's 0.02) makes the random model's next-token distribution peaked, so
  # argmax ties and near-uniform sampling do not make the comparisons vacuous or flaky.
  return Transformer(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, max_len=MAX_LEN,
                                 init_std=0.3))


@pytest.fixture(scope="module")
def params(model):
  return jax.jit(init_params, static_argnums=0)(model.config, jax.random.key(0))


@pytest.fixture(scope="module")
def generate_fn():
  return jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)


@pytest.fixture(scope="module")
def prompts():
  """Left-padded prompts with 0, 2, 5 and 7 padding tokens."""
  tokens_BxP = jax.random.randint(jax.random.key(1), (B, P), 1, VOCAB)
  mask_BxP = jnp.arange(P)[None, :] >= jnp.array([0, 2, 5, 7])[:, None]
  return jnp.where(mask_BxP, tokens_BxP, PAD), mask_BxP


@pytest.fixture(scope="module")
def free_run(generate_fn, params, model, prompts):
  """A run that never stops (eos_id outside the vocabulary)."""
  return generate_fn(params, *prompts, jax.random.key(2), model=model, max_new_tokens=N,
                     temperature=TEMPERATURE, eos_id=-1, pad_id=PAD)


@pytest.fixture(scope="module")
def eos_id(free_run):
  # A token that row 0 samples mid-way: with it as EOS, row 0 must stop there.
  return int(free_run.tokens_BxN[0, 4])


@pytest.fixture(scope="module")
def stopped_run(generate_fn, params, model, prompts, eos_id):
  return generate_fn(params, *prompts, jax.random.key(2), model=model, max_new_tokens=N,
                     temperature=TEMPERATURE, eos_id=eos_id, pad_id=PAD)


@pytest.fixture(scope="module")
def greedy_run(generate_fn, params, model, prompts):
  # top_p on top of top_k=1 changes nothing but runs the nucleus code inside generate.
  return generate_fn(params, *prompts, jax.random.key(3), model=model, max_new_tokens=N,
                     temperature=0.7, top_k=1, top_p=0.5, eos_id=-1, pad_id=PAD)


def test_eos_stops_row_and_pads(free_run, stopped_run, eos_id):
  # Per-step keys do not depend on whether a row has stopped, so a run with EOS must be the free
  # run cut after each row's first EOS.
  free_tokens = np.asarray(free_run.tokens_BxN)
  n_ended = 0
  for b in range(B):
    hits = np.flatnonzero(free_tokens[b] == eos_id)
    length = int(hits[0]) + 1 if hits.size else N
    n_ended += bool(hits.size)
    expected_mask = np.arange(N) < length
    np.testing.assert_array_equal(stopped_run.mask_BxN[b], expected_mask, err_msg=f"row {b}")
    np.testing.assert_array_equal(stopped_run.tokens_BxN[b, :length], free_tokens[b, :length])
    np.testing.assert_array_equal(stopped_run.tokens_BxN[b, length:], PAD)
    np.testing.assert_allclose(stopped_run.logp_BxN[b, :length], free_run.logp_BxN[b, :length], atol=1e-6)
    np.testing.assert_array_equal(stopped_run.logp_BxN[b, length:], 0.0)
    assert int(stopped_run.lengths_B[b]) == length
    assert bool(stopped_run.ended_B[b]) == bool(hits.size)
  assert 1 <= n_ended and stopped_run.lengths_B[0] <= 5, "the test should make row 0 stop early"
  assert not free_run.ended_B.any() and (free_run.lengths_B == N).all()


def test_cache_matches_no_cache(generate_fn, params, model, prompts, eos_id, stopped_run):
  uncached = generate_fn(params, *prompts, jax.random.key(2), model=model, max_new_tokens=N,
                         temperature=TEMPERATURE, eos_id=eos_id, pad_id=PAD, use_cache=False)
  np.testing.assert_array_equal(uncached.tokens_BxN, stopped_run.tokens_BxN)
  np.testing.assert_array_equal(uncached.mask_BxN, stopped_run.mask_BxN)
  np.testing.assert_allclose(uncached.logp_BxN, stopped_run.logp_BxN, atol=LOGP_ATOL)


@pytest.mark.parametrize("run_name, temperature", [("stopped_run", TEMPERATURE), ("greedy_run", 0.7)])
def test_teacher_forced_logprobs_match_sampler(request, params, model, prompts, run_name, temperature):
  # greedy_run samples with the top-k filter on; its logp must still be the unfiltered one.
  run = request.getfixturevalue(run_name)
  logp_BxN = jax.jit(sampling.response_logprobs, static_argnames="model")(
      params, *prompts, run.tokens_BxN, run.mask_BxN, model=model, temperature=temperature)
  np.testing.assert_allclose(logp_BxN, run.logp_BxN, atol=LOGP_ATOL)
  assert (np.asarray(run.logp_BxN)[np.asarray(run.mask_BxN)] < 0).all()


def test_greedy_matches_python_loop(greedy_run, params, model, prompts):
  # Plain loop: one full forward per step over a fixed buffer (future slots are padding and
  # causally invisible anyway), argmax, append; log-probs in float64 numpy.
  prompt_BxP, prompt_mask_BxP = (np.asarray(x) for x in prompts)
  forward = jax.jit(lambda p, t, m: model.apply({"params": p}, t, input_mask_BxT=m).logits_BxTxV)
  tokens_BxS = np.concatenate([prompt_BxP, np.full((B, N), PAD)], axis=1).astype(np.int32)
  mask_BxS = np.concatenate([prompt_mask_BxP, np.zeros((B, N), bool)], axis=1)
  expected_logp_BxN = np.zeros((B, N))
  for i in range(N):
    logits_BxV = np.asarray(forward(params, tokens_BxS, mask_BxS)[:, P - 1 + i], np.float64) / 0.7
    logp_BxV = logits_BxV - np.log(np.exp(logits_BxV - logits_BxV.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits_BxV.max(-1, keepdims=True)
    token_B = logits_BxV.argmax(-1)
    expected_logp_BxN[:, i] = logp_BxV[np.arange(B), token_B]
    tokens_BxS[:, P + i] = token_B
    mask_BxS[:, P + i] = True
  np.testing.assert_array_equal(greedy_run.tokens_BxN, tokens_BxS[:, P:])
  np.testing.assert_allclose(greedy_run.logp_BxN, expected_logp_BxN, atol=LOGP_ATOL)


def test_left_padding_does_not_change_continuation(generate_fn, params, model):
  # The same prompt with 0 and with 4 padding tokens, next to other prompts, with per-row keys:
  # tokens must be equal and log-probs equal to float tolerance.
  prompt = jax.random.randint(jax.random.key(4), (6,), 1, VOCAB)
  others = jax.random.randint(jax.random.key(5), (2, 10), 1, VOCAB)
  row_keys = jax.random.split(jax.random.key(6), 3)
  settings = dict(model=model, max_new_tokens=N, temperature=1.3, eos_id=-1, pad_id=PAD)
  alone = generate_fn(params, prompt[None], jnp.ones((1, 6), bool), row_keys[1:2], **settings)
  batch_prompts = jnp.stack([others[0], jnp.pad(prompt, (4, 0), constant_values=PAD), others[1]])
  batch_mask = jnp.ones((3, 10), bool).at[1, :4].set(False)
  batched = generate_fn(params, batch_prompts, batch_mask, row_keys, **settings)
  np.testing.assert_array_equal(batched.tokens_BxN[1], alone.tokens_BxN[0])
  np.testing.assert_allclose(batched.logp_BxN[1], alone.logp_BxN[0], atol=LOGP_ATOL)
  # The neighbours really differ, so the comparison is not of a degenerate constant output.
  assert not np.array_equal(batched.tokens_BxN[0], batched.tokens_BxN[1])


def test_too_long_raises(params, model, prompts):
  with pytest.raises(ValueError, match=r"max_new_tokens.*model\.max_len=32"):
    sampling.generate(params, *prompts, jax.random.key(0), model=model, max_new_tokens=MAX_LEN - P + 1,
                      eos_id=-1, pad_id=PAD)


def test_bad_settings_raise(params, model, prompts):
  for bad in (dict(temperature=0.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      sampling.generate(params, *prompts, jax.random.key(0), model=model, max_new_tokens=2,
                        eos_id=-1, pad_id=PAD, **bad)


# sample_logits on hand-made distributions. Every case is computed by one compiled program (one
# compile instead of one per static top_k / top_p), then the tests read their case.

PROBS = np.array([0.1, 0.5, 0.15, 0.25])  # sorted: token 1 (.5), 3 (.25), 2 (.15), 0 (.1)
NUM_DRAWS = 4000
NUCLEUS_CASES = [  # (top_k, top_p, expected sampling distribution)
    (0, 1.0, {0: 0.1, 1: 0.5, 2: 0.15, 3: 0.25}),
    (2, 1.0, {1: 2 / 3, 3: 1 / 3}),
    (3, 1.0, {1: 0.5 / 0.9, 3: 0.25 / 0.9, 2: 0.15 / 0.9}),
    # Mass of the tokens ranked above: 0, .5, .75, .9 -> top_p=.7 and .74 keep {1, 3}; .76 adds 2.
    (0, 0.7, {1: 2 / 3, 3: 1 / 3}),
    (0, 0.74, {1: 2 / 3, 3: 1 / 3}),
    (0, 0.76, {1: 0.5 / 0.9, 3: 0.25 / 0.9, 2: 0.15 / 0.9}),
    # top-k first, then top-p on the renormalised top-k: {1: 2/3, 3: 1/3} with top_p=.6 -> {1}.
    (2, 0.6, {1: 1.0}),
]
GREEDY_CASES = [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)]


@jax.jit
def _hand_made_draws(key):
  k_nucleus, k_greedy, k_rows = jax.random.split(key, 3)
  out = {}
  logits_BxV = jnp.tile(jnp.log(jnp.asarray(PROBS, jnp.float32)), (NUM_DRAWS, 1))
  for i, (top_k, top_p, _) in enumerate(NUCLEUS_CASES):
    out[f"nucleus{i}"] = sampling.sample_logits(logits_BxV, k_nucleus, 1.0, top_k, top_p)
  out["greedy_logits"] = jax.random.normal(jax.random.fold_in(key, 1), (64, 50)) * 3
  for i, kwargs in enumerate(GREEDY_CASES):
    out[f"greedy{i}"] = sampling.sample_logits(out["greedy_logits"], k_greedy, **kwargs)
  out["greedy_t2"] = sampling.sample_logits(out["greedy_logits"], k_greedy, 2.0, top_k=1)
  row_logits_BxV = jax.random.normal(jax.random.fold_in(key, 2), (3, 20))
  temperature_B = jnp.array([0.5, 1.0, 2.0])
  keys_B = jax.random.split(k_rows, 3)
  out["rows_batched"] = sampling.sample_logits(row_logits_BxV, keys_B, temperature_B)
  out["rows_alone"] = [sampling.sample_logits(row_logits_BxV[b:b + 1], keys_B[b:b + 1], temperature_B[b])
                       for b in range(3)]
  # sample_logits_rows: every row its own settings, against sample_logits on that row alone.
  settings_logits_BxV = jax.random.normal(jax.random.fold_in(key, 3), (len(ROW_SETTINGS), 50)) * 2
  settings_keys_B = jax.random.split(jax.random.fold_in(key, 4), len(ROW_SETTINGS))
  t_B, k_B, p_B = (jnp.asarray(column) for column in zip(*ROW_SETTINGS))
  out["settings_batched"] = sampling.sample_logits_rows(settings_logits_BxV, settings_keys_B, t_B, k_B, p_B)
  out["settings_alone"] = [sampling.sample_logits(settings_logits_BxV[b:b + 1], settings_keys_B[b:b + 1], t, k, p)
                           for b, (t, k, p) in enumerate(ROW_SETTINGS)]
  plain = jnp.asarray([b for b, (_, k, p) in enumerate(ROW_SETTINGS) if k in (0, 50) and p == 1.0])
  out["settings_unfiltered"] = sampling.sample_logits_rows(
      settings_logits_BxV[plain], settings_keys_B[plain], t_B[plain], k_B[plain], p_B[plain], filtered=False)
  out["settings_plain_rows"] = plain
  return out


# (temperature, top_k, top_p) of each row; top_k 50 is the whole vocabulary (off).
ROW_SETTINGS = [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.9), (2.0, 3, 0.8), (1.0, 1, 1.0),
                (0.7, 50, 1.0), (1.0, 0, 0.3), (1.3, 10, 0.95), (0.9, 0, 1.0)]


@pytest.fixture(scope="module")
def hand_made_draws():
  return _hand_made_draws(jax.random.key(7))


@pytest.mark.parametrize("case", range(len(NUCLEUS_CASES)),
                         ids=[f"top_k={k}-top_p={p}" for k, p, _ in NUCLEUS_CASES])
def test_sample_logits_keeps_exactly_the_nucleus(hand_made_draws, case):
  expected = NUCLEUS_CASES[case][2]
  token_B, logp_B = hand_made_draws[f"nucleus{case}"]
  freq = np.bincount(np.asarray(token_B), minlength=len(PROBS)) / NUM_DRAWS
  assert set(np.flatnonzero(freq)) == set(expected), freq
  for token, prob in expected.items():
    assert abs(freq[token] - prob) < 0.03, (token, freq)
  # logp is under the unfiltered distribution.
  np.testing.assert_allclose(logp_B, np.log(PROBS)[np.asarray(token_B)], rtol=1e-5)


def test_sample_logits_greedy_limits(hand_made_draws):
  logits_BxV = hand_made_draws["greedy_logits"]
  argmax_B = np.asarray(logits_BxV.argmax(-1))
  for i, kwargs in enumerate(GREEDY_CASES):
    np.testing.assert_array_equal(hand_made_draws[f"greedy{i}"][0], argmax_B, err_msg=str(kwargs))
  # With temperature 2, logp is log_softmax(logits / 2) at the token even though top_k=1 filtered.
  token_B, logp_B = hand_made_draws["greedy_t2"]
  np.testing.assert_array_equal(token_B, argmax_B)
  expected = jax.nn.log_softmax(logits_BxV / 2.0)[jnp.arange(64), argmax_B]
  np.testing.assert_allclose(logp_B, expected, rtol=1e-6)


def test_sample_logits_per_row_temperature_and_keys(hand_made_draws):
  # A [B] temperature scales each row; [B] keys make row b's draw equal to sampling it alone.
  token_B, logp_B = hand_made_draws["rows_batched"]
  for b, (token, logp) in enumerate(hand_made_draws["rows_alone"]):
    assert int(token[0]) == int(token_B[b])
    np.testing.assert_allclose(logp[0], logp_B[b], rtol=1e-6)


def test_sample_logits_rows_draws_what_sample_logits_draws_for_each_row_alone(hand_made_draws):
  """The server's sampler: each row's settings are arrays, and a row draws exactly the token (and
  log-prob) that sample_logits draws for it with its settings as static arguments."""
  token_B, logp_B = hand_made_draws["settings_batched"]
  alone = hand_made_draws["settings_alone"]
  np.testing.assert_array_equal(token_B, [int(t[0]) for t, _ in alone])
  np.testing.assert_allclose(logp_B, [float(lp[0]) for _, lp in alone], rtol=1e-6)
  assert len(set(np.asarray(token_B).tolist())) > 3  # the rows did not all draw one token
  # Without the sort (no row filters), the unfiltered rows draw the same tokens.
  plain = np.asarray(hand_made_draws["settings_plain_rows"])
  np.testing.assert_array_equal(hand_made_draws["settings_unfiltered"][0], np.asarray(token_B)[plain])


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_stream_yields_the_tokens_generate_samples(model, params, generate_fn, top_p):
  """`rlhf-jax chat` streams what the batched sampler would have sampled, stopping at EOS."""
  n_new, prompt_len = 12, 10
  for seed, prompt in enumerate([[5, 9, 17], [3] * 12]):  # shorter and longer than prompt_len
    key = jax.random.key(seed)
    eos = 7
    got = list(sampling.stream(params, prompt, key, model=model, max_new_tokens=n_new, temperature=TEMPERATURE,
                               top_p=top_p, eos_id=eos, pad_id=PAD, prompt_len=prompt_len))
    ids = prompt[-prompt_len:]
    padded = jnp.asarray([[PAD] * (prompt_len - len(ids)) + ids])
    mask = jnp.asarray([[0] * (prompt_len - len(ids)) + [1] * len(ids)])
    out = generate_fn(params, padded, mask, key, model=model, max_new_tokens=n_new, temperature=TEMPERATURE,
                      top_p=top_p, eos_id=eos, pad_id=PAD)
    want = [int(t) for t, m in zip(out.tokens_BxN[0], out.mask_BxN[0]) if m]
    assert got == want and 0 < len(got) <= n_new
  with pytest.raises(ValueError, match="max_len"):
    next(sampling.stream(params, [1], key, model=model, max_new_tokens=MAX_LEN, eos_id=1, pad_id=PAD))


def test_inverse_cdf_choice_equals_a_loop_and_draws_the_distribution():
  rng = np.random.default_rng(0)
  V = 37  # not a multiple of the block size: the last block is padded
  probs_BxV = rng.random((6, V)) * (rng.random((6, V)) < 0.5)  # many entries of probability 0
  probs_BxV[:, 5] = 0.3
  probs_BxV /= probs_BxV.sum(-1, keepdims=True)
  u_B = np.array([0.0, 0.1, 0.5, 0.9, 0.999999, 1.0 - 2.0 ** -24], np.float32)
  got = np.asarray(sampling.inverse_cdf_choice(jnp.asarray(probs_BxV, jnp.float32), jnp.asarray(u_B)))
  for b in range(6):
    target, total = u_B[b] * probs_BxV[b].sum(), 0.0
    for i in range(V):  # the first entry whose cumulative mass passes the target
      total += probs_BxV[b, i]
      if total > target and probs_BxV[b, i] > 0:
        break
    assert got[b] == i and probs_BxV[b, got[b]] > 0, (b, got[b], i)
  # Many draws: frequencies within 4 standard errors of the probabilities; zero stays zero.
  probs_V = jnp.asarray(probs_BxV[0], jnp.float32)
  u_M = jax.random.uniform(jax.random.key(0), (20_000,))
  draws = np.asarray(sampling.inverse_cdf_choice(jnp.broadcast_to(probs_V, (20_000, V)), u_M))
  freq_V = np.bincount(draws, minlength=V) / draws.size
  p_V = np.asarray(probs_V)
  assert np.all(freq_V[p_V == 0] == 0)
  assert np.all(np.abs(freq_V - p_V) <= 4 * np.sqrt(p_V * (1 - p_V) / draws.size) + 1e-9)
