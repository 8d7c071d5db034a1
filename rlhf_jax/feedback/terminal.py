"""Judge samples at a console prompt: compare two responses, rate one from 1 to N, or score one on a rubric.

  rlhf-jax label --terminal --store feedback.db --labeler alice            # pairs
  rlhf-jax label --terminal --store feedback.db --labeler alice --rate 3   # "rate this text 1-3"
  rlhf-jax label --terminal --store feedback.db --labeler alice --rubric default   # accuracy, fluency, ...

Every answer is written to the store before the next task is shown, so quitting (or a crash) loses
nothing that was answered. Keys: pairs `a` / `b` / `t` (tie) / `s` (skip); ratings `1`..`N`;
rubrics one number per criterion on one line (`5 4 5`); all `u` (undo the last judgement) and
`q` (quit). The order of the two responses is randomised
(and recorded as shown), so a labeler cannot learn that one side is, say, the newer model.

Model text is shown through `display.visible`: terminal escapes (cursor moves, erase-line, OSC
window-title and clipboard writes), other control characters and bidi/zero-width characters are
printed as `<U+XXXX>` instead of reaching the terminal.
"""

from __future__ import annotations

import random
import textwrap
from typing import Callable, TextIO, TypeVar

from rlhf_jax.feedback.display import visible
from rlhf_jax.feedback.rubric import Rubric
from rlhf_jax.feedback.store import FeedbackStore, PairTask, RatingTask

_Task = TypeVar("_Task")

_PAIR_KEYS = {"a": "a", "b": "b", "t": "tie", "s": "skip"}


def _block(title: str, text: str, width: int = 88) -> str:
  # Written out before splitting, so that \r, \x0b, \x0c, \x1c..\x1e and \x85 show as what the
  # model wrote instead of being taken as line breaks by splitlines().
  body = "\n".join(textwrap.fill(line, width, initial_indent="  ", subsequent_indent="  ") if line else ""
                   for line in visible(text).splitlines() or [""])
  return f"{title}\n{body}"


def _undo(store: FeedbackStore, labeler: str, write: Callable[[str], None]) -> None:
  undone = store.undo_last(labeler)
  write("nothing to undo\n" if undone is None else f"undid {type(undone).__name__.lower()} {undone.id}\n")


def _ask_until_done(store: FeedbackStore, labeler: str, read: Callable[[], str],
                    write: Callable[[str], None], *, next_task: Callable[[str], _Task | None],
                    present: Callable[[_Task], Callable[[str], None]], question: str,
                    valid: Callable[[str], bool], hint: str, finished: str) -> int:
  """The ask/answer loop both modes share, so `q`, `u` and re-asking behave the same in each.

  `present(task)` shows a task and returns what records a valid answer to it; returns how many
  answers were recorded before the queue ran dry or the labeler quit.
  """
  done = 0
  while (task := next_task(labeler)) is not None:
    record = present(task)
    while True:
      write(question)
      answer = read().strip().lower()
      if answer == "q":
        return done
      if answer == "u":
        _undo(store, labeler, write)
        break
      if valid(answer):
        record(answer)
        done += 1
        break
      write(f"please answer {hint} (got {answer!r})\n")
  write(finished)
  return done


def label_pairs(store: FeedbackStore, labeler: str, read: Callable[[], str], write: Callable[[str], None],
                *, seed: int = 0) -> int:
  """Asks for pair judgements until the queue is empty or the labeler quits; returns how many."""
  rng = random.Random(seed)

  def present(task: PairTask) -> Callable[[str], None]:
    first, second = (task.a, task.b) if rng.random() < 0.5 else (task.b, task.a)
    progress = store.progress()
    write(f"\n[{progress.pairs_judged} judged, {progress.pairs_queued} queued]\n")
    write(_block("PROMPT", task.prompt.text) + "\n" + _block("A", first.text) + "\n" + _block("B", second.text) + "\n")
    return lambda answer: store.compare(first.id, second.id, _PAIR_KEYS[answer], labeler=labeler)

  return _ask_until_done(
      store, labeler, read, write, next_task=store.next_pair, present=present,
      question="Which is better? [a/b/t(ie)/s(kip)/u(ndo)/q(uit)] ",
      valid=lambda answer: answer in _PAIR_KEYS, hint="a, b, t, s, u or q",
      finished="no pairs left to judge\n")


def label_ratings(store: FeedbackStore, labeler: str, scale: int, read: Callable[[], str],
                  write: Callable[[str], None]) -> int:
  """Asks for ratings in 1..scale until the queue is empty or the labeler quits; returns how many."""
  def present(task: RatingTask) -> Callable[[str], None]:
    progress = store.progress()
    write(f"\n[{progress.samples_rated} rated, {progress.samples_queued} queued]\n")
    write(_block("PROMPT", task.prompt.text) + "\n" + _block("RESPONSE", task.sample.text) + "\n")
    return lambda answer: store.rate(task.sample.id, int(answer), scale=scale, labeler=labeler)

  return _ask_until_done(
      store, labeler, read, write, next_task=store.next_sample_to_rate, present=present,
      question=f"Rate this text 1-{scale} [1..{scale}/u(ndo)/q(uit)] ",
      valid=lambda answer: answer.isdigit() and 1 <= int(answer) <= scale,
      hint=f"a number from 1 to {scale}, u or q", finished="no samples left to rate\n")


def label_rubric(store: FeedbackStore, labeler: str, rubric: Rubric, read: Callable[[], str],
                 write: Callable[[str], None]) -> int:
  """Asks for a score of each criterion of `rubric` until the queue is empty or the labeler quits;
  the scores of one answer are stored together. Returns how many answers were scored."""
  names = [c.name for c in rubric.criteria]
  guide = "".join(f"  {c.name} (1-{c.scale}){': ' + c.guidance if c.guidance else ''}\n" for c in rubric.criteria)

  def valid(answer: str) -> bool:
    parts = answer.split()
    return len(parts) == len(names) and all(p.isdigit() and 1 <= int(p) <= c.scale
                                            for p, c in zip(parts, rubric.criteria))

  def present(task: RatingTask) -> Callable[[str], None]:
    progress = store.progress(labeler)
    write(f"\n[{progress.samples_scored} scored, {progress.samples_to_score} to score]\n")
    write(_block("QUESTION", task.prompt.text) + "\n" + _block("ANSWER", task.sample.text) + "\n" + guide)
    return lambda answer: store.score(task.sample.id, dict(zip(names, map(int, answer.split()))),
                                      scales=rubric.scales, labeler=labeler)

  return _ask_until_done(
      store, labeler, read, write, next_task=store.next_sample_to_score, present=present,
      question=f"Scores for {' '.join(names)} [numbers/u(ndo)/q(uit)] ", valid=valid,
      hint=f"{len(names)} numbers ({', '.join(f'{c.name} 1-{c.scale}' for c in rubric.criteria)}), u or q",
      finished="no answers left to score\n")


def run(store_path: str, labeler: str, *, rate_scale: int | None, stdin: TextIO, stdout: TextIO,
        seed: int = 0, rubric: Rubric | None = None) -> int:
  """The console loop on `stdin`/`stdout`; end of input counts as quitting."""
  def read() -> str:
    line = stdin.readline()
    return line if line else "q"

  def write(text: str) -> None:
    stdout.write(text)
    stdout.flush()

  with FeedbackStore(store_path) as store:
    if rubric is not None:
      return label_rubric(store, labeler, rubric, read, write)
    if rate_scale is None:
      return label_pairs(store, labeler, read, write, seed=seed)
    return label_ratings(store, labeler, rate_scale, read, write)
