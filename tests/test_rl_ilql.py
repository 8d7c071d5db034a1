"""Offline ILQL on the RL trainer's sevens task (`rl.train_offline_ilql`): decoding with ILQL's
advantage logits on the KV cache (`sampling.generate`'s `logits_fn`), learning from the starting
policy's own scored samples, and resume.

The task and policy are test_rl's: a random 1-layer policy over 16 tokens, rewarded for the
fraction of its 6 response tokens that are 7 (gold: the same count on decoded text).
"""

import dataclasses
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_rl import DEVICE_REWARD, EOS, PAD, POLICY, DigitTokenizer, N, P, SevensScorer, _policy_params

from rlhf_jax import logs, rl, sampling, sharding
from rlhf_jax.data import preferences
from rlhf_jax.loop import LoopConfig
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rl import offline_ilql
from rlhf_jax.steps import common, ilql
from rlhf_jax.trained import TrainedModel

STEPS = 100


def _task() -> rl.Task:
  """test_rl's task with more held-out prompts (32), so the gold score is measured on 192 tokens."""
  tok = DigitTokenizer()
  rng = np.random.default_rng(0)
  texts = ["".join(chr(97 + c) for c in rng.integers(0, 26, 3)) for _ in range(96)]
  return rl.Task(train=rl.Prompts.encode(tok, texts[:64], P), test=rl.Prompts.encode(tok, texts[64:], P),
                 max_new_tokens=N, reward=DEVICE_REWARD, gold=SevensScorer(), gold_name="sevens")


def _config() -> rl.Config:
  # gamma 1: the reward comes once, at the end. Target heads at polyak 0.2: at the usual 0.005 the
  # bootstrapped Q of a continuing token lags far behind the directly learned Q of EOS over 100
  # updates, and decoding at beta 4 then stops early (eos_rate 0.75 at polyak 0.05, 0.56 at 0.2).
  return rl.Config(
      mesh=sharding.MeshConfig(data=1),
      rl=rl.RLConfig(batch_size=16, eval_batch_size=32, normalize_samples=32, samples_to_log=2),
      ilql=ilql.ILQLConfig(gamma=1.0, alpha=0.01, polyak=0.2, beta=4.0, num_samples=256),
      optim=common.OptimConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0, min_lr_ratio=1.0),
      loop=LoopConfig(steps=STEPS, log_every=10, eval_every=50, checkpoint_every=50, progress=False))


def _policy() -> TrainedModel:
  return TrainedModel(model=POLICY, params=_policy_params(), tokenizer=DigitTokenizer(), step=0)


