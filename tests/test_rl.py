"""The RL trainer (`rlhf_jax.rl`) on a task with a known answer: a tiny random policy learns to emit token 7.

One iteration (rollout -> reward -> update) is one jitted function; these tests check that it
learns with every algorithm, that a host reward through `jax.pure_callback` gives exactly what the
same reward on the device gives, that N vmapped runs equal the runs trained alone, and that the
trainer's resumed runs equal unbroken ones.
"""

import dataclasses
import functools
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import config as config_lib
from rlhf_jax import logs, rewards, rl
from rlhf_jax import rollout as rollout_lib
from rlhf_jax import sharding, trained, vmapped
from rlhf_jax.data import preferences
from rlhf_jax.loop import LoopConfig
from rlhf_jax.models import lora
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.rewards import signals
from rlhf_jax.rl import trainer
from rlhf_jax.steps import common, dpo, rsft

POLICY = ModelConfig(vocab_size=16, max_len=12, d_model=32, n_layers=1, n_heads=2)
EOS, PAD, P, N = 1, 0, 3, 6


class DigitTokenizer:
  """Characters to ids 2..15 and ids to space-separated numbers: enough to decode and score."""
  eos_id, pad_id, fingerprint = EOS, PAD, "digits"

  def encode_batch(self, texts):
    return [[2 + ord(c) % 14 for c in t] for t in texts]

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


class SevensScorer:
  """A host scorer of texts: the fraction of the N response tokens that are 7."""
  name = "sevens"

  def score(self, texts):
    return np.array([t.split().count("7") / N for t in texts], np.float32)


def sevens_on_tokens(prompt_BxP, prompt_mask_BxP, response_BxN, response_mask_BxN):
  return jnp.sum((response_BxN == 7) & response_mask_BxN.astype(bool), axis=-1) / N


DEVICE_REWARD = rewards.TokenFunctionReward(sevens_on_tokens, label="sevens")
HOST_REWARD = rewards.HostReward(scorer=SevensScorer(), tokenizer=DigitTokenizer())


def _config(algorithm: str, **rl_overrides) -> rl.Config:
  config = rl.Config(
      rl=rl.RLConfig(algorithm=algorithm, batch_size=16, eval_batch_size=8, normalize_samples=16, samples_to_log=2,
                     **rl_overrides),
      optim=common.OptimConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0, min_lr_ratio=1.0),
      loop=LoopConfig(steps=200, log_every=2, eval_every=2, checkpoint_every=2, progress=False))
  return dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, kl_coef=0.02, kl_target=1.0))


@functools.lru_cache(maxsize=None)
def _policy_params():
  return jax.jit(Transformer(POLICY).init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]


def _algorithm(config: rl.Config) -> rl.Algorithm:
  policy_model = Transformer(POLICY)
  value_model = Transformer(rl.value_model_config(POLICY)) if config.rl.algorithm == "ppo" else None
  return rl.build_algorithm(config, policy_model=policy_model, value_model=value_model, max_new_tokens=N,
                            eos_id=EOS, pad_id=PAD)


def _init(config: rl.Config, alg: rl.Algorithm, kl_coef: float):
  params = _policy_params()
  value = rl.zero_value_params(params, alg.value_model.config) if alg.value_model is not None else None
  return alg.init(params, value, kl_coef)


def _frozen(reward=DEVICE_REWARD):
  return {"ref": _policy_params(), "reward": reward, "norm": {"mean": jnp.float32(0.0), "std": jnp.float32(1.0)}}


