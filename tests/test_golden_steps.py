"""Golden one-step tests of every trainer's step (nanodo's pattern), and microbatch equivalence.

Each case takes one step of a tiny model from a fixed initialization on a fixed tiny batch (numpy,
fixed seeds) and compares every metric and two checksums with `tests/data/golden_steps.json`:
`param_checksum` of the parameters after the step and `state_checksum` of the rest of the state
(optimizer moments, KL coefficient, REINFORCE's baseline, ILQL's target heads). Adam's first update
is about lr * sign(grad), so the parameters alone barely see the gradient's size; the optimizer's
moments (0.1 g and 0.05 g^2 of the clipped gradient g) do.

Regenerate the file with `UPDATE_GOLDEN=1 python -m pytest tests/test_golden_steps.py -n 0`, and
only for the reasons in `UPDATE_MESSAGE`.

The DPO family and the reward model also check that a step on 2 microbatches is the step on the
whole batch, and that a masked pair's content changes nothing (KTO's reference point z0 once
mixed the masked pairs, and with microbatches only each microbatch's own pairs, into it).

Compiles are the whole cost here: the model is one layer, cases that differ only in their
arguments share a compile (the masked-row check, DPO and conservative DPO), and `COMPILER_OPTIONS`
trade XLA's optimizations for compile time.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models.transformer import ModelConfig, Transformer
from rlhf_jax.steps import common, dpo, ilql, pg, ppo, reward, rsft

GOLDEN_PATH = pathlib.Path(__file__).parent / "data" / "golden_steps.json"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
UPDATE_MESSAGE = """\
Update the golden values only for a deliberate change of a step's math, of the model's
initialization or of a default setting (optimizer, step config), reviewed, with the commit message
naming the change that moved them and why the new numbers are right. Never update them to make a
failing test pass without understanding why it fails: a refactor must leave them unchanged.
Regenerate with: UPDATE_GOLDEN=1 python -m pytest tests/test_golden_steps.py -n 0"""
# Compiles are the whole cost of this file: without backend optimization and with XLA's older CPU
# fusion emitters a step compiles about 10x faster; its numbers move only by float rounding (~1e-7).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

LM = ModelConfig(vocab_size=64, max_len=16, d_model=32, n_layers=1, n_heads=2)
# The reward model, also PPO's value model (which starts from the reward model).
RM = dataclasses.replace(LM, scalar_head=True, scalar_head_init="reward")
OPTIM = common.OptimConfig(learning_rate=1e-3, weight_decay=0.1, warmup_steps=0)
SCHEDULE = {"warmup_steps": 0, "total_steps": 10, "min_lr_ratio": 0.1}
EOS, B, P, N, T, K = 1, 8, 4, 6, 8, 4  # rows, prompt, response, reward/ILQL length, PG group size
MASKED = 3  # the padding pair or row: mask 0 in every DPO and reward batch

# KTO with beta = 1: at the usual 0.1 its loss is nearly linear in z0, whose effect then cancels
# between the desirable and undesirable sides, so the golden numbers would hardly see z0.
DPO_CASES = {"dpo": dpo.DPOConfig(kind="dpo"), "cdpo": dpo.DPOConfig(kind="dpo", label_smoothing=0.1),
             "ipo": dpo.DPOConfig(kind="ipo"), "kto": dpo.DPOConfig(kind="kto", beta=1.0),
             "orpo": dpo.DPOConfig(kind="orpo"), "simpo": dpo.DPOConfig(kind="simpo", beta=2.0)}
REWARD_KINDS = ("preference", "rating", "ordinal", "regression")
REWARD_SPLIT_KINDS = ("preference", "rating")  # also run on 2 microbatches
CASES = (["ppo"] + [f"pg_{e}" for e in pg.ESTIMATORS] + [f"dpo_{k}" for k in DPO_CASES]
         + [f"reward_{k}" for k in REWARD_KINDS] + ["ilql", "online_dpo", "rsft"])
SPLIT, SCRAMBLED = "2 microbatches", "masked row replaced"  # variants beside "golden"


# ---------------------------------------------------------------------------------------------
# Fixed batches (numpy, fixed seeds).

def _tokens(rng, shape):
  return rng.integers(2, LM.vocab_size, shape).astype(np.int32)  # 0 pad and 1 EOS never drawn


def _right_mask(rng, rows, length, shortest):
  lengths_R = rng.integers(shortest, length + 1, rows)
  return (np.arange(length)[None] < lengths_R[:, None]).astype(np.int32)


def _prompts(rng, rows):
  mask_RxP = _right_mask(rng, rows, P, 2)[:, ::-1].copy()  # left-padded
  return _tokens(rng, (rows, P)) * mask_RxP, mask_RxP


def rollout_batch(seed=0):
  """A scored rollout of `rollout.Rollout`'s fields: K consecutive rows share a prompt (PG's layout)."""
  rng = np.random.default_rng(seed)
  prompt_BxP, prompt_mask_BxP = (np.repeat(x, K, 0) for x in _prompts(rng, B // K))
  mask_BxN = _right_mask(rng, B, N, 2).astype(bool)
  ended_B = rng.random(B) < 0.7
  last_B = mask_BxN.sum(-1) - 1
  response_BxN = _tokens(rng, (B, N))
  response_BxN[np.arange(B), last_B] = np.where(ended_B, EOS, response_BxN[np.arange(B), last_B])
  noise = lambda scale: (scale * rng.standard_normal((B, N)) * mask_BxN).astype(np.float32)  # noqa: E731
  logp_BxN = noise(0.3) - np.float32(np.log(LM.vocab_size)) * mask_BxN
  return {"prompt_BxP": prompt_BxP, "prompt_mask_BxP": prompt_mask_BxP, "response_BxN": response_BxN * mask_BxN,
          "response_mask_BxN": mask_BxN, "logp_BxN": logp_BxN, "ref_logp_BxN": logp_BxN + noise(0.1),
          "values_BxN": noise(0.5), "ended_B": ended_B, "score_B": rng.standard_normal(B).astype(np.float32),
          "greedy_score_B": rng.standard_normal(B).astype(np.float32)}


def pair_batch(seed=0):
  """Preference pairs after a shared prompt, pair MASKED masked out.

  The reference log-probs sit about one nat under the fresh model's (~ -log V per token), so the
  log-ratios are positive and KTO's reference point z0 is not clipped to 0.
  """
  rng = np.random.default_rng(seed)
  prompt, prompt_mask = _prompts(rng, B)
  batch = {"prompt": prompt, "prompt_mask": prompt_mask, "pair_mask": np.ones(B, np.float32)}
  for side in ("chosen", "rejected"):
    mask_BxN = _right_mask(rng, B, N, 2)
    batch[side], batch[f"{side}_mask"] = _tokens(rng, (B, N)) * mask_BxN, mask_BxN
    batch[f"ref_{side}"] = (-np.log(LM.vocab_size) * mask_BxN.sum(-1) - 1.0
                            + 0.5 * rng.standard_normal(B)).astype(np.float32)
  batch["pair_mask"][MASKED] = 0.0
  return batch


def reward_batch(kind, seed=0):
  rng = np.random.default_rng(seed)
  if kind == "preference":
    batch = {"pair_mask": np.ones(B, np.float32)}
    for side in ("chosen", "rejected"):
      mask_BxT = _right_mask(rng, B, T, 3)
      batch[side], batch[f"{side}_mask"] = _tokens(rng, (B, T)) * mask_BxT, mask_BxT
    batch["pair_mask"][MASKED] = 0.0
    return batch
  mask_BxT = _right_mask(rng, B, T, 3)
  label_B = {"rating": rng.integers(0, 2, B).astype(np.int32), "ordinal": rng.integers(0, 3, B).astype(np.int32),
             "regression": rng.standard_normal(B).astype(np.float32)}[kind]
  row_mask_B = np.ones(B, np.float32)
  row_mask_B[MASKED] = 0.0
  return {"tokens": _tokens(rng, (B, T)) * mask_BxT, "mask": mask_BxT, "label": label_B, "row_mask": row_mask_B}


def ilql_batch(seed=0):
  rng = np.random.default_rng(seed)
  mask_BxT = _right_mask(rng, B, T, 4)
  rewards_BxT = np.zeros((B, T), np.float32)
  rewards_BxT[np.arange(B), mask_BxT.sum(-1) - 1] = rng.standard_normal(B)  # the outcome comes with the last token
  return {"tokens": _tokens(rng, (B, T)) * mask_BxT, "mask": mask_BxT, "rewards": rewards_BxT}


def _scramble_masked_row(make_batch):
  """`make_batch()` with every per-row field of row MASKED taken from another seed's batch."""
  batch, other = make_batch(seed=0), make_batch(seed=1)
  for name, x in batch.items():
    if name not in ("pair_mask", "row_mask"):
      # Reference log-probs 5x lower: the masked pair's log-ratio is far above the others'.
      x[MASKED] = other[name][MASKED] * (5 if name.startswith("ref_") else 1)
  return batch


