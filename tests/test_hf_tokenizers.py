"""Hugging Face tokenizers and chat templates (`tokenizers.HFTokenizer`) against transformers' own
encodings and renderings, stored with the fixtures by tools/make_hf_fixtures.py."""

import json
import re
from pathlib import Path

import pytest

from rlhf_jax.errors import UserError
from rlhf_jax.tokenizers import HFTokenizer, Tokenizer, render_chat_template

FIXTURES = Path(__file__).parent / "data" / "tiny_hf"


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3", "mistral"])
def test_encodings_decodings_and_chat_templates_match_transformers(arch):
  tok = HFTokenizer(FIXTURES / arch)
  reference = json.loads((FIXTURES / arch / "tokenizer_reference.json").read_text())
  assert isinstance(tok, Tokenizer)
  assert tok.vocab_size == reference["vocab_size"] and tok.eos_id == reference["eos_id"]
  for text, ids in reference["encodings"].items():
    assert tok.encode(text) == ids
    assert tok.decode(ids) == reference["decodings"][text]
  assert tok.encode_batch(list(reference["encodings"])) == list(reference["encodings"].values())
  for chat in reference["chats"]:
    assert tok.apply_chat_template(chat["messages"], add_generation_prompt=chat["add_generation_prompt"]) == chat["text"]


def test_special_tokens_come_from_the_config_and_padding_falls_back_to_eos():
  qwen, llama = HFTokenizer(FIXTURES / "qwen2"), HFTokenizer(FIXTURES / "llama")
  assert qwen.decode([qwen.eos_id, qwen.pad_id]) == "<|im_end|><|endoftext|>"
  assert llama.pad_id == llama.eos_id and llama.decode([llama.bos_id]) == "<|begin_of_text|>"
  assert qwen.fingerprint != llama.fingerprint


def test_a_template_that_raises_and_a_missing_tokenizer_are_clear_errors(tmp_path):
  tok = HFTokenizer(FIXTURES / "qwen2")
  with pytest.raises(UserError, match="chat template: tool messages are not supported"):
    tok.apply_chat_template([{"role": "tool", "content": "42"}])
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    HFTokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text((FIXTURES / "qwen2" / "tokenizer.json").read_text())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
  with pytest.raises(UserError, match=re.escape("eos_token '<|nope|>' is not in tokenizer.json's vocabulary")):
    HFTokenizer(tmp_path)


def test_the_sandbox_refuses_what_a_hostile_template_reaches_for():
  with pytest.raises(Exception, match="unsafe|not safely|access"):
    render_chat_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])
  assert render_chat_template("{{ messages | tojson }}", [{"role": "user", "content": "<b>é</b>"}]) == \
      '[{"role": "user", "content": "<b>é</b>"}]'  # as transformers: no HTML escaping, no ASCII escapes
