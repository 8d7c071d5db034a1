"""Writes tests/data/tiny_hf/<arch>/: randomly initialised tiny Llama, Qwen2, Qwen3 and Mistral
models saved by Hugging Face transformers (config.json + safetensors, one of them sharded with an
index), with reference logits on fixed tokens and a greedy continuation (reference.npz). Each folder
also gets a tiny BPE tokenizer (tokenizer.json, tokenizer_config.json) with its family's kind of
chat template (ChatML for Qwen, Llama 3's headers, Mistral's [INST]), and transformers' encodings
and chat renderings of a few texts and conversations (tokenizer_reference.json).

The import tests compare `models.hf` on these weights with transformers' own numbers, so the
fixtures must come from transformers itself. Needs torch and transformers (not dependencies of
rlhf_jax; e.g. `pip install torch transformers` in a separate venv), run once:

  python tools/make_hf_fixtures.py tests/data/tiny_hf
"""

import sys
from pathlib import Path

import numpy as np
import torch
import transformers

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)

ARCHS = {
    # Llama 3's RoPE scaling (rescaled low frequencies), untied embeddings.
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(rope_theta=500000.0, tie_word_embeddings=False,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    # Biases on q/k/v, tied embeddings, linear RoPE scaling; saved in shards with an index.
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(rope_theta=10000.0, tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    # q/k RMSNorm, a head_dim that is not hidden_size / heads, tied embeddings.
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(head_dim=16, rope_theta=1000000.0, tie_word_embeddings=True)),
    # Sliding-window attention over 8 positions (shorter than the test sequences).
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(sliding_window=8, rope_theta=10000.0, tie_word_embeddings=False)),
}


CORPUS = ["The movie was good. I liked it a lot!", "What a bad, bad day: rain and cold.",
          "Hello there, how are you today?", "Tell me a joke about cats and dogs.", "Sure. Why did the cat sit?\n"]
CHATML = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}\n"
    "{%- for message in messages %}\n"
    "{%- if message.role == 'system' and loop.first %}{%- continue %}{%- endif %}\n"
    "{%- if message.role == 'tool' %}{{- raise_exception('tool messages are not supported') }}{%- endif %}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = (
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
MISTRAL = (
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "{%- if message['role'] == 'system' %}{{- message['content'] + '\\n\\n' }}\n"
    "{%- elif message['role'] == 'user' %}{{- '[INST] ' + message['content'] + ' [/INST]' }}\n"
    "{%- else %}{{- message['content'] + eos_token }}{%- endif %}\n"
    "{%- endfor %}")
TOKENIZERS = {  # arch -> (special tokens, chat template, eos, bos, pad)
    "qwen2": (["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML, "<|im_end|>", None, "<|endoftext|>"),
    "llama": (["<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>"], LLAMA3, "<|eot_id|>", "<|begin_of_text|>", None),
    "qwen3": (["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML, "<|im_end|>", None, "<|endoftext|>"),
    "mistral": (["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], MISTRAL, "</s>", "<s>", None),
}
TEXTS = ["The movie was good.", " a bad day", "Hello there,\nhow are you?", "", "cats and dogs!"]
CHATS = [[{"role": "user", "content": "Tell me a joke. "}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
          {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "How are you?"}]]


def write_tokenizer(folder: Path, arch: str) -> None:
  import json

  import tokenizers
  special, template, eos, bos, pad = TOKENIZERS[arch]
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
  tok.decoder = tokenizers.decoders.Metaspace(replacement="\u2581", prepend_scheme="never")
  tok.train_from_iterator(CORPUS, tokenizers.trainers.BpeTrainer(vocab_size=90, special_tokens=special))
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=bos, pad_token=pad,
                                              unk_token="<unk>")
  fast.chat_template = template
  fast.save_pretrained(folder)
  reference = {
      "encodings": {t: fast(t, add_special_tokens=False).input_ids for t in TEXTS},
      "decodings": {t: fast.decode(fast(t, add_special_tokens=False).input_ids) for t in TEXTS},
      "chats": [{"messages": c, "add_generation_prompt": g,
                 "text": fast.apply_chat_template(c, tokenize=False, add_generation_prompt=g)}
                for c in CHATS for g in (False, True)],
      "vocab_size": len(fast), "eos_id": fast.eos_token_id}
  (folder / "tokenizer_reference.json").write_text(json.dumps(reference, indent=1) + "\n")


def main(out: Path) -> None:
  for i, (name, (config_cls, model_cls, extra)) in enumerate(ARCHS.items()):
    torch.manual_seed(i)
    config = config_cls(**COMMON, **extra)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: perturb everything
      for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
    folder = out / name
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="20KB" if name == "qwen2" else "10GB")
    tokens = torch.randint(3, config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
      logits = model(tokens).logits.numpy()
      prompt = tokens[:2, :6]
      greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[:, prompt.shape[1]:].numpy()
    np.savez(folder / "reference.npz", tokens=tokens.numpy().astype(np.int32), logits=logits.astype(np.float32),
             prompt=prompt.numpy().astype(np.int32), greedy=greedy.astype(np.int32),
             versions=np.array([f"torch {torch.__version__}", f"transformers {transformers.__version__}"]))
    if name in TOKENIZERS:
      write_tokenizer(folder, name)
    print(name, sorted(p.name for p in folder.iterdir()))


if __name__ == "__main__":
  main(Path(sys.argv[1]))