# ---------------------------------------------------------------------------------------------
# One step of each case: `_program(case, microbatches)` is `(run, key_of_its_compile)`, and `run(*args)`
# with `_args(case)` gives (state, metrics). Cases that differ only in arguments share a compile.

def _compile(fn, *args):
  lowered = jax.jit(fn).lower(*args)
  try:
    return lowered.compile(COMPILER_OPTIONS)
  except Exception as e:  # an XLA without these debug options: slower, same numbers
    if "No such compile option" not in str(e):
      raise
    return lowered.compile()


@functools.cache
def _rm_params():
  args = jax.random.key(0), jnp.zeros((1, 1), jnp.int32)
  return _compile(Transformer(RM).init, *args)(*args)["params"]


def _lm_params():
  # The reward model's trunk: one init compile serves both models.
  return {k: v for k, v in _rm_params().items() if k != "scalar_head"}


@functools.cache
def _tx():
  return common.make_optimizer(OPTIM)


def _fresh(params):
  return common.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=_tx().init(params))


PPO_CONFIG = ppo.PPOConfig(epochs=2, minibatches=2)
# GRPO puts its KL penalty in the loss (Shao et al. 2024); the others in the reward.
PG_CONFIGS = {e: pg.PGConfig(group_size=K, kl_in_loss=e == "grpo") for e in pg.ESTIMATORS}
RSFT_CONFIG = rsft.RSFTConfig(n=K, epochs=2)