def _prompts(i: int, config: rl.Config):
  prompts = np.random.default_rng(100 + i).integers(2, 16, (config.rl.batch_size // config.group_size, P))
  return rl.repeat_rows({"prompt": prompts, "prompt_mask": np.ones_like(prompts)}, times=config.group_size)


# PPO (value model) and ReMax (greedy baselines) take the iteration's two special paths; every
# estimator's math is tested on its own (test_pg.py, test_advantages.py), and GRPO runs below.
# Online DPO and best-of-n fine-tuning are the two updates that are not policy gradients.
# (ReMax: slow run; its greedy baselines also train in test_sentiment_pg's smoke.)
@pytest.mark.parametrize("algorithm", ["ppo", pytest.param("remax", marks=pytest.mark.slow), "online_dpo", "rsft"])
def test_algorithms_raise_the_reward_in_one_jitted_iteration(algorithm):
  config = _config(algorithm)
  alg = _algorithm(config)
  state = _init(config, alg, 0.02)
  step = jax.jit(alg.iteration)
  frozen = _frozen()
  scores = []
  for i in range(24):
    state, metrics = step(state, _prompts(i, config), jax.random.key(1), alg.hp, frozen)
    scores.append(float(metrics["score_raw"]))
  assert np.mean(scores[-6:]) > np.mean(scores[:6]) + 0.05, scores
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert int(state.step) == 24 * config.updates_per_iteration


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_lora_trains_the_adapters_only_and_the_reference_is_the_base_model_it_holds(algorithm):
  config = _config(algorithm)
  # Adapters take a larger step than full fine-tuning (Hu et al. 2021 tune it separately).
  config = dataclasses.replace(config, policy=dataclasses.replace(config.policy, lora=lora.LoraConfig(rank=4, alpha=8)),
                               optim=dataclasses.replace(config.optim, learning_rate=2e-2))
  # A base with larger weights than a fresh model's: the adapters leave the (tied) embeddings as
  # they are, and at init_std=0.02 those bound every logit within about a nat of the others.
  base_config = dataclasses.replace(POLICY, init_std=0.2)
  base = jax.jit(Transformer(base_config).init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  models = rl.start_models(config, trained.TrainedModel(base_config, base, DigitTokenizer(), 0),
                           key=jax.random.key(3))
  alg = rl.build_algorithm(config, policy_model=models.policy_model, value_model=models.value_model,
                           max_new_tokens=N, eos_id=EOS, pad_id=PAD)
  state = jax.jit(alg.init)(models.start_params, models.value_params, 0.02)
  trainable = {sharding.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)
               if lora.is_adapter(p) or "scalar_head" in sharding.path_str(p)}
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
  assert moments == 2 * sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(state.params)
                            if sharding.path_str(p) in trainable)  # Adam's state: the adapters (+ value head) only
  frozen = {**_frozen(), "ref": None}  # the reference: the policy's own base weights
  sample = jax.jit(functools.partial(rl.sample, policy_model=models.policy_model, max_new_tokens=N, eos_id=EOS,
                                     pad_id=PAD))
  prompts = _prompts(0, config)
  r = sample(rl.trainer.iteration_lib.policy_params_of(state.params), None, prompts["prompt"],
             prompts["prompt_mask"], jax.random.key(4), jnp.float32(1))
  np.testing.assert_array_equal(r.logp_BxN, r.ref_logp_BxN)  # at the start the policy is its reference

  step = jax.jit(alg.iteration)
  start = jax.tree.map(np.asarray, state.params)
  scores = []
  for i in range(24):
    state, metrics = step(state, _prompts(i, config), jax.random.key(1), alg.hp, frozen)
    scores.append(float(metrics["score_raw"]))
  assert np.mean(scores[-6:]) > np.mean(scores[:6]) + 0.05, scores
  for (path, before), after in zip(jax.tree_util.tree_leaves_with_path(start), jax.tree.leaves(state.params)):
    name = sharding.path_str(path)
    if name in trainable and not name.endswith(("kernel_lora_a", "scalar_head/bias")):
      assert not np.array_equal(before, after), name
    elif name not in trainable:
      np.testing.assert_array_equal(before, after, err_msg=name)  # the base model never moves
  # After training, the rollout's reference log-probs are the base model's own.
  policy_params = rl.trainer.iteration_lib.policy_params_of(state.params)
  r = sample(policy_params, None, prompts["prompt"], prompts["prompt_mask"], jax.random.key(4), jnp.float32(1))
  tokens = jnp.concatenate([r.prompt_BxP, r.response_BxN], axis=1)
  base_logp = jax.nn.log_softmax(Transformer(base_config).apply({"params": base}, tokens).logits_BxTxV, -1)
  base_logp = jnp.take_along_axis(base_logp[:, P - 1:-1], r.response_BxN[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.where(r.response_mask_BxN, r.ref_logp_BxN, 0),
                             np.where(r.response_mask_BxN, base_logp, 0), atol=1e-5)
  assert float(jnp.sum(jnp.abs(r.logp_BxN - r.ref_logp_BxN) * r.response_mask_BxN)) > 0.1


def test_online_dpo_pairs_and_best_of_n_rows_equal_a_loop_over_groups():
  rng = np.random.default_rng(0)
  B, n = 8, 4
  score_B = rng.integers(0, 3, B).astype(np.float32)  # small integers: ties happen
  batch = {"score_B": score_B, "prompt_BxP": rng.integers(2, 16, (B, P)), "prompt_mask_BxP": np.ones((B, P), int),
           "response_BxN": rng.integers(2, 16, (B, N)), "response_mask_BxN": rng.integers(0, 2, (B, N)),
           "ref_logp_BxN": rng.normal(size=(B, N)).astype(np.float32)}
  pairs = jax.device_get(dpo.rollout_pairs(batch))
  margin_pairs = jax.device_get(dpo.rollout_pairs(batch, tie_margin=1.0))
  for p in range(B // 2):
    win, lose = (2 * p, 2 * p + 1) if score_B[2 * p] >= score_B[2 * p + 1] else (2 * p + 1, 2 * p)
    np.testing.assert_array_equal(pairs["chosen"][p], batch["response_BxN"][win])
    np.testing.assert_array_equal(pairs["rejected_mask"][p], batch["response_mask_BxN"][lose])
    np.testing.assert_array_equal(pairs["prompt"][p], batch["prompt_BxP"][2 * p])
    ref = [sum(batch["ref_logp_BxN"][i, t] for t in range(N) if batch["response_mask_BxN"][i, t]) for i in (win, lose)]
    np.testing.assert_allclose([pairs["ref_chosen"][p], pairs["ref_rejected"][p]], ref, rtol=1e-6)
    assert pairs["pair_mask"][p] == float(score_B[2 * p] != score_B[2 * p + 1])  # a tie is no preference
    assert margin_pairs["pair_mask"][p] == float(abs(score_B[2 * p] - score_B[2 * p + 1]) > 1.0)
  best = [g * n + max(range(n), key=lambda k: (score_B[g * n + k], -k)) for g in range(B // n)]
  np.testing.assert_array_equal(rsft.best_rows(jnp.asarray(score_B), n), best)


def test_host_reward_through_pure_callback_equals_the_device_reward():
  """Three vmapped GRPO runs (the program of the test below): the callback receives all runs'
  responses at once ([R, B, N])."""
  config = _config("grpo")
  alg = _algorithm(config)
  many = jax.jit(rl.vmapped_iteration(alg.iteration))
  keys, hps = vmapped.stack_keys([jax.random.key(s) for s in range(3)]), vmapped.stack([alg.hp] * 3)
  runs = {}
  for name, reward in (("device", DEVICE_REWARD), ("host", HOST_REWARD)):
    state = vmapped.stack([_init(config, alg, 0.02)] * 3)
    for i in range(2):
      state, metrics = many(state, _prompts(i, config), keys, hps, _frozen(reward))
    runs[name] = (state, metrics)
  # The same rewards, bitwise; the parameters within rounding: a program with a callback is
  # compiled differently (bitwise equal with XLA's default optimizations, ~2e-6 apart without).
  np.testing.assert_array_equal(runs["host"][1]["score_raw"], runs["device"][1]["score_raw"])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5), runs["device"][0].params,
               runs["host"][0].params)
  assert np.all(runs["host"][1]["score_raw"] > 0)
  # The host text reward sees the response without its EOS, the prompt only when asked.
  texts = rewards.HostReward(scorer=SevensScorer(), tokenizer=DigitTokenizer(), with_prompt=True).texts(
      np.array([[0, 7, 3]]), np.array([[0, 1, 1]]), np.array([[7, 5, EOS, PAD]]), np.array([[1, 1, 1, 0]]))
  assert texts == ["7 37 5"]


def test_reward_signals_are_rewards_on_tokens_under_jit_and_vmap():
  """`rewards.SignalReward`: the seeds' consistency and correlation signals between a predicted
  score (here on the device) and a human one (here a host scorer through the callback), equal to
  `rewards.signals` on the two scores, for one batch and for vmapped runs (each its own batch)."""
  rng = np.random.default_rng(0)
  response_RxBxN = rng.choice([5, 7, 9], size=(2, 8, N)).astype(np.int32)
  mask_RxBxN = np.ones_like(response_RxBxN)
  mask_RxBxN[:, :, -2:] = rng.integers(0, 2, (2, 8, 1))  # some rows two tokens shorter
  prompt_RxBxP = np.full((2, 8, P), 3, np.int32)
  args = (prompt_RxBxP, np.ones_like(prompt_RxBxP), response_RxBxN, mask_RxBxN)
  fives = rewards.TokenFunctionReward(lambda p, pm, r, rm: jnp.sum((r == 5) & (rm > 0), -1) / N, label="fives")
  human_RxB = ((response_RxBxN == 7) & (mask_RxBxN > 0)).sum(-1) / N  # what HOST_REWARD reads from the texts
  predicted_RxB = ((response_RxBxN == 5) & (mask_RxBxN > 0)).sum(-1) / N
  for kind, want in (("consistency", lambda h, s: signals.consistency(h, s, 0.1)),
                     ("correlation", signals.correlation_shares)):
    signal = rewards.SignalReward(predicted=fives, human=HOST_REWARD, kind=kind, tolerance=0.1)
    assert signal.name == f"{kind}(sevens vs fives)"
    score = jax.jit(lambda reward, *a: reward.score(*a))
    got_B = np.asarray(score(signal, *(a[0] for a in args)))
    np.testing.assert_allclose(got_B, want(human_RxB[0], predicted_RxB[0]), atol=1e-6)
    assert (got_B > 0).any() and (got_B < 0).any()  # both sides of the prediction occur
    vmapped_score = jax.jit(jax.vmap(lambda reward, *a: reward.score(*a), in_axes=(None, 0, 0, 0, 0)))
    np.testing.assert_allclose(vmapped_score(signal, *args),
                               np.stack([want(h, s) for h, s in zip(human_RxB, predicted_RxB)]), atol=1e-6)
  with pytest.raises(ValueError, match="reward signal: expected one of"):
    rewards.SignalReward(predicted=fives, human=HOST_REWARD, kind="discounted")
  with pytest.raises(ValueError, match="task.reward_signal must be one of"):
    rl.SentimentConfig(reward_signal="consistensy")


def _without_key_bias(params):
  d = POLICY.d_model
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[d:2 * d].set(0.0) if "c_attn" in jax.tree_util.keystr(path) and x.ndim == 1 else x, params)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_vmapped_runs_equal_runs_trained_alone(algorithm):
  """Three runs differing in seed, learning rate, temperature and KL coefficient in one program."""
  config = _config(algorithm)
  alg = _algorithm(config)
  frozen = _frozen()
  seeds, lrs, temperatures, kl_coefs = (0, 1, 2), (1e-3, 3e-3, 1e-2), (1.0, 0.7, 1.3), (0.01, 0.02, 0.05)
  hps = [dataclasses.replace(alg.hp, learning_rate=jnp.float32(lr), temperature=jnp.float32(t))
         for lr, t in zip(lrs, temperatures)]
  keys = [jax.random.key(s) for s in seeds]
  batches = [_prompts(i, config) for i in range(3)]

  stacked = vmapped.stack([_init(config, alg, c) for c in kl_coefs])
  many = jax.jit(rl.vmapped_iteration(alg.iteration))
  stacked_scores = []
  for batch in batches:
    stacked, metrics = many(stacked, batch, vmapped.stack_keys(keys), vmapped.stack(hps), frozen)
    stacked_scores.append(np.asarray(metrics["score_raw"]))
  assert stacked_scores[0].shape == (3,)

  one = jax.jit(alg.iteration)
  for i in range(3):
    state = _init(config, alg, kl_coefs[i])
    for t, batch in enumerate(batches):
      state, metrics = one(state, batch, keys[i], hps[i], frozen)
      np.testing.assert_allclose(stacked_scores[t][i], metrics["score_raw"], rtol=1e-6)
    # Batched and unbatched matmuls round differently (~1e-7 here), and Adam divides a gradient by
    # its own scale, so where a gradient is ~0 the rounding becomes a visible step: up to ~3e-5
    # after up to 24 updates at learning rates of 1e-2 (runs that truly differ move 1e-3 a step).
    # The attention's key bias has a gradient that is exactly 0 in exact arithmetic (softmax
    # ignores a constant added to every score), so its steps are all rounding: left out.
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-4),
                 _without_key_bias(vmapped.unstack(stacked, i).params), _without_key_bias(state.params))
  assert len({float(s) for s in stacked_scores[-1]}) == 3  # the runs did differ


