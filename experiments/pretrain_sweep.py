"""pretrain_tiny over seeds and learning rates, every run in ONE compiled program (vmapped).

  rlhf-jax run experiments/pretrain_sweep.py                                  # 4 seeds x 1 learning rate
  rlhf-jax run experiments/pretrain_sweep.py --set vmap.learning_rates=1e-3,3e-3,1e-2 --set vmap.seeds=0,1,2
  rlhf-jax run experiments/pretrain_sweep.py --smoke                          # < 1 min, for tests
  rlhf-jax report workdirs/pretrain_sweep/runs                                # mean ± 95% CI over seeds

The product of `vmap.seeds` x `vmap.learning_rates` x `vmap.weight_decays` gives N runs of
pretrain_tiny's model and data. Their states, keys and hyperparameters are stacked on a leading
axis and one jitted step trains all of them on the same batch (`rlhf_jax.vmapped`; the data order
is `vmap.data_seed`'s). Run i is pretrain_tiny with run i's seed, learning rate and weight decay
(tests/test_vmapped.py checks it to float precision). Each run has its own directory under
`<workdir>/runs/` (named like a `rlhf-jax sweep` run: `optim.learning_rate=0.003,seed=0`) with
its config, metrics and, at the end, its own checkpoint: a loadable LM run for later stages
(`policy.init_from=...`). The stacked state checkpoints in `<workdir>/checkpoints/`, so a rerun
resumes all runs together.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import shutil
from pathlib import Path

import jax
import numpy as np

from rlhf_jax import config as config_lib
from rlhf_jax import runs, sharding, sweep, trained, vmapped
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.data import lm_pipeline
from rlhf_jax.loop import train_loop
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.steps import common, lm

base = runs.load_experiment(Path(__file__).with_name("pretrain_tiny.py"))


@dataclasses.dataclass(frozen=True)
class VmapConfig:
  seeds: tuple[int, ...] = (0, 1, 2, 3)
  learning_rates: tuple[float, ...] = ()  # empty: optim.learning_rate only
  weight_decays: tuple[float, ...] = ()  # empty: optim.weight_decay only
  data_seed: int = 0  # the shuffle of the batches every run shares

  def __post_init__(self):
    if not self.seeds:
      raise ValueError("vmap.seeds: expected at least one seed")
    if any(lr <= 0 for lr in self.learning_rates):
      raise ValueError(f"vmap.learning_rates must be positive, got {self.learning_rates}")


@dataclasses.dataclass(frozen=True)
class Config(base.Config):
  vmap: VmapConfig = VmapConfig()


def get_config(smoke: bool = False) -> Config:
  config = base.get_config(smoke)
  return Config(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                vmap=VmapConfig(seeds=(0, 1) if smoke else (0, 1, 2, 3)))


def run_configs(config: Config) -> dict[str, base.Config]:
  """Run name -> the pretrain_tiny config that the run is equal to."""
  vc, single = config.vmap, base.Config(**{f.name: getattr(config, f.name) for f in dataclasses.fields(base.Config)})
  lrs = vc.learning_rates or (config.optim.learning_rate,)
  wds = vc.weight_decays or (config.optim.weight_decay,)
  runs = {}
  for lr, wd, seed in itertools.product(lrs, wds, vc.seeds):
    point = {**({"optim.learning_rate": lr} if vc.learning_rates else {}),
             **({"optim.weight_decay": wd} if vc.weight_decays else {}), "seed": seed}
    runs[sweep.run_name(point)] = dataclasses.replace(
        single, seed=seed, optim=dataclasses.replace(config.optim, learning_rate=lr, weight_decay=wd))
  if len(runs) < len(vc.seeds) * len(lrs) * len(wds):
    raise ValueError("vmap: the grid has repeated points (a value is listed twice)")
  return runs


def main(config: Config, workdir: Path):
  workdir = Path(workdir)
  runs = run_configs(config)
  tokenizer = lm_pipeline.prepare_tokenizer(config.data, workdir / "tokenizer.model")
  tokens = lm_pipeline.prepare_lm_tokens(config.data.corpus, tokenizer, val_fraction=config.data.val_fraction,
                                         num_threads=config.data.tokenizer_threads)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  sharding.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  model = Transformer(config.model)
  tx = common.make_optimizer(config.optim)  # the rates live in `hp`, per run
  print(f"{len(runs)} runs in one program: {', '.join(runs)}", flush=True)

  run_dirs = [workdir / "runs" / name for name in runs]
  for run_dir, run_config in zip(run_dirs, runs.values()):
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(run_config, run_dir / "config.json")
    trained.save_model_config(run_dir, config.model)
    shutil.copyfile(workdir / "tokenizer.model", run_dir / "tokenizer.model")
  # Run i's keys are those pretrain_tiny derives from run i's seed.
  seed_keys = [jax.random.key(c.seed) for c in runs.values()]
  init = jax.jit(vmapped.vmap_init(functools.partial(common.init_state, model=model, tx=tx)),
                 out_shardings=sharding.replicated(mesh))
  init_fn = functools.partial(init, vmapped.stack_keys([jax.random.fold_in(k, 0) for k in seed_keys]))
  step_fn = common.jit_step(vmapped.vmap_step(functools.partial(
      lm.train_step, model=model, tx=tx, warmup_steps=config.optim.warmup_steps, total_steps=config.loop.steps,
      min_lr_ratio=config.optim.min_lr_ratio, num_microbatches=config.microbatches)), mesh)
  dataset = lm_pipeline.lm_dataset(tokens.train_N, config.data.seq_len, config.data.batch_size // jax.process_count(),
                                   seed=config.vmap.data_seed, shard_index=jax.process_index(),
                                   shard_count=jax.process_count())
  eval_step = jax.jit(jax.vmap(functools.partial(lm.eval_step, model=model), in_axes=(0, None)))
  val_batches = lm_pipeline.eval_batches(tokens.validation_M, config.data.seq_len, config.data.eval_batch_size,
                                         pad_id=tokenizer.pad_id)

  def evaluate(state) -> dict[str, np.ndarray]:
    sums = [jax.device_get(eval_step(state.params, sharding.put_global_batch(b, mesh))) for b in val_batches]
    loss_N = sum(s["loss_sum"] for s in sums) / sum(s["count"] for s in sums)
    print(f"step {int(state.step[0])}: validation perplexity "
          + ", ".join(f"{p:.1f}" for p in np.exp(np.minimum(loss_N, 50.0))), flush=True)
    return {"loss": loss_N, "perplexity": np.exp(np.minimum(loss_N, 50.0))}

  rngs = [jax.random.fold_in(k, 1) for k in seed_keys]
  state = train_loop(workdir=workdir, loop=config.loop, config=dataclasses.asdict(config), init_fn=init_fn,
                     state_shardings=sharding.replicated(mesh), step_fn=step_fn, data_iterator=iter(dataset),
                     hp=vmapped.stack([c.optim.hparams() for c in runs.values()]), rng=vmapped.stack_keys(rngs),
                     mesh=mesh, tokens_per_step=len(runs) * config.data.batch_size * config.data.seq_len,
                     evaluate=evaluate, run_dirs=run_dirs)
  step = int(state.step[0])
  if step < config.loop.steps:  # stopped early: the rerun resumes every run
    return state
  for i, (run_dir, run_config) in enumerate(zip(run_dirs, runs.values())):
    checkpointer = Checkpointer(run_dir / "checkpoints", max_to_keep=1)
    try:
      checkpointer.save(step, state=vmapped.unstack(state, i), rng=rngs[i], config=dataclasses.asdict(run_config))
      checkpointer.wait()
    finally:
      checkpointer.close()
  return state