def _program(case, microbatches=1):
  family, _, kind = case.partition("_")
  if family == "ppo":
    def run(policy_params, value_params, batch, key, hp):
      state = ppo.init_state(policy_params, value_params, tx=_tx(), kl_coef=PPO_CONFIG.kl_coef)
      return ppo.ppo_step(state, batch, key, hp, policy_model=Transformer(LM), value_model=Transformer(RM), tx=_tx(),
                          config=PPO_CONFIG, **SCHEDULE)
    return run, case
  if family == "pg":
    def run(params, batch, key, hp):
      state = pg.init_state(params, tx=_tx(), kl_coef=PG_CONFIGS[kind].kl_coef)
      return pg.pg_step(state, batch, key, hp, model=Transformer(LM), tx=_tx(), config=PG_CONFIGS[kind],
                        estimator=kind, **SCHEDULE)
    return run, case
  if case == "online_dpo":  # rows 2i and 2i+1 of the rollout batch share a prompt: a pair
    def run(params, batch, key, hp):
      return dpo.online_dpo_step(_fresh(params), batch, key, hp, model=Transformer(LM), tx=_tx(), kind="dpo",
                                 **SCHEDULE)
    return run, case
  if case == "rsft":
    def run(params, batch, key, hp):
      return rsft.rsft_step(_fresh(params), batch, key, hp, model=Transformer(LM), tx=_tx(), config=RSFT_CONFIG,
                            **SCHEDULE)
    return run, case
  if family == "dpo":
    kind = DPO_CASES[kind].kind  # conservative DPO is DPO with another `hp`: one compile
    def run(params, batch, key, hp):
      return dpo.dpo_step(_fresh(params), batch, key, hp, model=Transformer(LM), tx=_tx(), kind=kind,
                          num_microbatches=microbatches, **SCHEDULE)
    return run, (family, kind, microbatches)
  if family == "reward":
    def run(params, batch, key, hp):
      return reward.train_step(_fresh(params), batch, key, hp, model=Transformer(RM), tx=_tx(), kind=kind,
                               num_microbatches=microbatches, num_levels=3, **SCHEDULE)
    return run, (case, microbatches)
  def run(lm_params, batch, key, hp):
    model = Transformer(LM)
    state = ilql.init_state(jax.random.key(1), lm_params, model=model, tx=_tx())
    return ilql.ilql_step(state, batch, key, hp, model=model, tx=_tx(), **SCHEDULE)
  return run, case