def _task(reward=HOST_REWARD) -> rl.Task:
  tok = DigitTokenizer()
  rng = np.random.default_rng(0)
  texts = ["".join(chr(97 + c) for c in rng.integers(0, 26, 3)) for _ in range(40)]
  return rl.Task(train=rl.Prompts.encode(tok, texts[:32], P), test=rl.Prompts.encode(tok, texts[32:], P),
                 max_new_tokens=N, reward=reward, gold=SevensScorer(), gold_name="sevens")


# GRPO resumes in the slow run; the default run resumes a state with a value model (PPO) and one without.
@pytest.mark.parametrize("algorithm", ["ppo", pytest.param("grpo", marks=pytest.mark.slow), "online_dpo"])
def test_trainer_resumes_exactly_as_an_unbroken_run(algorithm, tmp_path):
  # One device: resume is what is tested here (sharded RL runs: test_fsdp.py).
  config = dataclasses.replace(_config(algorithm), mesh=sharding.MeshConfig(data=1),
                               loop=LoopConfig(steps=4, log_every=2, eval_every=2, checkpoint_every=2, progress=False))
  policy = trained.TrainedModel(model=POLICY, params=_policy_params(), tokenizer=DigitTokenizer(), step=0)
  # A device reward: a program with a host callback never enters the persistent compilation
  # cache, and these three runs compile the same programs (the host reward: tests above).
  task = _task(DEVICE_REWARD)
  rl.train(config, task, policy, tmp_path / "a")
  rl.train(config, task, policy, tmp_path / "b")
  # Break run b after iteration 2 (its last checkpoint gone) and rerun: it resumes at 2 and must
  # reach exactly what the unbroken run a reached.
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "4")
  rl.train(config, task, policy, tmp_path / "b")
  a, b = logs.read_metrics(tmp_path / "a", "train"), logs.read_metrics(tmp_path / "b", "train")
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
  for ra, rb in zip(a, b):
    assert ra["score_raw"] == pytest.approx(rb["score_raw"], abs=1e-6) and ra["kl"] == pytest.approx(rb["kl"], abs=1e-5)
  eval_a, eval_b = logs.read_metrics(tmp_path / "a", "eval"), logs.read_metrics(tmp_path / "b", "eval")
  assert [r["step"] for r in eval_a] == [0, 2, 4] and eval_a[-1] == pytest.approx(eval_b[-1])
  assert {"gold_score", "proxy_score", "kl", "response_length", "eos_rate"} <= set(eval_a[-1])
  norm = json.loads((tmp_path / "a" / "reward_norm.json").read_text())
  assert norm["samples"] == 16 and norm["std"] > 0
  assert (tmp_path / "a" / "samples.jsonl").is_file() and (tmp_path / "a" / "model.json").is_file()


