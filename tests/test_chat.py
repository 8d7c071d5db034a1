"""A trained policy at the terminal (`rlhf_jax.chat`): sampled records, and a chat that shows model
text instead of obeying it."""

import io
import json
import types

import jax

from rlhf_jax import chat, cli, sampling
from rlhf_jax.models.transformer import ModelConfig


def test_chat_shows_escape_sequences_in_model_text_instead_of_sending_them(monkeypatch):
  class Tokenizer:  # token 1 decodes to an OSC 52 clipboard write's start, token 2 to its end
    eos_id, pad_id = 0, 0
    pieces = {1: "hi \x1b]52;c;", 2: "ZXZpbA==\x07 \u202egnp.exe"}

    def encode(self, text):
      return [3]

    def decode(self, ids):
      return "".join(self.pieces[i] for i in ids)

  policy = types.SimpleNamespace(model=ModelConfig(vocab_size=8, max_len=8, d_model=8, n_layers=1, n_heads=1),
                                 tokenizer=Tokenizer(), params={}, step=7)
  monkeypatch.setattr(sampling, "stream", lambda *a, **k: iter([1, 2, 0]))
  out = io.StringIO()
  assert chat.chat(policy, io.StringIO("hello\n\n"), out, chat.SamplingSettings(), name="w") == 0
  text = out.getvalue()
  assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
  assert "hi <U+001B>]52;c;ZXZpbA==<U+0007> <U+202E>gnp.exe" in text


def test_sample_records_use_one_key_per_prompt_and_sample_and_drop_eos(monkeypatch):
  class Tokenizer:
    eos_id, pad_id = 0, 0

    def encode(self, text):
      return [len(text)]

    def decode(self, ids):
      return "".join(f"<{i}>" for i in ids)

  seen = []

  def stream(params, context, key, **kwargs):
    seen.append((context, int(jax.random.key_data(key)[-1]), kwargs["temperature"]))
    return iter([7, 8, 0])

  monkeypatch.setattr(sampling, "stream", stream)
  policy = types.SimpleNamespace(model=ModelConfig(vocab_size=8, max_len=8, d_model=8, n_layers=1, n_heads=1),
                                 tokenizer=Tokenizer(), params={}, step=3)
  settings = chat.SamplingSettings(temperature=0.5, seed=2)
  records = list(chat.sample_records(policy, ["ab", "abc"], settings, num=2, name="w"))
  assert records == [{"prompt": p, "response": "<7><8>", "model": "w@3"} for p in ("ab", "ab", "abc", "abc")]
  assert [s[0] for s in seen] == [[2], [2], [3], [3]] and {s[2] for s in seen} == {0.5}
  keys = [int(jax.random.key_data(jax.random.key(2 + 1000 * i + k))[-1]) for i in range(2) for k in range(2)]
  assert [s[1] for s in seen] == keys


def test_rlhf_jax_sample_prints_one_json_record_a_line(monkeypatch, capsys, tmp_path):
  monkeypatch.setattr(cli, "_load_policy", lambda workdir: "policy")
  monkeypatch.setattr(chat, "sample_records", lambda policy, prompts, settings, num, name, raw: (
      {"prompt": p, "n": num, "t": settings.temperature, "model": name, "raw": raw} for p in prompts))
  (tmp_path / "prompts.txt").write_text("first\n\nsecond\n")
  assert cli.main(["sample", "w", "--prompt", "zero", "--prompts-file", str(tmp_path / "prompts.txt"), "--num", "2",
                   "--temperature", "0.7", "--raw"]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert lines == [{"prompt": p, "n": 2, "t": 0.7, "model": "w", "raw": True} for p in ("zero", "first", "second")]
  assert cli.main(["sample", "w"]) == 2
  assert "give --prompt TEXT" in capsys.readouterr().err


def test_temperature_0_is_greedy_decoding(monkeypatch):
  seen = []
  monkeypatch.setattr(sampling, "stream", lambda *a, **k: seen.append((k["temperature"], k["top_k"])) or iter([0]))
  policy = types.SimpleNamespace(model=ModelConfig(vocab_size=8, max_len=8, d_model=8, n_layers=1, n_heads=1),
                                 tokenizer=types.SimpleNamespace(eos_id=0, pad_id=0, encode=lambda t: [1],
                                                                 decode=lambda ids: ""), params={}, step=0)
  list(chat.sample_records(policy, ["a"], chat.SamplingSettings(temperature=0.0)))
  list(chat.sample_records(policy, ["a"], chat.SamplingSettings(temperature=0.7)))
  assert seen == [(1.0, 1), (0.7, 0)]


def test_a_tokenizer_with_a_chat_template_frames_prompts_and_every_turn_with_it(monkeypatch):
  from pathlib import Path

  from rlhf_jax.tokenizers import HFTokenizer
  tok = HFTokenizer(Path(__file__).parent / "data" / "tiny_hf" / "qwen2")  # ChatML
  answer = tok.encode("Hello there")
  seen = []

  def stream(params, context, key, **kwargs):
    seen.append(list(context))
    return iter(answer + [tok.eos_id])

  monkeypatch.setattr(sampling, "stream", stream)
  policy = types.SimpleNamespace(model=ModelConfig(vocab_size=96, max_len=64, d_model=8, n_layers=1, n_heads=1),
                                 tokenizer=tok, params={}, step=0)
  out = io.StringIO()
  assert chat.chat(policy, io.StringIO("Hi\nHow are you?\n\n"), out, chat.SamplingSettings()) == 0
  first = [{"role": "user", "content": "Hi"}]
  second = first + [{"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "How are you?"}]
  assert seen == [tok.encode(tok.apply_chat_template(m, add_generation_prompt=True)) for m in (first, second)]
  assert tok.decode(seen[1]).endswith("<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n")
  assert "Hello there" in out.getvalue()

  seen.clear()
  records = list(chat.sample_records(policy, ["Hi"], chat.SamplingSettings()))
  assert seen == [tok.encode(tok.apply_chat_template(first, add_generation_prompt=True))]
  assert records[0]["response"] == "Hello there"
  seen.clear()
  list(chat.sample_records(policy, ["Hi"], chat.SamplingSettings(), raw=True))  # --raw: the text as it is
  assert seen == [tok.encode("Hi")]