def _args(case, scrambled=False):
  """The arguments of `case`'s program; `scrambled`: with the masked pair or row replaced."""
  family, _, kind = case.partition("_")
  key = jax.random.key(0)
  if family == "ppo":
    batch = {k: v for k, v in rollout_batch().items() if k != "greedy_score_B"}
    return _lm_params(), _rm_params(), batch, key, PPO_CONFIG.hparams(OPTIM)
  if family == "pg":
    batch = rollout_batch()
    if kind != "remax":  # only ReMax's baseline needs the greedy response's score
      del batch["greedy_score_B"]
    return _lm_params(), batch, key, PG_CONFIGS[kind].hparams(OPTIM)
  if case in ("online_dpo", "rsft"):
    batch = {k: v for k, v in rollout_batch().items() if k not in ("greedy_score_B", "values_BxN")}
    config = dpo.DPOConfig() if case == "online_dpo" else RSFT_CONFIG
    return _lm_params(), batch, key, config.hparams(OPTIM)
  if family == "dpo":
    batch = _scramble_masked_row(pair_batch) if scrambled else pair_batch()
    return _lm_params(), batch, key, DPO_CASES[kind].hparams(OPTIM)
  if family == "reward":
    make = functools.partial(reward_batch, kind)
    return _rm_params(), _scramble_masked_row(make) if scrambled else make(), key, OPTIM.hparams()
  return _lm_params(), ilql_batch(), key, ilql.ILQLConfig().hparams(OPTIM)


_COMPILED = {}


@functools.cache
def step_values(case, variant="golden") -> dict:
  """{metric or checksum: value} after one step of `case`: "golden", SPLIT or SCRAMBLED."""
  run, compile_key = _program(case, 2 if variant == SPLIT else 1)
  args = _args(case, scrambled=variant == SCRAMBLED)
  if compile_key not in _COMPILED:
    _COMPILED[compile_key] = _compile(run, *args)
  state, metrics = jax.device_get(_COMPILED[compile_key](*args))
  return {**{name: float(v) for name, v in metrics.items()}, "param_checksum": checksum(state.params),
          "state_checksum": checksum(state.replace(params=None))}


def checksum(tree) -> list[float]:
  """[sum |x|, sum x w] over the float leaves, in float64, w a fixed pattern in [0.5, 1.5]: the weighted
  sum also sees entries that trade values; positive weights keep it far from 0, so rtol means something."""
  flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)
                         if np.issubdtype(np.asarray(x).dtype, np.floating)])
  weights = 1.0 + 0.5 * np.sin(0.7 * np.arange(flat.size))
  return [float(np.abs(flat).sum()), float(flat @ weights)]


# ---------------------------------------------------------------------------------------------
# The golden file.

def _load_golden() -> dict:
  return json.loads(GOLDEN_PATH.read_text()) if GOLDEN_PATH.exists() else {}