def test_trainer_errors_name_the_setting(tmp_path):
  with pytest.raises(ValueError, match="rl.algorithm must be one of"):
    rl.RLConfig(algorithm="dqn")
  with pytest.raises(ValueError, match=r"multiple of the samples per prompt \(pg.group_size=3\)"):
    dataclasses.replace(_config("rloo"), pg=dataclasses.replace(rl.Config().pg, group_size=3))
  # rl.algorithm is the one place that picks the policy-gradient estimator; the group it needs is
  # checked against it (REINFORCE and ReMax take one sample per prompt).
  with pytest.raises(config_lib.ConfigError, match="pg.estimator"):
    config_lib.apply_overrides(_config("rloo"), ["pg.estimator=grpo"])
  with pytest.raises(ValueError, match=r"rl.algorithm=grpo needs pg.group_size >= 2, got 1"):
    config_lib.apply_overrides(_config("grpo"), ["pg.group_size=1"])
  assert config_lib.apply_overrides(_config("reinforce"), ["pg.group_size=1"]).group_size == 1
  policy = trained.TrainedModel(model=POLICY, params=_policy_params(), tokenizer=DigitTokenizer(), step=0)
  long_task = dataclasses.replace(_task(), max_new_tokens=POLICY.max_len)
  with pytest.raises(ValueError, match="exceeds the policy's max_len"):
    rl.train(_config("ppo"), long_task, policy, tmp_path / "long")
  with pytest.raises(ValueError, match="rl.value_init=reward needs a reward model"):
    rl.train(_config("ppo", value_init="reward"), _task(), policy, tmp_path / "value")
  assert not (tmp_path / "long").exists() and not (tmp_path / "value").exists()  # nothing starts


