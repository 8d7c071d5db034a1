"""A trained policy at the command line: continuations of prompts as records, and a chat loop.

`rlhf-jax sample` and `rlhf-jax chat` call these with a policy from `trained.load`. Both stream
tokens from the KV-cache sampler (`sampling.stream`). A tokenizer with a chat template (a Hugging
Face model's) frames each prompt and every turn of a conversation with it, as the model was
trained to read them, and asks for the assistant's turn; without one, or with `raw`, a prompt is
continued as it is. Model text is shown, never obeyed: escape sequences and bidi controls in it
are written as `<U+XXXX>` (`feedback.display.visible`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence, TextIO

import jax

from rlhf_jax import sampling
from rlhf_jax.feedback.display import visible
from rlhf_jax.models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  temperature: float = 1.0  # 0: greedy
  top_p: float = 1.0
  max_new_tokens: int = 48
  seed: int = 0


def _stream(policy, context: list[int], key: jax.Array, settings: SamplingSettings) -> Iterator[int]:
  """Tokens as they are sampled; temperature 0 is greedy decoding (the most likely token, top_k=1)."""
  tok = policy.tokenizer
  greedy = settings.temperature == 0
  return sampling.stream(policy.params, context, key, model=Transformer(policy.model),
                         max_new_tokens=settings.max_new_tokens, temperature=1.0 if greedy else settings.temperature,
                         top_k=1 if greedy else 0, top_p=settings.top_p, eos_id=tok.eos_id, pad_id=tok.pad_id)


def uses_template(tokenizer, raw: bool = False) -> bool:
  return not raw and bool(getattr(tokenizer, "chat_template", None))


def conversation_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
  """The token ids of `messages` in the tokenizer's chat template, ending where the assistant's
  next turn begins (`add_generation_prompt`)."""
  return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def sample_records(policy, prompts: Sequence[str], settings: SamplingSettings, *, num: int = 1,
                   name: str = "", raw: bool = False) -> Iterator[dict]:
  """`num` continuations of each prompt as `{"prompt", "response", "model"}` (the feedback store's
  import format); sample k of prompt i uses the key `seed + 1000 i + k`. With a chat template
  (and not `raw`) each prompt is a user's message and the response the assistant's answer."""
  tok = policy.tokenizer
  template = uses_template(tok, raw)
  for i, prompt in enumerate(prompts):
    context = conversation_ids(tok, [{"role": "user", "content": prompt}]) if template else tok.encode(prompt)
    for k in range(num):
      ids = _stream(policy, context, jax.random.key(settings.seed + 1000 * i + k), settings)
      yield {"prompt": prompt, "response": tok.decode([t for t in ids if t != tok.eos_id]),
             "model": f"{name}@{policy.step}"}


def chat(policy, stdin: TextIO, stdout: TextIO, settings: SamplingSettings, *, history: bool = True,
         name: str = "", raw: bool = False) -> int:
  """Reads a line, streams the policy's answer, until an empty line or end of input; `/reset`
  forgets the conversation (with `history`, the context is every earlier turn: in the chat
  template's messages when the tokenizer has one, else the earlier lines and answers end to end)."""
  tok = policy.tokenizer
  template = uses_template(tok, raw)
  stdout.write(f"{name} (step {policy.step}{', chat template' if template else ''}); an empty line or Ctrl-D ends, "
               "/reset forgets the history\n")
  past: list[int] = []
  messages: list[dict] = []
  turn = 0
  while True:
    stdout.write("> ")
    stdout.flush()
    line = stdin.readline()
    if not line or not line.strip():
      return 0
    if line.strip() == "/reset":
      past, messages = [], []
      continue
    user = {"role": "user", "content": line.rstrip("\n")}
    if template:
      context = conversation_ids(tok, (messages if history else []) + [user])
    else:
      context = (past if history else []) + tok.encode(user["content"])
    ids, shown = [], ""
    for token in _stream(policy, context, jax.random.key(settings.seed + turn), settings):
      if token == tok.eos_id:
        break
      ids.append(token)
      text = tok.decode(ids)
      # Per character, so an escape sequence split across tokens is caught too.
      stdout.write(visible(text[len(shown):] if text.startswith(shown) else "\n" + text))
      stdout.flush()
      shown = text
    stdout.write("\n")
    past = context + ids + [tok.eos_id]
    messages = (messages if history else []) + [user, {"role": "assistant", "content": tok.decode(ids)}]
    turn += 1
