"""A reward model with one head per rubric criterion (`steps.reward` kind "rubric"), its recipe on a
store's rubric scores, and the fluency signal of simulated experts."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import logs, runs, sharding, trained
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.data import wordnet_qa
from rlhf_jax.errors import UserError
from rlhf_jax.feedback import rubric
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.rewards.fluency import LMFluency
from rlhf_jax.rewards.reward_model import RewardModelScorer
from rlhf_jax.steps import common, reward
from rlhf_jax.tokenizers import HFTokenizer

K, LEVELS = 3, 5
CONFIG = ModelConfig(vocab_size=32, max_len=16, d_model=32, n_layers=1, n_heads=2, scalar_head=True,
                     scalar_head_init="reward", scalar_heads=K)


def _batch(seed=0, B=8, T=10):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, T + 1, B)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  return {"tokens": rng.integers(1, 32, (B, T)).astype(np.int32) * mask, "mask": mask,
          "labels": rng.integers(0, LEVELS, (B, K)).astype(np.int32),
          "label_mask": (rng.random((B, K)) < 0.8).astype(np.float32)}


def test_the_rubric_loss_is_each_criterions_ordinal_loss_on_its_own_head():
  params = Transformer(CONFIG).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  batch = _batch()
  total, sums = reward.rubric_sums(params, batch, None, model=Transformer(CONFIG), num_levels=LEVELS)
  one_head = Transformer(dataclasses.replace(CONFIG, scalar_heads=1))
  loop_total, loop_count = 0.0, 0.0
  for k in range(K):
    head = params["scalar_head"]
    params_k = {**params, "scalar_head": {"kernel": head["kernel"][:, k:k + 1], "bias": head["bias"][k:k + 1]}}
    t, s = reward.ordinal_sums(params_k, {"tokens": batch["tokens"], "mask": batch["mask"], "label": batch["labels"][:, k],
                                          "row_mask": batch["label_mask"][:, k]}, None, model=one_head,
                               num_levels=LEVELS)
    loop_total, loop_count = loop_total + float(t), loop_count + float(s["count"])
  np.testing.assert_allclose(float(total), loop_total, rtol=1e-5)
  assert float(sums["count"]) == loop_count == batch["label_mask"].sum()


def test_training_the_heads_fits_each_criterion():
  model = Transformer(CONFIG)
  optim = common.OptimConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0)
  tx = common.make_optimizer(optim)
  state = common.init_state(jax.random.key(1), model=model, tx=tx)
  step = jax.jit(lambda st, b: reward.train_step(st, b, jax.random.key(2), optim.hparams(), model=model, tx=tx,
                                                 kind="rubric", num_levels=LEVELS, warmup_steps=0, total_steps=100,
                                                 min_lr_ratio=1.0))
  batch = _batch(seed=3)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  scores = reward.criterion_rewards(state.params, batch["tokens"], batch["mask"], model=model)
  assert scores.shape == (8, K)


def test_a_saved_rubric_reward_model_loads_as_the_one_reward_its_weights_combine(tmp_path):
  params = Transformer(CONFIG).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  (tmp_path / "config.json").write_text("{}")
  trained.save_model_config(tmp_path, CONFIG)
  trained.copy_tokenizer(Path(__file__).parent / "data" / "tiny_hf" / "qwen2", tmp_path)
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  checkpointer.save(1, state=common.restart_state(params, tx=optax.identity()), rng=jax.random.key(0), config={})
  checkpointer.close()
  mesh = sharding.make_mesh()
  with pytest.raises(UserError, match="no rubric.json"):
    trained.load(tmp_path, mesh)
  trained.save_rubric(tmp_path, ["accuracy", "fluency", "satisfaction"], [0.5, 0.2, 0.3])
  one = trained.load(tmp_path, mesh)
  assert one.model.scalar_heads == 1 and isinstance(one.tokenizer, HFTokenizer)
  batch = _batch()
  by_head = reward.criterion_rewards(params, batch["tokens"], batch["mask"], model=Transformer(CONFIG))
  np.testing.assert_allclose(reward.rewards(one.params, batch["tokens"], batch["mask"], model=Transformer(one.model)),
                             by_head @ jnp.array([0.5, 0.2, 0.3]), rtol=1e-5, atol=1e-6)
  assert trained.load(tmp_path, mesh, combine_heads=False).model.scalar_heads == K


def test_a_language_models_fluency_is_its_mean_log_prob_per_answer_token():
  folder = Path(__file__).parent / "data" / "tiny_hf" / "qwen2"
  fluency = LMFluency(folder, prompt_len=16, answer_len=16, batch_size=8)
  prompts = ["Question: What kind of thing is a dog?\nAnswer:"] * 5
  answers = [" canine.", " a domestic animal.", "", " canine.", " cat"]
  nats = fluency(prompts, answers)
  assert nats.shape == (5,) and np.all(nats < 0) and nats[0] == nats[3]  # a padded batch; equal rows agree
  # By hand for one answer: the LM's log-probs of its tokens after the prompt, averaged.
  tok, lm = fluency.lm.tokenizer, fluency.lm
  p, a = tok.encode(prompts[0])[-16:], tok.encode(answers[1])
  logits = Transformer(lm.model).apply({"params": lm.params}, jnp.asarray([p + a])).logits_BxTxV[0]
  logp = jax.nn.log_softmax(logits, -1)[len(p) - 1:-1]
  np.testing.assert_allclose(nats[1], float(jnp.mean(logp[jnp.arange(len(a)), jnp.asarray(a)])), rtol=1e-4)
  expert = rubric.SimulatedExpert(fluency_logp=fluency, noise=0.0)
  scores = expert.score(prompts, answers, [["canine", "domestic animal"]] * 5)
  assert scores["accuracy"].tolist() == [5, 5, 1, 5, 2]


def test_the_reward_model_recipe_trains_one_head_per_criterion_from_the_stores_scores(tmp_path):
  store = FeedbackStore(tmp_path / "f.db")
  rng = np.random.default_rng(0)
  # Experts who like "canine"-like answers: accuracy and satisfaction follow the answer, fluency is noise.
  for i in range(64):
    prompt = wordnet_qa.PROMPT.format(question=f"What kind of thing is a dog number {i}?")
    for answer, good in ((" canine.", True), (" a cat.", False)):
      (sample,) = store.add_samples([{"prompt": prompt, "response": answer, "model": "m"}])
      store.score(sample, {"accuracy": 5 if good else 1, "fluency": int(rng.integers(3, 6)),
                           "satisfaction": 4 if good else 2}, scales={"accuracy": 5, "fluency": 5, "satisfaction": 5},
                  labeler="expert")
  store.close()
  root = Path(__file__).resolve().parents[1]
  runs.run_experiment(root / "experiments" / "reward_model.py", smoke=True, workdir=tmp_path / "rm", overrides=[
      f"init_from={root / 'tests' / 'data' / 'tiny_hf' / 'qwen2'}", f"data.path=store:{tmp_path / 'f.db'}",
      "reward.weights=accuracy=0.7,satisfaction=0.3"])
  final = logs.read_metrics(tmp_path / "rm", "eval")[-1]
  assert final["accuracy_correlation"] > 0.5 and final["satisfaction_correlation"] > 0.5
  scorer = RewardModelScorer(tmp_path / "rm")  # the one reward the weights combine
  assert scorer.loaded.model.scalar_heads == 1
  good, bad = scorer.score([wordnet_qa.PROMPT.format(question="What kind of thing is a dog number 3?") + a
                            for a in (" canine.", " a cat.")])
  assert good > bad