def test_offline_dpo_learns_given_pairs_and_is_judged_like_the_trainer(tmp_path):
  """Pairs that prefer all-7 responses: the implicit reward's accuracy and margin rise, the policy's
  gold (sevens) on held-out prompts rises, and the evaluation is the trainer's (metric names, steps)."""
  base = _config("online_dpo")  # the batch: 16 responses, 8 pairs
  config = dataclasses.replace(base, optim=dataclasses.replace(base.optim, learning_rate=1e-2),
                               loop=LoopConfig(steps=8, log_every=1, eval_every=4, checkpoint_every=8, progress=False))
  policy = trained.TrainedModel(model=POLICY, params=_policy_params(), tokenizer=DigitTokenizer(), step=0)
  task = _task(DEVICE_REWARD)
  # "u" is token 7; the rejected responses never hold one. 12 pairs, 8 a step: the data wraps.
  records = [{"prompt": p, "chosen": "uuuuuu", "rejected": "abcdef"[i % 6:] + "ab"} for i, p in
             enumerate(task.train.texts[:12])]
  arrays = preferences.policy_pairs(records, DigitTokenizer(), P, N)
  assert arrays["chosen"].shape == (12, N) and np.all(arrays["chosen"] == 7) and not np.any(arrays["rejected"] == 7)
  rl.train_offline_dpo(config, records, task, policy, tmp_path / "run")
  train = logs.read_metrics(tmp_path / "run", "train")
  assert [r["step"] for r in train] == list(range(1, 9))
  assert train[-1]["reward_margin"] > train[0]["reward_margin"] + 0.05 and train[-1]["reward_accuracy"] == 1.0
  evals = logs.read_metrics(tmp_path / "run", "eval")
  assert [r["step"] for r in evals] == [0, 4, 8]
  assert {"gold_score", "proxy_score", "reward_raw", "kl", "response_length", "eos_rate"} <= set(evals[-1])
  assert all(np.isfinite(v) for r in evals for v in r.values() if isinstance(v, float))
  assert evals[-1]["gold_score"] > evals[0]["gold_score"] + 0.3 and evals[-1]["kl"] > 0
  assert json.loads((tmp_path / "run" / "reward_norm.json").read_text())["samples"] == 16
  with pytest.raises(ValueError, match=r"5 preference pairs, fewer than the 8 a step trains on \(rl.batch_size=16"):
    rl.train_offline_dpo(config, records[:5], task, policy, tmp_path / "few")


