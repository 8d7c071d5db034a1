"""Preference-conditioned pretraining: segmenting and tagging, the packed streams of each mode, the
model's preference embedding and the sampler's conditioning, and that conditional training learns
to follow its condition (control token and embedding alike)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses, sampling, sharding
from rlhf_jax.data import conditional, lm_pipeline
from rlhf_jax.models.transformer import ModelConfig, Transformer, init_params
from rlhf_jax.steps import common, lm

G, B_ = conditional.GOOD, conditional.BAD
GOOD_ID, BAD_ID, EOS = 4, 5, 3


def test_split_segments_round_trips_and_keeps_space_with_next_sentence():
  text = 'He said "Stop!" and left. Why? Because.\nThe end'
  segments = conditional.split_segments(text)
  assert "".join(segments) == text
  assert segments == ['He said "Stop!"', " and left.", " Why?", " Because.", "\nThe end"]
  assert conditional.split_segments("") == []


def test_tag_segments_threshold_and_unconditioned_fraction():
  scores = np.array([-0.5, -0.05, 0.0, 0.3])
  tags = conditional.tag_segments(scores, -0.05, 0.0, np.random.default_rng(0))
  np.testing.assert_array_equal(tags, [B_, G, G, G])  # at the threshold is good
  many = conditional.tag_segments(np.zeros(20_000), 0.0, 0.1, np.random.default_rng(0))
  assert abs(np.mean(many == conditional.NONE) - 0.1) < 0.01
  assert set(np.unique(many)) == {conditional.NONE, G}
  with pytest.raises(ValueError, match="unconditioned_fraction"):
    conditional.tag_segments(scores, 0.0, 1.5, np.random.default_rng(0))


# Two documents: [seg a (good), seg b (bad)] and [seg c (unconditioned)].
SEGMENTS = [[[10, 11], [12]], [[13, 14]]]
TAGS = [np.array([G, B_]), np.array([conditional.NONE])]
build = functools.partial(conditional.build_stream, SEGMENTS, TAGS, control_ids=(GOOD_ID, BAD_ID), eos_id=EOS)


def test_build_stream_each_mode_by_hand():
  plain = build(mode="plain")
  np.testing.assert_array_equal(plain.tokens_N, [10, 11, 12, EOS, 13, 14, EOS])
  assert not plain.preference_N.any() and not plain.control_N.any()

  np.testing.assert_array_equal(build(mode="filter").tokens_N, [10, 11, EOS, 13, 14, EOS])

  token = build(mode="token")
  np.testing.assert_array_equal(token.tokens_N, [GOOD_ID, 10, 11, BAD_ID, 12, EOS, 13, 14, EOS])
  np.testing.assert_array_equal(token.control_N, [1, 0, 0, 1, 0, 0, 0, 0, 0])

  emb = build(mode="embedding")
  np.testing.assert_array_equal(emb.tokens_N, plain.tokens_N)
  # Input i carries the tag of token i + 1, the one it predicts: 11 predicts 12 (bad), the first
  # EOS predicts 13 (unconditioned), the last position predicts nothing.
  np.testing.assert_array_equal(emb.preference_N, [G, B_, B_, 0, 0, 0, 0])


def test_build_stream_drops_documents_filtering_empties_and_checks_inputs():
  out = conditional.build_stream([[[7]], [[8]]], [np.array([B_]), np.array([G])], mode="filter",
                                 control_ids=(GOOD_ID, BAD_ID), eos_id=EOS)
  np.testing.assert_array_equal(out.tokens_N, [8, EOS])
  with pytest.raises(ValueError, match="mode"):
    build(mode="soft")
  with pytest.raises(ValueError, match="tags"):
    conditional.build_stream(SEGMENTS, TAGS[:1], mode="plain", control_ids=(4, 5), eos_id=EOS)


def test_mask_targets_and_eval_batches_carry_preferences():
  token = build(mode="token")
  [batch] = conditional.mask_targets(lm_pipeline.eval_batches(token.tokens_N, 4, 2), [GOOD_ID, BAD_ID])
  counted = batch["targets"][batch["loss_mask"] == 1]
  assert BAD_ID not in counted and sorted(counted.tolist()) == sorted([10, 11, 12, EOS, 13, 14, EOS])
  emb = build(mode="embedding")
  [batch] = lm_pipeline.eval_batches(emb.tokens_N, 4, 2, preference_N=emb.preference_N)
  np.testing.assert_array_equal(batch["preference"].reshape(-1)[:6], emb.preference_N[:6])
  train = next(iter(lm_pipeline.lm_dataset(emb.tokens_N, 3, 2, seed=0, preference_N=emb.preference_N)))
  for inputs, prefs in zip(train["inputs"], train["preference"]):
    start = int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(emb.tokens_N, 3) == inputs).all(1))[0])
    np.testing.assert_array_equal(prefs, emb.preference_N[start:start + 3])
  with pytest.raises(ValueError, match="preference_N"):
    lm_pipeline.eval_batches(emb.tokens_N, 4, 2, preference_N=emb.preference_N[:-1])


@pytest.fixture(scope="module")
def pref_model():
  return Transformer(ModelConfig(vocab_size=16, max_len=32, d_model=16, n_layers=1, n_heads=2, n_preferences=3,
                                 init_std=0.3))


def trained_preferences(params):
  """`params` with the preference embedding a training run would have moved away from zero."""
  wpref = 0.3 * jax.random.normal(jax.random.key(9), params["wpref"]["embedding"].shape)
  return {**params, "wpref": {"embedding": wpref}}


def test_preference_embedding_starts_at_zero_then_conditions_the_model(pref_model):
  params = init_params(pref_model.config, jax.random.key(0))
  assert params["wpref"]["embedding"].shape == (3, 16)
  tokens = jnp.arange(6)[None] % 16
  logits = lambda p=None: pref_model.apply({"params": params}, tokens, preference_BxT=p).logits_BxTxV  # noqa: E731
  # At initialization every preference gives the unconditioned model's logits.
  np.testing.assert_array_equal(logits(jnp.ones_like(tokens)), logits(2 * jnp.ones_like(tokens)))
  params = trained_preferences(params)
  np.testing.assert_array_equal(logits(), logits(jnp.zeros_like(tokens)))  # none given = unconditioned
  assert not np.allclose(logits(jnp.ones_like(tokens)), logits(2 * jnp.ones_like(tokens)))
  plain = Transformer(ModelConfig(vocab_size=16, max_len=32, d_model=16, n_layers=1, n_heads=2))
  with pytest.raises(ValueError, match="n_preferences"):
    plain.apply({"params": init_params(plain.config, jax.random.key(0))}, tokens, preference_BxT=tokens)


def test_sampler_conditions_on_preference_and_never_emits_suppressed_ids(pref_model):
  params = trained_preferences(init_params(pref_model.config, jax.random.key(0)))
  prompt, mask = jnp.full((8, 2), 7), jnp.ones((8, 2), bool)
  gen = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)
  kw = dict(model=pref_model, max_new_tokens=12, temperature=2.0, eos_id=-1, pad_id=0)
  free = gen(params, prompt, mask, jax.random.key(1), **kw, preference_B=jnp.full(8, 2))
  banned = tuple(int(t) for t in np.unique(free.tokens_BxN)[:3])  # tokens it does sample ...
  out = gen(params, prompt, mask, jax.random.key(1), **kw, preference_B=jnp.full(8, 2), suppress_ids=banned)
  assert not np.isin(np.asarray(out.tokens_BxN), banned).any()  # ... never appear once suppressed
  # The KV-cache path and the full recompute agree with a preference, so it reaches every step.
  slow = gen(params, prompt, mask, jax.random.key(1), **kw, preference_B=jnp.full(8, 2), use_cache=False)
  np.testing.assert_array_equal(free.tokens_BxN, slow.tokens_BxN)
  other = gen(params, prompt, mask, jax.random.key(1), **kw, preference_B=jnp.full(8, 1))
  assert (np.asarray(other.tokens_BxN) != np.asarray(free.tokens_BxN)).any()


def test_preference_contrastive_loss_by_hand():
  logp = jnp.array([[-1.0, -2.0, -3.0]])
  flipped = jnp.array([[-2.0, -2.0, -0.5]])
  total, count = losses.preference_contrastive_loss(logp, flipped, jnp.array([[1, 1, 0]]))
  expected = np.log1p(np.exp(-1.0)) + np.log(2.0)  # -log sigmoid(1) - log sigmoid(0); the third is masked
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert count == 2


@pytest.mark.parametrize("mode,contrastive_weight", [
    ("token", 0.0), pytest.param("embedding", 0.0, marks=pytest.mark.slow), ("embedding", 1.0)])
def test_conditional_training_follows_the_condition(mode, contrastive_weight):
  """Good segments use tokens 10-13, bad ones 20-23, in random order; after training, sampling under
  good (bad suppressed) gives good tokens and under bad gives bad ones, each far above the 50% mix."""
  rng = np.random.default_rng(0)
  docs, tags = [], []
  for _ in range(300):
    doc_tags = rng.choice([G, B_], size=3)
    docs.append([list(rng.integers(10, 14, 4) + (10 if t == B_ else 0)) for t in doc_tags])
    tags.append(conditional.tag_segments(np.where(doc_tags == G, 1.0, -1.0), 0.0, 0.02, rng))
  stream = conditional.build_stream(docs, tags, mode=mode, control_ids=(GOOD_ID, BAD_ID), eos_id=EOS)
  n_pref = conditional.N_PREFERENCES if mode == "embedding" else 0
  model = Transformer(ModelConfig(vocab_size=32, max_len=32, d_model=32, n_layers=1, n_heads=2, n_preferences=n_pref))
  optim = common.OptimConfig(learning_rate=1e-2, warmup_steps=5, weight_decay=0.0)
  tx = common.make_optimizer(optim)
  mesh = sharding.make_mesh()
  init, _ = common.sharded_init(functools.partial(common.init_state, model=model, tx=tx), mesh, "replicated",
                                jax.random.key(0))
  state = init(jax.random.key(0))
  step = lm.jit_train_step(mesh, model=model, tx=tx, optim=optim, total_steps=150,
                           contrastive_weight=contrastive_weight, preference_flip=conditional.FLIP)
  data = iter(lm_pipeline.lm_dataset(stream.tokens_N, 16, 16, seed=0,
                                     preference_N=stream.preference_N if n_pref else None))
  for _ in range(150):
    state, metrics = step(state, sharding.put_batch(next(data), mesh), jax.random.key(1), optim.hparams())
  if contrastive_weight:  # the contrast is learned: far below its starting value log 2
    assert metrics["contrastive"] < 0.2

  gen = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)
  for pref, lo in ((G, 10), (B_, 20)):
    prompt = [EOS] + ([GOOD_ID if pref == G else BAD_ID] if mode == "token" else [])
    prompt_BxP = jnp.tile(jnp.asarray(prompt), (32, 1))
    out = gen(state.params, prompt_BxP, jnp.ones_like(prompt_BxP), jax.random.key(pref), model=model,
              max_new_tokens=8, eos_id=-1, pad_id=0,
              suppress_ids=(BAD_ID if pref == G else GOOD_ID,) if mode == "token" else (),
              preference_B=jnp.full(32, pref) if n_pref else None)
    text = np.asarray(out.tokens_BxN)
    text = text[(text >= 10) & (text < 24)]
    assert np.mean((text >= lo) & (text < lo + 4)) > 0.85, (mode, pref)
