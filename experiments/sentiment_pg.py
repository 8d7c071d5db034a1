"""Critic-free policy gradients (REINFORCE, RLOO, GRPO, ReMax) on sentiment_ppo's task.

  rlhf-jax run experiments/sentiment_pg.py --set policy.init_from=workdirs/lm                 # RLOO, K = 4
  rlhf-jax run experiments/sentiment_pg.py --set policy.init_from=workdirs/lm --set pg.estimator=grpo \
      --set pg.kl_in_loss=true
  rlhf-jax run experiments/sentiment_pg.py --smoke                                           # < 1 min on CPU

The prompts, reference, reward normalization, gold labeler and evaluation are sentiment_ppo's, so
the two trace comparable gold-reward/KL points; `rl.batch_size` responses per iteration are
`pg.group_size` samples of each of batch_size / group_size prompts (`steps.pg`). ReMax also
decodes each prompt greedily (top-k 1) for its baseline. No value model is trained.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from rlhf_jax import cli, pretrained, sampling, sharding
from rlhf_jax import rollout as rollout_lib
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.data import rows
from rlhf_jax.eval import policy as policy_eval
from rlhf_jax.feedback import labelers
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common, pg

task = cli.load_experiment(Path(__file__).with_name("sentiment_ppo.py"))  # the shared task settings


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  policy: task.PolicyConfig = task.PolicyConfig()
  reward: task.RewardConfig = task.RewardConfig()
  rl: task.RLConfig = task.RLConfig()
  pg: pg.PGConfig = pg.PGConfig()
  optim: common.OptimConfig = common.OptimConfig(learning_rate=2e-4, warmup_steps=5, weight_decay=0.0,
                                                 min_lr_ratio=1.0)
  loop: LoopConfig = LoopConfig(steps=100, log_every=5, eval_every=25, checkpoint_every=25)
  mesh: sharding.MeshConfig = sharding.MeshConfig()

  def __post_init__(self):
    if self.rl.batch_size % self.pg.group_size:
      raise ValueError(f"rl.batch_size={self.rl.batch_size} must be a multiple of pg.group_size={self.pg.group_size}")


def get_config(smoke: bool = False) -> Config:
  config = Config()
  if smoke:
    ppo_smoke = task.get_config(smoke=True)
    config = dataclasses.replace(config, policy=ppo_smoke.policy, reward=ppo_smoke.reward, rl=ppo_smoke.rl,
                                 loop=ppo_smoke.loop)
  return config


def repeat_rows(batch: dict[str, np.ndarray], *, times: int) -> dict[str, np.ndarray]:
  return {name: np.repeat(a, times, axis=0) for name, a in batch.items()}


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  pc, rc, lc, gc = config.policy, config.reward, config.rl, config.pg
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(lc.batch_size, mesh, "rl.batch_size")
  sharding.check_batch_divisible(lc.eval_batch_size, mesh, "rl.eval_batch_size")
  key = jax.random.key(config.seed)
  policy, _ = pretrained.load_policy(pc.init_from, workdir, mesh, pretrain=functools.partial(
      cli.run_experiment, task.PRETRAIN, smoke=pc.pretrain_smoke))
  tok = policy.tokenizer
  pretrained.save_model_config(workdir, policy.model)

  train_prompts, test_prompts = prompts_lib.split_prompts(
      prompts_lib.wordnet_openings(pc.num_prompts, pc.prompt_words, config.seed), pc.test_fraction)
  test_tokens, test_mask = prompts_lib.encode_prompts(tok, test_prompts[:lc.eval_prompts], pc.prompt_len)
  prompt_tokens, prompt_mask = prompts_lib.encode_prompts(tok, train_prompts, pc.prompt_len)
  # Each batch: batch_size / K prompts, each repeated K times in consecutive rows.
  dataset = rows.rows_dataset({"prompt": prompt_tokens, "prompt_mask": prompt_mask}, lc.batch_size // gc.group_size,
                              seed=config.seed).map(functools.partial(repeat_rows, times=gc.group_size))
  model = Transformer(policy.model)
  tx = common.make_optimizer(config.optim)
  init, state_shardings = common.jit_sharded(functools.partial(pg.init_state, tx=tx, kl_coef=gc.kl_coef), mesh,
                                             config.mesh.rules, policy.params)
  init_fn = functools.partial(init, policy.params)
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=model, value_model=None,
                                   max_new_tokens=pc.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id))
  greedy = jax.jit(functools.partial(sampling.generate, model=model, max_new_tokens=pc.max_new_tokens, top_k=1,
                                     eos_id=tok.eos_id, pad_id=tok.pad_id))
  step = common.jit_step(functools.partial(
      pg.pg_step, model=model, tx=tx, config=gc, warmup_steps=config.optim.warmup_steps,
      total_steps=config.loop.steps * gc.epochs, min_lr_ratio=config.optim.min_lr_ratio), mesh, state_shardings)
  scorer = labelers.get_scorer(rc.scorer)
  gold = scorer if lc.gold == rc.scorer else labelers.get_scorer(lc.gold)
  sampler = policy_eval.PolicySampler(roll, policy.params, tok, mesh, gc.temperature)

  norm = policy_eval.saved_normalization(workdir / "reward_norm.json", functools.partial(
      policy_eval.reference_normalization, sampler, prompt_tokens, prompt_mask, lc.batch_size,
      jax.random.fold_in(key, 10_000), scorer, with_prompt=rc.with_prompt, num_samples=rc.normalize_samples),
      enabled=rc.normalize)

  def normalized_score(prompts, responses) -> np.ndarray:
    return ((rollout_lib.score_texts(scorer, prompts, responses, rc.with_prompt) - norm["mean"])
            / norm["std"]).astype(np.float32)

  def iteration(state: pg.PGState, batch, rng, hp):
    prompt_BxP, mask_BxP = jax.device_get(batch["prompt"]), jax.device_get(batch["prompt_mask"])
    rng_t = jax.random.fold_in(rng, int(state.step))
    s = sampler(state.params, prompt_BxP, mask_BxP, jax.random.fold_in(rng_t, 0))
    score = normalized_score(s.prompts, s.responses)
    extra = {}
    if gc.estimator == "remax":
      placed = sharding.put_batch({"p": prompt_BxP, "m": mask_BxP}, mesh)
      out = jax.device_get(greedy(state.params, placed["p"], placed["m"], jax.random.fold_in(rng_t, 1)))
      extra["greedy_score_B"] = normalized_score(
          s.prompts, rollout_lib.decode_responses(tok, out.tokens_BxN, out.mask_BxN))
    # No value model: the rollout's all-zero values are not part of the batch.
    fields = {f.name: getattr(s.rollout, f.name) for f in dataclasses.fields(s.rollout) if f.name != "values_BxN"}
    placed = sharding.put_batch({"score_B": score, **extra}, mesh)
    state, metrics = step(state, {**fields, **placed}, rng, hp)
    return state, metrics

  eval_key = jax.random.fold_in(key, 7)

  def evaluate(state) -> dict[str, float]:
    metrics = policy_eval.evaluate_policy(
        sampler, state.params, test_tokens, test_mask, lc.eval_batch_size, eval_key, gold=gold, proxy=scorer,
        proxy_with_prompt=rc.with_prompt, norm=norm, samples_path=workdir / "samples.jsonl", step=int(state.step),
        samples_to_log=lc.samples_to_log)
    tqdm.write(f"update {int(state.step)}: gold ({lc.gold}) {metrics['gold_score']:.3f}, proxy "
               f"{metrics['proxy_score']:.3f}, KL {metrics['kl']:.2f}")
    return metrics

  return train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=init_fn,
                    state_shardings=state_shardings, step_fn=iteration, data_iterator=iter(dataset),
                    hp=gc.hparams(config.optim), rng=jax.random.fold_in(key, 1), mesh=mesh,
                    tokens_per_step=lc.batch_size * (pc.prompt_len + pc.max_new_tokens), evaluate=evaluate)