def test_best_of_n_pools_score_each_sample_once_and_rise_with_n(tmp_path):
  """8 held-out prompts x 4 samples in batches of 24 rows: the last batch is padding but for 8 rows."""
  config = dataclasses.replace(_config("ppo"), seed=3)
  policy = trained.TrainedModel(model=POLICY, params=_policy_params(), tokenizer=DigitTokenizer(), step=0)
  task = _task(DEVICE_REWARD)
  mesh = sharding.make_mesh(config.mesh)
  table = rl.evaluate_best_of_n(config, rl.BestOfNConfig(n=(1, 2, 4), batch_size=24), task, policy, tmp_path, mesh)
  assert [r["n"] for r in table] == [1, 2, 4]
  # Proxy = gold (both count sevens): the expected best of n of one pool never falls as n grows.
  for name in ("gold_score", "proxy_score"):
    assert [r[name] for r in table] == sorted(r[name] for r in table)
  # KL: the closed form log n - (n - 1) / n; measured on the pool's rewards (ties lower it), never above it.
  assert [r["kl"] for r in table] == pytest.approx([0.0, math.log(2) - 1 / 2, math.log(4) - 3 / 4])
  assert table[0]["kl_plugin"] == 0.0 and all(0 <= r["kl_plugin"] <= r["kl"] for r in table)
  evals = logs.read_metrics(tmp_path, "eval")
  assert [(r["step"], r["gold_score"], r["kl"]) for r in evals] == [(r["n"], r["gold_score"], r["kl"]) for r in table]
  # Each row's normalized reward belongs to the text its gold scored: undo the normalization.
  frozen, _, sample = rl.trainer.reference_and_reward(config, task, policy, tmp_path, mesh, temperature=jnp.float32(1))
  proxy_PxN, gold_PxN = rl.best_of_n_sampling.sample_pool(sample, frozen["ref"], frozen, task, DigitTokenizer(), n=4,
                                                          batch_size=24, key=jax.random.key(0), temperature=jnp.float32(1),
                                                          mesh=mesh)
  norm = json.loads((tmp_path / "reward_norm.json").read_text())
  assert proxy_PxN.shape == gold_PxN.shape == (8, 4) and gold_PxN.std() > 0
  np.testing.assert_allclose(proxy_PxN * norm["std"] + norm["mean"], gold_PxN, atol=1e-5)


