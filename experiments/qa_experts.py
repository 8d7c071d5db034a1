"""Question answering improved from experts' rubric scores: SFT, then PPO, GRPO, ILQL and best-of-n.

  rlhf-jax run experiments/qa_experts.py                      # every stage on CPU (~16 min on 2 cores)
  rlhf-jax run experiments/qa_experts.py --set seed=1
  rlhf-jax run experiments/qa_experts.py --smoke --set init_from=tests/data/tiny_hf/qwen2   # < 1 min

The task is `wordnet-qa-v1` (`data.wordnet_qa`): "What kind of thing is a dog?", "What is another
word for quick?", with every answer WordNet knows. Stages, each in a subfolder of the workdir (a
rerun skips finished stages):
1. `lm/`      pretrain_tiny on `lm_corpus` (or `init_from`, a model to start from): the model the
              policy starts from, and the separate LM whose log-probs the experts' fluency reads.
2. `sft/`     sft.py on the train questions' demonstrations (one right answer each): the baseline.
3. `scores/`  the SFT policy answers `score_questions` train questions `samples_per_question` times;
              `experts` simulated experts (`feedback.rubric.SimulatedExpert`: accuracy against the
              answer set, fluency from the LM, satisfaction a documented mix; each with its own
              bias and noise) score every distinct answer on accuracy, fluency and satisfaction,
              1..5, into `scores/feedback.db` (`feedback.collect.collect_scores`, as people would
              on `rlhf-jax label --rubric default`), and `scores/ratings.jsonl` holds each answer's
              reward: `reward_weights` over the criteria of the experts' mean scores.
4. `reward/`  reward_model.py on the store: one ordered-logit head per criterion, combined by
              `reward_weights` into the one reward; held-out agreement with the experts per
              criterion in its metrics.
5. `ppo/`, `grpo/`  the RL trainer against that reward from the SFT policy (KL to it), on other
              train questions; evaluated along the way by `wordnet-qa` accuracy (the gold).
6. `ilql/`    ilql.py: offline token-level Q-learning on the scored answers of stage 3 (no sampling).
7. `qa_eval.json`, `report.md`: the SFT policy, best-of-`best_of` of it by the reward model, PPO,
              GRPO and ILQL on the same `eval_questions` held-out questions (`wordnet-qa-v1:test`,
              never trained on): accuracy, each criterion's noiseless expert score, the reward, KL
              to the SFT policy and length (`rl.qa`).
`tools/qa_summary.py` turns several seeds' workdirs into a table with mean ± sd and a plot.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import logs, rewards, runs, sampling, sharding, trained
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.data import records, wordnet_qa
from rlhf_jax.feedback import collect
from rlhf_jax.feedback.rubric import DEFAULT, SimulatedExpert
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.rewards.fluency import LMFluency
from rlhf_jax.rl import offline_ilql, qa, trainer
from rlhf_jax.rl.task import Prompts

HERE = Path(__file__).parent
DATA = wordnet_qa.VERSION
QUICK = wordnet_qa.PROMPT.format(question="What is another word for quick?")  # the SFT run's sample prompt


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  smoke: bool = False  # each stage in its own --smoke mode, and few questions
  init_from: str = ""  # a model to start from (a run or a Hugging Face folder); "" pretrains one on lm_corpus
  lm_corpus: str = "brown"
  lm_steps: int = 600
  sft_steps: int = 2000
  sft_questions: int = 60000  # demonstrations (train split)
  sft_learning_rate: float = 3e-4
  score_questions: int = 768  # train questions the SFT policy answers for the experts
  samples_per_question: int = 4
  experts: int = 3  # each with its own bias per criterion and its own noise
  expert_noise: float = 0.6
  reward_steps: int = 500
  # The reward recipe's 1e-5 (for large pretrained trunks) leaves this small model's heads at
  # chance: held-out correlation with the experts' fluency 0.03 after 300 steps, 0.38 at 1e-3.
  reward_learning_rate: float = 1e-3
  reward_weights: tuple[str, ...] = ("accuracy=0.5", "fluency=0.2", "satisfaction=0.3")
  rl_questions: int = 4096  # train questions RL samples from
  rl_steps: int = 60
  rl_batch_size: int = 32
  kl_coef: float = 0.2
  ilql_steps: int = 300
  best_of: int = 8
  eval_questions: int = 256  # held-out questions every method answers
  prompt_len: int = 24
  max_new_tokens: int = 8
  # Every sample (the experts' data, RL rollouts, ILQL's decoding, evaluation) at this temperature:
  # the small SFT model's right answers are its likeliest ones, and at 1 it almost never says them.
  temperature: float = 0.5


def get_config(smoke: bool = False) -> Config:
  if smoke:
    return Config(smoke=True, lm_steps=20, sft_steps=8, sft_questions=256, score_questions=48, samples_per_question=2,
                  experts=2, reward_steps=8, rl_questions=128, rl_steps=4, rl_batch_size=16, ilql_steps=4, best_of=2,
                  eval_questions=16, prompt_len=16, max_new_tokens=6)
  return Config()


def _loop(loop, steps: int, evals: int = 2):
  return dataclasses.replace(loop, steps=steps, eval_every=max(1, steps // evals), checkpoint_every=max(1, steps // 2))


def _weights(config: Config) -> dict[str, float]:
  return {name: float(w) for name, _, w in (item.partition("=") for item in config.reward_weights)}


def experts(config: Config, fluency_lm: str | Path) -> list[SimulatedExpert]:
  """`config.experts` experts: expert k's bias per criterion drawn once from N(0, 0.4) by its seed
  (one is lenient on fluency, another strict on accuracy, ...), noise `expert_noise`."""
  fluency = LMFluency(fluency_lm, prompt_len=32, answer_len=16, batch_size=16)
  out = []
  for k in range(config.experts):
    rng = np.random.default_rng([config.seed, k])
    bias = {c.name: float(b) for c, b in zip(DEFAULT.criteria, rng.normal(0.0, 0.4, len(DEFAULT.criteria)))}
    out.append(SimulatedExpert(fluency_logp=fluency, noise=config.expert_noise, bias=bias, seed=1000 * config.seed + k,
                               name=f"expert{k}"))
  return out


def stages(config: Config, workdir: Path) -> list[tuple[str, Path, Callable[[], None]]]:
  """(name, workdir, run) of each stage before the evaluation, in order; `run()` skips a finished stage."""
  replace = dataclasses.replace
  lm = Path(config.init_from) if config.init_from else workdir / "lm"
  sft, rm = workdir / "sft", workdir / "reward"
  seq_len = config.prompt_len + config.max_new_tokens

  def pretrain(c):
    return replace(c, seed=config.seed, data=replace(c.data, corpus=config.lm_corpus),
                   loop=_loop(c.loop, config.lm_steps))

  def fine_tune(c):
    return replace(c, init_from=str(lm), seed=config.seed,
                   optim=replace(c.optim, learning_rate=(c.optim.learning_rate if config.smoke
                                                         else config.sft_learning_rate)),
                   data=replace(c.data, path=f"{DATA}:train", max_rows=config.sft_questions, seq_len=64 if config.smoke
                                else 128),
                   sample=replace(c.sample, prompts=(QUICK,),
                                  max_new_tokens=config.max_new_tokens),
                   loop=_loop(c.loop, config.sft_steps))

  def reward(c):
    return replace(c, init_from=str(sft), seed=config.seed,
                   data=replace(c.data, path=f"store:{workdir / 'scores' / 'feedback.db'}"),
                   reward=replace(c.reward, seq_len=seq_len, weights=config.reward_weights),
                   optim=replace(c.optim, learning_rate=config.reward_learning_rate),
                   loop=_loop(c.loop, config.reward_steps))

  def rl_task(task, path: str, max_rows: int):
    return replace(task, path=path, max_rows=max_rows, prompt_len=config.prompt_len,
                   max_new_tokens=config.max_new_tokens, reward=f"rm:{rm}", reward_with_prompt=True,
                   gold="wordnet-qa", eval_prompts=16 if config.smoke else 64)

  def policy_gradient(c):
    return replace(c, seed=config.seed, policy=replace(c.policy, init_from=str(sft)),
                   task=rl_task(c.task, f"{DATA}:train", config.rl_questions),
                   rl=replace(c.rl, batch_size=config.rl_batch_size),
                   ppo=replace(c.ppo, kl_coef=config.kl_coef, temperature=config.temperature),
                   pg=replace(c.pg, kl_coef=config.kl_coef, temperature=config.temperature),
                   loop=_loop(c.loop, config.rl_steps, evals=1 if config.smoke else 4))

  def ilql(c):
    return replace(c, seed=config.seed, policy=replace(c.policy, init_from=str(sft)),
                   task=replace(rl_task(c.task, str(workdir / "scores" / "ratings.jsonl"), 0),
                                test_fraction=0.25 if config.smoke else 0.1),
                   rl=replace(c.rl, batch_size=config.rl_batch_size),
                   ilql=replace(c.ilql, temperature=config.temperature),
                   loop=_loop(c.loop, config.ilql_steps, evals=1 if config.smoke else 4))

  def run(experiment: str, stage_dir: Path, edit: runs.Edit) -> tuple[str, Path, Callable[[], None]]:
    return experiment, stage_dir, functools.partial(runs.run_unless_done, HERE / experiment, stage_dir,
                                                    smoke=config.smoke, edit=edit)

  out = [] if config.init_from else [run("pretrain_tiny.py", lm, pretrain)]
  return out + [run("sft.py", sft, fine_tune),
                ("expert scores", workdir / "scores", functools.partial(collect_scores, config, workdir, lm)),
                run("reward_model.py", rm, reward), run("ppo.py", workdir / "ppo", policy_gradient),
                run("grpo.py", workdir / "grpo", policy_gradient), run("ilql.py", workdir / "ilql", ilql)]


def _sampler(policy, prompt_len: int, max_new_tokens: int, temperature: float):
  """`(prompts, key) -> answers` of a policy, prompts cut to `prompt_len` tokens."""
  generate = jax.jit(functools.partial(sampling.generate, model=Transformer(policy.model),
                                       max_new_tokens=max_new_tokens, temperature=temperature,
                                       eos_id=policy.tokenizer.eos_id, pad_id=policy.tokenizer.pad_id))
  tok = policy.tokenizer

  def sample_texts(prompts, key):
    tokens, mask = prompts_lib.encode_prompts(tok, list(prompts), prompt_len)
    out = jax.device_get(generate(policy.params, tokens, mask, key))
    return [tok.decode([int(t) for t, m in zip(row, keep) if m and t != tok.eos_id])
            for row, keep in zip(out.tokens_BxN, out.mask_BxN)]
  return sample_texts


def collect_scores(config: Config, workdir: Path, fluency_lm: Path) -> None:
  """Stage 3: the experts' scores of the SFT policy's answers, and the ratings ILQL learns from."""
  out = workdir / "scores"
  if (out / "ratings.jsonl").exists():
    return
  out.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  policy = trained.load(workdir / "sft", mesh)
  rows = wordnet_qa.rows("train")[-config.score_questions:]  # the end: apart from the first sft and rl questions
  with FeedbackStore(out / "feedback.db") as store:
    sample_texts = _sampler(policy, config.prompt_len, config.max_new_tokens, config.temperature)
    collect.collect_scores(store, sample_texts, [r["prompt"] for r in rows], [r["answers"] for r in rows],
                           experts(config, fluency_lm),
                           samples_per_prompt=config.samples_per_question, batch_size=64, model="sft",
                           key=jax.random.key(config.seed))
    judgements = store.export_scores()
  weights = _weights(config)
  by_answer: dict[tuple[str, str], list[dict[str, int]]] = {}
  for j in judgements:
    by_answer.setdefault((j["prompt"], j["response"]), []).append(j["scores"])
  rated = [{"prompt": p, "completion": a,
            "rating": float(sum(w * np.mean([s[c] for s in scores]) for c, w in weights.items()))}
           for (p, a), scores in by_answer.items()]
  records.write(rated, out / "ratings.jsonl")
  print(f"{len(judgements)} expert judgements of {len(by_answer)} answers; ratings mean "
        f"{np.mean([r['rating'] for r in rated]):.2f}", flush=True)


def evaluate(config: Config, workdir: Path, fluency_lm: Path) -> dict[str, dict[str, float]]:
  """Stage 7: every method's answers to the same held-out questions, judged (`rl.qa`)."""
  mesh = sharding.make_mesh()
  sft = trained.load(workdir / "sft", mesh)
  tok, model = sft.tokenizer, Transformer(sft.model)
  test = wordnet_qa.rows("test")[:config.eval_questions]
  prompts = Prompts.encode(tok, [r["prompt"] for r in test], config.prompt_len)
  gold = [r["answers"] for r in test]
  reward = rewards.from_spec(f"rm:{workdir / 'reward'}", tokenizer=tok, mesh=mesh, with_prompt=True,
                             max_len=config.prompt_len + config.max_new_tokens)
  frozen = {"ref": sft.params, "reward": reward}  # what the samplers read: the SFT reference and the reward
  sample = trainer.make_sampler(model, reward, max_new_tokens=config.max_new_tokens, eos_id=tok.eos_id,
                                pad_id=tok.pad_id)
  judge = functools.partial(qa.judge, prompts.texts, gold=gold,
                            expert=SimulatedExpert(fluency_logp=LMFluency(fluency_lm, prompt_len=32, answer_len=16,
                                                                          batch_size=16)))
  pool = functools.partial(qa.answer_pool, frozen=frozen, prompts=prompts, tokenizer=tok, batch_size=16 if config.smoke
                           else 64, key=jax.random.fold_in(jax.random.key(config.seed), 5),
                           temperature=jnp.float32(config.temperature), mesh=mesh)
  sft_pool = pool(sample, sft.params, n=config.best_of)
  results = {"sft": judge(sft_pool.first()), f"best-of-{config.best_of}": judge(sft_pool.best_by_reward())}
  for name in ("ppo", "grpo"):
    results[name] = judge(pool(sample, trained.load(workdir / name, mesh).params, n=1))
  # ILQL's checkpoint holds the LM and its Q/V heads; it decodes with the advantage logits at its beta.
  ilql_dir = workdir / "ilql"
  checkpointer = Checkpointer(ilql_dir / "checkpoints")
  try:
    params = checkpointer.restore_saved_tree(checkpointer.latest_step(), sharding.replicated(mesh))["params"]
  finally:
    checkpointer.close()
  ilql_config = json.loads((ilql_dir / "config.json").read_text())["ilql"]
  ilql_sample = offline_ilql.make_sampler(model, reward, beta=jnp.float32(ilql_config["beta"]),
                                          max_new_tokens=config.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id)
  results["ilql"] = judge(pool(ilql_sample, params, n=1, temperature=jnp.float32(ilql_config["temperature"])))
  return results


def main(config: Config, workdir: Path) -> dict:
  workdir = Path(workdir)
  for name, stage_dir, run in stages(config, workdir):
    print(f"== {name} -> {stage_dir}", flush=True)
    run()
  print("== evaluation on held-out questions", flush=True)
  results = evaluate(config, workdir, Path(config.init_from) if config.init_from else workdir / "lm")
  qa.write_json(workdir / "qa_eval.json", results)
  table = qa.markdown(qa.summary([results]), runs=1)
  agreement = qa.agreement_markdown([qa.agreement(logs.read_metrics(workdir / "reward", "eval")[-1])])
  (workdir / "report.md").write_text(
      f"# QA with expert rubric scores (seed {config.seed})\n\n{config.eval_questions} held-out questions of {DATA}:"
      f"\n\n{table}\nThe reward model's held-out agreement with the experts:\n\n{agreement}")
  print(f"{table}\n{agreement}", flush=True)
  return results