def _write_golden(case: str, values: dict):
  # Read-modify-write under a lock on the file itself, so pytest-xdist workers can update it together.
  with open(GOLDEN_PATH, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    text = f.read()
    golden = {**(json.loads(text) if text.strip() else {}), case: values}
    f.seek(0)
    f.truncate()
    f.write(json.dumps({c: golden[c] for c in CASES if c in golden}, indent=1) + "\n")


def test_golden_file_lists_every_case():
  if UPDATE:
    pytest.skip("UPDATE_GOLDEN=1: the file is being rewritten")
  assert list(_load_golden()) == CASES, f"{GOLDEN_PATH} does not hold exactly the cases {CASES}.\n{UPDATE_MESSAGE}"


@pytest.mark.parametrize("case", CASES)
def test_golden_one_step(case):
  """One step of `case` gives the stored metrics and checksums."""
  got = step_values(case)
  if UPDATE:
    _write_golden(case, got)
    pytest.skip(f"UPDATE_GOLDEN=1: wrote {case} to {GOLDEN_PATH}")
  want = _load_golden().get(case)
  assert want is not None and sorted(got) == sorted(want), (
      f"{case}: the step's outputs are {sorted(got)}, the golden file has {want and sorted(want)}.\n{UPDATE_MESSAGE}")
  failures = [f"{case}: {name} = {got[name]}, golden {want[name]}" for name in want
              if not np.allclose(got[name], want[name], rtol=1e-4, atol=1e-6)]
  assert not failures, "\n".join(failures) + "\n\n" + UPDATE_MESSAGE


# ---------------------------------------------------------------------------------------------
# Microbatches and masks: exact means however the batch is split, and masked rows are inert. A
# failure here is a bug in the step, never a reason to update the golden file.

def _assert_same_step(case, variant):
  want, got = step_values(case), step_values(case, variant)
  for name in want:
    # Parameters: Adam's first update lr * g / (|g| + eps) turns rounding-level differences of a
    # (mathematically) zero gradient into up to lr; the moments (`state_checksum`) are compared tightly.
    atol = 2 * OPTIM.learning_rate if name == "param_checksum" else 1e-6
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=atol,
                               err_msg=f"{case}, {variant} vs the whole batch: {name}")


@pytest.mark.parametrize("case", [f"dpo_{k}" for k in DPO_CASES] + [f"reward_{k}" for k in REWARD_SPLIT_KINDS])
def test_two_microbatches_give_the_same_step(case):
  _assert_same_step(case, SPLIT)


@pytest.mark.parametrize("case", [f"dpo_{k}" for k in DPO_CASES] + [f"reward_{k}" for k in REWARD_KINDS])
def test_masked_pair_changes_nothing(case):
  """Other tokens (and far-off reference log-probs) in the masked pair or row leave the step unchanged."""
  _assert_same_step(case, SCRAMBLED)


def test_kto_reference_point_is_the_masked_mean_over_the_whole_batch():
  """KTO's z0 (Ethayarajh et al. 2024): the mean log-ratio of both responses of the real pairs only,
  the same whether the forward passes go over the whole batch or over microbatches."""
  def run(params, batch):
    z0 = [dpo.kto_reference_point(params, batch, model=Transformer(LM), num_microbatches=m) for m in (1, 2, 4)]
    return dpo.pair_logprobs(params, batch, model=Transformer(LM)), z0

  batch = pair_batch()
  (tok_c_BxN, tok_r_BxN), z0 = _compile(run, _lm_params(), batch)(_lm_params(), batch)
  ratio_B = ((np.asarray(tok_c_BxN).sum(-1) - batch["ref_chosen"])
             + (np.asarray(tok_r_BxN).sum(-1) - batch["ref_rejected"]))
  expected = np.sum(ratio_B * batch["pair_mask"]) / (2 * batch["pair_mask"].sum())
  np.testing.assert_allclose(z0, [expected] * 3, rtol=1e-5)