def test_reference_normalization_measures_mean_and_std_and_keeps_the_scale_of_a_constant_reward():
  tokens_NxP, mask_NxP = np.ones((8, P), np.int32), np.ones((8, P), np.int32)
  mesh = sharding.make_mesh(sharding.MeshConfig(data=1))

  def norm_of(scores_N):
    batches = iter(scores_N.reshape(-1, 4))  # the sampler's raw rewards, one batch of 4 at a time

    def sample(params, frozen, prompt_BxP, mask_BxP, key, temperature):
      return None, next(batches)
    return trainer.reference_normalization(sample, None, {"ref": None}, tokens_NxP, mask_NxP, batch_size=4, num_samples=8,
                                           key=jax.random.key(0), temperature=jnp.float32(1.0), mesh=mesh)

  varied = norm_of(np.array([0, 1, 2, 3, 4, 5, 6, 7], np.float32))
  assert varied == {"mean": 3.5, "std": pytest.approx(np.std(np.arange(8))), "samples": 8}
  # A reward constant on the reference's samples has no scale to measure: only its mean is removed
  # (dividing by a ~0 std would blow every later score up by 1e6).
  assert norm_of(np.full(8, 0.25, np.float32)) == {"mean": 0.25, "std": 1.0, "samples": 8}


# The trainer's evaluation and reward normalization, on the samples they drew (batch i of the
# prompts is drawn with fold_in(key, i), so a test can draw the same samples again).
IDS_REWARD = rewards.TokenFunctionReward(lambda p, pm, r, rm: jnp.sum(r * rm, -1) / N, label="ids")  # varies a lot


def _drawn(sample, params, frozen, tokens_NxP, mask_NxP, batch_size, key, mesh):
  """The rollouts and raw rewards of every whole batch, as `trainer.evaluate` draws them."""
  drawn = []
  for i in range(0, len(tokens_NxP) - batch_size + 1, batch_size):
    placed = sharding.put_batch({"p": tokens_NxP[i:i + batch_size], "m": mask_NxP[i:i + batch_size]}, mesh)
    drawn.append(sample(params, frozen, placed["p"], placed["m"], jax.random.fold_in(key, i), jnp.float32(1.0)))
  return jax.tree.map(lambda *x: np.concatenate(x), *drawn)