def test_generate_logits_fn_identity_and_ilql_logits_equal_a_teacher_forced_recomputation():
  model = Transformer(POLICY)
  lm = _policy_params()
  prompt_BxP = jnp.array([[3, 4, 5], [0, 9, 12], [0, 0, 5], [6, 7, 8]], jnp.int32)  # left-padded
  mask_BxP = prompt_BxP > 0
  gen = jax.jit(sampling.generate, static_argnames=sampling.GENERATE_STATIC_ARGNAMES)
  settings = dict(model=model, max_new_tokens=N, temperature=0.8, eos_id=EOS, pad_id=PAD)
  plain = gen(lm, prompt_BxP, mask_BxP, jax.random.key(3), **settings)
  same = gen(lm, prompt_BxP, mask_BxP, jax.random.key(3), logits_fn=lambda logits_BxV, hidden_BxD: logits_BxV,
             **settings)
  jax.tree.map(np.testing.assert_array_equal, plain, same)

  # Heads 30x their init (Q of a few tenths) and beta 4: the advantage moves the distribution a lot.
  heads = ilql.Heads(POLICY.vocab_size).init(jax.random.key(4), jnp.zeros((1, 1, POLICY.d_model)))["params"]
  params = {"lm": lm, "heads": jax.tree.map(lambda x: 30 * x, heads)}
  beta, temperature = jnp.float32(4.0), jnp.float32(0.8)
  r = jax.jit(functools.partial(offline_ilql.sample, model=model, max_new_tokens=N, eos_id=EOS, pad_id=PAD))(
      params, lm, prompt_BxP, mask_BxP, jax.random.key(3), temperature, beta)
  assert r.response_mask_BxN.sum() > 2 * len(prompt_BxP)  # rows that run a while
  assert not np.array_equal(r.response_BxN, plain.tokens_BxN)
  # The hook on generate's reference path (no cache, the full forward every step): the same draws.
  logits_fn = functools.partial(ilql.next_token_logits, params["heads"], beta=beta, vocab_size=POLICY.vocab_size)
  no_cache = gen(lm, prompt_BxP, mask_BxP, jax.random.key(3), logits_fn=logits_fn, use_cache=False,
                 **{**settings, "temperature": temperature})
  np.testing.assert_array_equal(no_cache.tokens_BxN, r.response_BxN)
  np.testing.assert_allclose(no_cache.logp_BxN, r.logp_BxN, atol=1e-5)
  # Teacher-forced: the logits after prompt + the first i response tokens, one position at a time.
  tokens_BxT = jnp.concatenate([prompt_BxP, r.response_BxN], 1)
  decode = jax.jit(functools.partial(ilql.decode_logits, model=model))
  for i in range(N):
    prefix_mask_BxT = jnp.concatenate([mask_BxP, r.response_mask_BxN & (jnp.arange(N) < i)], 1)
    logp_BxV = jax.nn.log_softmax(decode(params, tokens_BxT, prefix_mask_BxT, beta) / temperature, -1)
    expected_B = jnp.take_along_axis(logp_BxV, r.response_BxN[:, i:i + 1], -1)[:, 0]
    np.testing.assert_allclose(r.logp_BxN[:, i], np.where(r.response_mask_BxN[:, i], expected_B, 0.0), atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One unbroken run: its workdir and its metrics (read before any test reruns it)."""
  workdir = tmp_path_factory.mktemp("ilql") / "run"
  rl.train_offline_ilql(_config(), _task(), _policy(), workdir)
  return workdir, logs.read_metrics(workdir, "train"), logs.read_metrics(workdir, "eval")


def test_offline_ilql_on_its_own_samples_raises_the_held_out_reward(trained):
  workdir, train, evals = trained
  assert [r["step"] for r in train] == list(range(1, STEPS + 1))
  assert all(np.isfinite(r["loss"]) for r in train) and train[-1]["q_loss"] < train[0]["q_loss"]
  # The data: 256 reference samples, each scored by the normalized reward on its last response token.
  norm = json.loads((workdir / "reward_norm.json").read_text())
  with np.load(workdir / "offline.npz") as f:
    data = {k: f[k] for k in f.files}
  assert data["response"].shape == (256, N) and data["prompt"].shape == (256, P)
  sevens = ((data["response"] == 7) & data["response_mask"]).sum(-1) / N
  np.testing.assert_allclose(data["reward"] * norm["std"] + norm["mean"], sevens, atol=1e-5)
  assert abs(data["reward"].mean()) < 0.3  # normalized on other samples of the same policy
  # Judged as the trainer judges: the starting policy's gold is norm["mean"] (its samples' mean
  # reward, the same count of sevens) and its proxy 0; ILQL's decoding lifts both well above.
  assert [r["step"] for r in evals] == [0, 50, STEPS]
  assert {"gold_score", "proxy_score", "reward_raw", "kl", "response_length", "eos_rate"} <= set(evals[-1])
  assert evals[-1]["gold_score"] > max(norm["mean"], evals[0]["gold_score"]) + 0.1, evals
  assert evals[-1]["proxy_score"] > max(0.0, evals[0]["proxy_score"]) + 1.0, evals
  assert evals[-1]["kl"] > 1.0  # paid for in KL to the reference, as any policy that moves


def test_offline_ilql_resumes_exactly_on_the_saved_data_set(trained, tmp_path):
  workdir, train, evals = trained
  run = tmp_path / "run"
  shutil.copytree(workdir, run)
  shutil.rmtree(run / "checkpoints" / str(STEPS))  # broken after step 50: resumes there
  data_written = (run / "offline.npz").stat().st_mtime_ns
  rl.train_offline_ilql(_config(), _task(), _policy(), run)
  assert (run / "offline.npz").stat().st_mtime_ns == data_written  # the same data, not sampled again
  resumed_train, resumed_evals = logs.read_metrics(run, "train"), logs.read_metrics(run, "eval")
  assert [r["step"] for r in resumed_train] == [r["step"] for r in train]
  for a, b in zip(train, resumed_train):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["q_loss"] == pytest.approx(b["q_loss"], rel=1e-6)
  assert [r["step"] for r in resumed_evals] == [0, 50, STEPS] and resumed_evals[-1] == pytest.approx(evals[-1])


def test_offline_ilql_given_records_and_errors_name_the_setting(tmp_path):
  tok = DigitTokenizer()
  records = [{"prompt": "abc", "response": "uu", "reward": 1.0}, {"prompt": "", "response": "", "reward": -1.0}]
  arrays = preferences.scored_responses(records, tok, P, N)
  assert arrays["response"][0].tolist() == [7, 7] + [PAD] * (N - 2) and arrays["response"][1, 0] == EOS
  rows = offline_ilql.ilql_rows(arrays)
  # [left-padded prompt | right-padded response]: actions are the response tokens, the reward on the last one.
  np.testing.assert_array_equal(rows["action_mask"][0], [0] * P + [1, 1] + [0] * (N - 2))
  np.testing.assert_array_equal(rows["rewards"][0], [0] * (P + 1) + [1.0] + [0] * (N - 2))
  np.testing.assert_array_equal(rows["mask"][1], [0, 0, 1, 1] + [0] * (N - 1))
  # The step counts only the response's tokens (2 + 1), not the prompt's (the default would count 3 + 1).
  state = ilql.init_state(jax.random.key(0), _policy_params(), model=Transformer(POLICY),
                          tx=common.make_optimizer(_config().optim))
  sums = functools.partial(ilql._loss_sums, hp=_config().ilql.hparams(_config().optim), target_heads=state.target_heads,
                           model=Transformer(POLICY))
  assert float(sums(state.params, rows, None)[1]["count"]) == 3
  assert float(sums(state.params, {k: v for k, v in rows.items() if k != "action_mask"}, None)[1]["count"]) == 5
  with pytest.raises(ValueError, match=r"records: 2 sequences, fewer than the rl.batch_size=16"):
    rl.train_offline_ilql(_config(), _task(), _policy(), tmp_path / "few", records=records)
  small = dataclasses.replace(_config(), ilql=dataclasses.replace(_config().ilql, num_samples=8))
  with pytest.raises(ValueError, match=r"ilql.num_samples: 8 sequences"):
    rl.train_offline_ilql(small, _task(), _policy(), tmp_path / "few")
  with pytest.raises(ValueError, match="ilql.temperature must be > 0"):
    ilql.ILQLConfig(temperature=0.0)
