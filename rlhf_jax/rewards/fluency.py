"""How fluent an answer reads to a separate language model: its mean log-probability per token.

`LMFluency(workdir)` loads any LM run or Hugging Face folder (`trained.load`) and maps (prompts,
answers) to the mean log-prob, in nats, of each answer's tokens after its prompt: the fluency
signal of the simulated rubric experts (`feedback.rubric.SimulatedExpert(fluency_logp=...)`).
Prompts keep their last `prompt_len` tokens and answers their first `answer_len` (an empty answer
is a lone EOS); batches have a fixed size, so scoring compiles once.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from rlhf_jax import sampling, sharding, trained
from rlhf_jax.data import prompts as prompts_lib
from rlhf_jax.data import rows
from rlhf_jax.models.transformer import Transformer


class LMFluency:
  def __init__(self, workdir: str | Path, mesh=None, *, prompt_len: int = 32, answer_len: int = 32,
               batch_size: int = 32):
    self.mesh = mesh if mesh is not None else sharding.make_mesh(sharding.MeshConfig())
    self.lm = trained.load(workdir, self.mesh)
    if prompt_len + answer_len > self.lm.model.max_len:
      raise ValueError(f"prompt_len + answer_len = {prompt_len + answer_len} exceeds the LM's max_len="
                       f"{self.lm.model.max_len}")
    sharding.check_batch_divisible(batch_size, self.mesh, "batch_size")
    self.prompt_len, self.answer_len, self.batch_size = prompt_len, answer_len, batch_size
    self._logprobs = jax.jit(functools.partial(sampling.response_logprobs, model=Transformer(self.lm.model)))

  def __call__(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """Mean log-prob per token (nats) of each answer after its prompt."""
    tok = self.lm.tokenizer
    prompt_NxP, prompt_mask_NxP = prompts_lib.encode_prompts(tok, list(prompts), self.prompt_len)
    answer_NxA, answer_mask_NxA = rows.pad_rows([ids or [tok.eos_id] for ids in tok.encode_batch(list(answers))],
                                                self.answer_len, tok.pad_id)
    arrays = {"p": prompt_NxP, "pm": prompt_mask_NxP, "a": answer_NxA, "am": answer_mask_NxA}
    out = []
    for batch in rows.eval_row_batches(arrays, self.batch_size):
      placed = sharding.put_batch({k: v for k, v in batch.items() if k != "row_mask"}, self.mesh)
      logp_BxA = np.asarray(self._logprobs(self.lm.params, placed["p"], placed["pm"], placed["a"], placed["am"]))
      mean_B = logp_BxA.sum(-1) / np.maximum(batch["am"].sum(-1), 1)
      out.append(mean_B[batch["row_mask"] > 0])
    return np.concatenate(out) if out else np.zeros(0)