def test_evaluate_is_the_mean_over_its_samples_and_kl_is_0_for_the_reference(tmp_path):
  task, mesh = _task(IDS_REWARD), sharding.make_mesh(sharding.MeshConfig(data=1))
  sample = trainer.make_sampler(Transformer(POLICY), IDS_REWARD, max_new_tokens=N, eos_id=EOS, pad_id=PAD)
  frozen = {**_frozen(IDS_REWARD), "norm": {"mean": jnp.float32(6.0), "std": jnp.float32(2.0)}}
  key = jax.random.key(5)
  evaluate = functools.partial(trainer.evaluate, sample, frozen=frozen, task=task, tokenizer=DigitTokenizer(),
                               batch_size=4, key=key, temperature=jnp.float32(1.0), mesh=mesh)
  metrics = evaluate(frozen["ref"], samples_path=tmp_path / "samples.jsonl", step=3, samples_to_log=2)
  r, _ = _drawn(sample, frozen["ref"], frozen, task.test.tokens_NxP, task.test.mask_NxP, 4, key, mesh)
  assert r.response_BxN.shape == (8, N)  # the 8 held-out prompts, two batches of 4
  sevens_B = ((r.response_BxN == 7) & r.response_mask_BxN).sum(-1) / N  # what the gold scorer reads in the text
  ids_B = (r.response_BxN * r.response_mask_BxN).sum(-1) / N  # IDS_REWARD
  assert metrics == pytest.approx({
      "kl": 0.0, "gold_score": sevens_B.mean(), "reward_raw": ids_B.mean(), "proxy_score": (ids_B.mean() - 6.0) / 2.0,
      "response_length": r.response_mask_BxN.sum(-1).mean(), "eos_rate": r.ended_B.mean()}, rel=1e-6)
  assert metrics["kl"] == 0.0  # the policy is the reference: exactly, not about
  assert 0 < metrics["gold_score"] and 0 < metrics["eos_rate"] < 1, "the seed should give sevens and both endings"
  texts = rollout_lib.decode_responses(DigitTokenizer(), r.response_BxN[:2], r.response_mask_BxN[:2])
  assert [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()] == [
      {"step": 3, "prompt": p, "completion": c} for p, c in zip(task.test.texts[:2], texts)]
  # Another policy: the KL is the mean over its samples of sum_t log pi - log pi_ref.
  other = jax.tree.map(lambda x: x * 1.5, frozen["ref"])
  r, _ = _drawn(sample, other, frozen, task.test.tokens_NxP, task.test.mask_NxP, 4, key, mesh)
  kl = evaluate(other)["kl"]
  kl_B = ((r.logp_BxN - r.ref_logp_BxN) * r.response_mask_BxN).sum(-1)
  assert kl > 0.1 and kl == pytest.approx(kl_B.mean(), rel=1e-5)
  assert "gold_score" not in evaluate(frozen["ref"], task=dataclasses.replace(task, gold=None))
  with pytest.raises(ValueError, match=r"no whole batch of 16 held-out prompts \(rl.eval_batch_size\) among 8"):
    evaluate(frozen["ref"], batch_size=16)


def test_reference_normalization_gives_mean_0_and_std_1_on_the_samples_it_measured():
  task, mesh = _task(IDS_REWARD), sharding.make_mesh(sharding.MeshConfig(data=1))
  sample = trainer.make_sampler(Transformer(POLICY), IDS_REWARD, max_new_tokens=N, eos_id=EOS, pad_id=PAD)
  frozen, key = _frozen(IDS_REWARD), jax.random.key(6)
  tokens_NxP, mask_NxP = task.train.tokens_NxP, task.train.mask_NxP
  norm = trainer.reference_normalization(sample, frozen["ref"], frozen, tokens_NxP, mask_NxP, batch_size=4, num_samples=10, key=key,
                                         temperature=jnp.float32(1.0), mesh=mesh)
  assert norm["samples"] == 8  # the whole batches among the first 10 prompts
  r, _ = _drawn(sample, frozen["ref"], frozen, tokens_NxP[:8], mask_NxP[:8], 4, key, mesh)
  ids_B = (r.response_BxN * r.response_mask_BxN).sum(-1) / N  # IDS_REWARD on the reference's samples
  z_B = (ids_B - norm["mean"]) / norm["std"]
  assert ids_B.std() > 0.5 and z_B.mean() == pytest.approx(0.0, abs=1e-6) and z_B.std() == pytest.approx(1.0, rel=1e-6)
