"""Direct preference optimization on the sentiment task: offline from a feedback store, or online.

  rlhf-jax run experiments/dpo_sentiment.py --set policy.init_from=workdirs/lm                     # online DPO
  rlhf-jax run experiments/dpo_sentiment.py --set policy.init_from=workdirs/lm \
      --set data.source=store:workdirs/quickstart/reward/feedback.db --set dpo.kind=ipo          # offline
  rlhf-jax run experiments/dpo_sentiment.py --set policy.init_from=workdirs/lm --set data.source=fine_foods
  rlhf-jax run experiments/dpo_sentiment.py --smoke                                             # < 1 min on CPU
  rlhf-jax sweep experiments/dpo_sentiment.py --set policy.init_from=workdirs/lm                 # sweep(): losses x betas x 3 seeds
  rlhf-jax report sweeps/dpo_sentiment                                                         # table + gold-KL frontier

Same prompts (WordNet openings), reference (the starting LM) and gold labeler as
`sentiment_ppo.py`, so the two trace comparable gold-reward/KL points. `dpo.kind` is any of
`steps.dpo.KINDS` (DPO, conservative DPO via dpo.label_smoothing, IPO, KTO, ORPO, SimPO).

- `data.source=online` (iterative DPO): each round samples two continuations of
  `online.prompts_per_round` training prompts from the current policy, a simulated labeler (as in
  reward_simulated) compares them into `<workdir>/feedback.db`, and the policy trains on that
  round's pairs; the reference stays the starting policy.
- `data.source=store:PATH`: one round on every preference pair exported from that feedback store
  (people's or a labeler's), e.g. the quickstart's.
- `data.source=fine_foods`: one round on the real human preferences of the Amazon fine-food
  reviews (a 5-star review preferred to a lower-rated one; 1,400 training pairs, no prompt, each
  review cut to `policy.max_new_tokens` tokens): people's taste instead of a simulated labeler's.

Every round ends with an evaluation on held-out prompts: gold and implicit-reward-free numbers,
KL(pi || pi_ref) per sequence. Rounds live in `round_K/` (checkpoints, metrics) and resume.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from rlhf_jax import logs, pretrained, runs, sharding
from rlhf_jax import rollout as rollout_lib
from rlhf_jax.data import fine_foods, rows
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.data.corpora import atomic_write_bytes
from rlhf_jax.eval import policy as policy_eval
from rlhf_jax.feedback import labelers
from rlhf_jax.feedback.store import FeedbackStore
from rlhf_jax.loop import LoopConfig, train_loop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common, dpo

PRETRAIN = Path(__file__).with_name("pretrain_tiny.py")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  init_from: str = ""  # an LM workdir; "" runs pretrain_tiny into <workdir>/policy first
  pretrain_smoke: bool = False
  num_prompts: int = 4096
  prompt_words: int = 4
  prompt_len: int = 8
  max_new_tokens: int = 24
  test_fraction: float = 0.05


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = "online"  # "online", "store:PATH" or "fine_foods"


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
  rounds: int = 3
  prompts_per_round: int = 1024
  scorer: str = "vader"
  beta: float = 10.0  # the labeler's Bradley-Terry rationality
  # Scores closer than this are a tie, and ties are not trained on. VADER scores many short
  # continuations exactly 0, so without a margin ~40% of pairs are coin flips; with 0.05, 3 rounds
  # of DPO raised gold 0.073 -> 0.256 (KL 4.0) where they had reached 0.086 (KL 3.6).
  tie_margin: float = 0.05


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps_per_round: int = 50
  batch_size: int = 32
  eval_prompts: int = 128
  eval_batch_size: int = 64
  gold: str = "vader"


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  policy: PolicyConfig = PolicyConfig()
  data: DataConfig = DataConfig()
  online: OnlineConfig = OnlineConfig()
  train: TrainConfig = TrainConfig()
  dpo: dpo.DPOConfig = dpo.DPOConfig(beta=0.1)
  optim: common.OptimConfig = common.OptimConfig(learning_rate=1e-4, warmup_steps=5, weight_decay=0.0,
                                                 min_lr_ratio=1.0)
  loop: LoopConfig = LoopConfig(log_every=10, eval_every=0, checkpoint_every=1000)  # steps: per round
  mesh: sharding.MeshConfig = sharding.MeshConfig()


def get_config(smoke: bool = False) -> Config:
  config = Config()
  if smoke:
    config = dataclasses.replace(
        config,
        policy=dataclasses.replace(config.policy, pretrain_smoke=True, num_prompts=256, max_new_tokens=8,
                                   test_fraction=0.1),
        online=dataclasses.replace(config.online, rounds=2, prompts_per_round=32, tie_margin=0.0),
        train=TrainConfig(steps_per_round=3, batch_size=16, eval_prompts=16, eval_batch_size=16),
        loop=LoopConfig(log_every=1, eval_every=0, checkpoint_every=1000, progress=False),
    )
  return config


def sweep() -> list[dict]:
  """The beta grid of each loss, 3 seeds each (`rlhf-jax sweep experiments/dpo_sentiment.py --set
  policy.init_from=LM`, then `rlhf-jax report sweeps/dpo_sentiment` for the gold-KL frontier)."""
  betas = {"dpo": (0.1, 0.5), "ipo": (0.1, 0.5), "kto": (0.1, 0.5), "orpo": (0.1, 0.5), "simpo": (1.0, 2.5)}
  return [{"dpo.kind": kind, "dpo.beta": beta, "seed": seed}
          for kind, grid in betas.items() for beta in grid for seed in range(3)]


def pair_arrays(records: list[dict], tokenizer, prompt_len: int, response_len: int) -> dict[str, np.ndarray]:
  """Left-padded prompts and right-padded chosen/rejected responses of preference records."""
  prompt, prompt_mask = prompts_lib.encode_prompts(tokenizer, [r["prompt"] for r in records], prompt_len)
  out = {"prompt": prompt, "prompt_mask": prompt_mask}
  for side in ("chosen", "rejected"):
    ids = [tokenizer.encode(r[side]) or [tokenizer.eos_id] for r in records]
    out[side], out[f"{side}_mask"] = rows.pad_rows(ids, response_len, tokenizer.pad_id)
  return out


def main(config: Config, workdir: Path) -> list[dict]:
  workdir = Path(workdir)
  pc, tc, oc = config.policy, config.train, config.online
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(tc.batch_size, mesh, "train.batch_size")
  sharding.check_batch_divisible(tc.eval_batch_size, mesh, "train.eval_batch_size")
  online = config.data.source == "online"
  if not online and not config.data.source.startswith("store:") and config.data.source != "fine_foods":
    raise ValueError(f"data.source: expected 'online', 'store:PATH' or 'fine_foods', got {config.data.source!r}")
  key = jax.random.key(config.seed)
  policy, _ = pretrained.load_policy(pc.init_from, workdir, mesh, pretrain=functools.partial(
      runs.run_experiment, PRETRAIN, smoke=pc.pretrain_smoke))
  tok = policy.tokenizer
  pretrained.save_model_config(workdir, policy.model)
  model = Transformer(policy.model)
  gold = labelers.get_scorer(tc.gold)
  train_prompts, test_prompts = prompts_lib.split_prompts(
      prompts_lib.wordnet_openings(pc.num_prompts, pc.prompt_words, config.seed), pc.test_fraction)
  test_tokens, test_mask = prompts_lib.encode_prompts(tok, test_prompts[:tc.eval_prompts], pc.prompt_len)
  roll = jax.jit(functools.partial(rollout_lib.rollout, policy_model=model, value_model=None,
                                   max_new_tokens=pc.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id))
  sampler = policy_eval.PolicySampler(roll, policy.params, tok, mesh)
  tx = common.make_optimizer(config.optim)
  restart, state_shardings = common.jit_sharded(functools.partial(pretrained.restart_state, tx=tx), mesh,
                                                config.mesh.rules, policy.params)
  ref_fn = jax.jit(functools.partial(dpo.reference_logprobs, policy.params, model=model))
  step = common.jit_step(functools.partial(
      dpo.dpo_step, model=model, tx=tx, kind=config.dpo.kind, warmup_steps=config.optim.warmup_steps,
      total_steps=tc.steps_per_round, min_lr_ratio=config.optim.min_lr_ratio), mesh, state_shardings)
  hp = config.dpo.hparams(config.optim)
  eval_key = jax.random.fold_in(key, 7)

  def evaluate(params, step_: int) -> dict:
    return policy_eval.evaluate_policy(sampler, params, test_tokens, test_mask, tc.eval_batch_size, eval_key,
                                       gold=gold, proxy=gold, proxy_with_prompt=False,
                                       samples_path=workdir / "samples.jsonl", step=step_)

  results = [{"round": -1, **evaluate(policy.params, 0)}]  # the reference policy
  # The per-round evaluations also go to the run's metrics.jsonl (split "eval", step = updates so
  # far), where `rlhf-jax report` reads every experiment's results; a rerun rewrites them.
  logs.truncate_metrics(workdir, -1)
  writer = logs.MetricWriter(workdir, tensorboard=False, enabled=jax.process_index() == 0)
  writer.write(0, results[0], split="eval")
  params = policy.params
  stop = threading.Event()
  rounds = oc.rounds if online else 1
  for k in range(rounds):
    if online:
      records = _online_pairs(workdir / "feedback.db", k, sampler, params, train_prompts, config, key)
    elif config.data.source == "fine_foods":
      records = fine_foods.preference_pairs("train", seed=config.seed)
    else:
      records = _store_pairs(config.data.source[len("store:"):])
    if len(records) < tc.batch_size:
      raise ValueError(f"round {k}: {len(records)} preference pairs, fewer than train.batch_size={tc.batch_size}")
    arrays = pair_arrays(records, tok, pc.prompt_len, pc.max_new_tokens)
    refs = [jax.device_get(ref_fn(sharding.put_batch({n: b[n] for n in arrays}, mesh)))
            for b in rows.eval_row_batches(arrays, tc.batch_size)]
    n = len(records)
    arrays["ref_chosen"] = np.concatenate([r["ref_chosen"] for r in refs])[:n]
    arrays["ref_rejected"] = np.concatenate([r["ref_rejected"] for r in refs])[:n]
    dataset = rows.rows_dataset(arrays, tc.batch_size, seed=config.seed + k)
    state = train_loop(workdir=workdir / f"round_{k}", loop=dataclasses.replace(config.loop, steps=tc.steps_per_round),
                       config=dataclasses.asdict(config), init_fn=functools.partial(restart, params),
                       state_shardings=state_shardings, step_fn=step, data_iterator=iter(dataset), hp=hp,
                       rng=jax.random.fold_in(key, 100 + k), mesh=mesh, tokens_per_step=tc.batch_size * (
                           pc.prompt_len + pc.max_new_tokens) * 2, stop=stop)
    if stop.is_set():
      writer.close()
      return results
    params = state.params
    results.append({"round": k, "pairs": n, **evaluate(params, (k + 1) * tc.steps_per_round)})
    writer.write((k + 1) * tc.steps_per_round, results[-1], split="eval")
    r = results[-1]
    tqdm.write(f"round {k}: {n} pairs, gold ({tc.gold}) {r['gold_score']:.3f} (reference "
               f"{results[0]['gold_score']:.3f}), KL {r['kl']:.2f}")
  writer.close()
  atomic_write_bytes(workdir / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in results).encode())
  return results


def _store_pairs(path: str) -> list[dict]:
  if not Path(path).is_file():
    raise FileNotFoundError(f"data.source store {path} not found: expected a feedback store (feedback.db)")
  with FeedbackStore(path) as store:
    return store.export_preferences()


def round_labeler(config: Config, k: int) -> labelers.SimulatedLabeler:
  """Round k's simulated labeler, its noise seeded by (seed, k): a resumed run, which reuses the
  earlier rounds' judgements from the store instead of labelling them again, still gives round k
  the judgements of an unbroken run (one labeler for all rounds would restart its stream)."""
  oc = config.online
  seed = int(np.random.SeedSequence([config.seed, k]).generate_state(1)[0])
  return labelers.SimulatedLabeler(labelers.get_scorer(oc.scorer), beta=oc.beta, tie_margin=oc.tie_margin, seed=seed)


def _online_pairs(store_path: Path, k: int, sampler, params, train_prompts: list[str], config: Config,
                  key) -> list[dict]:
  """Round k's preference pairs: two samples of each of the round's prompts from the current policy,
  compared by round k's labeler into the store in one transaction, so a round is stored whole or
  not at all. A rerun reuses the round's judgements from the store."""
  pc, oc, tc = config.policy, config.online, config.train
  tag = f"dpo-round-{k}"
  labeler = round_labeler(config, k)
  with FeedbackStore(store_path) as store:
    existing = [r for r in store.export_preferences() if r["chosen_model"] == tag]
    if existing or any(j.labeler == labeler.name and store.sample(j.sample_a).model == tag
                       for j in store.judgements(kind="comparison")):
      return existing
    start = (k * oc.prompts_per_round) % max(len(train_prompts) - oc.prompts_per_round, 1)
    prompts = train_prompts[start:start + oc.prompts_per_round]
    texts = [policy_eval.sample_texts(sampler, params, prompts, prompt_len=pc.prompt_len, batch_size=tc.eval_batch_size,
                                      key=jax.random.fold_in(key, 1000 * (k + 1) + copy))[0] for copy in range(2)]
    keep = [i for i in range(len(texts[0])) if texts[0][i].strip() and texts[1][i].strip() and texts[0][i] != texts[1][i]]
    ids = store.add_samples([{"prompt": prompts[i], "response": texts[c][i], "model": tag} for i in keep for c in (0, 1)],
                            source="wordnet_examples")
    outcomes = labeler.compare([texts[0][i] for i in keep], [texts[1][i] for i in keep])
    store.compare_many(zip(ids[::2], ids[1::2], outcomes), labeler=labeler.name)
    return [r for r in store.export_preferences() if r["chosen_model"] == tag]
