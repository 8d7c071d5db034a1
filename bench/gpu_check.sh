#!/usr/bin/env bash
# Every accelerator number issues 6 and 7 ask for, in one run (a few minutes on one H100/H200):
#   bash bench/gpu_check.sh                 # log to $OUT/bench_gpu.log (or /tmp)
# Needs jax with CUDA, flax and optax; rlhf_jax is taken from this checkout (no install).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/bench_gpu.log"
: >"$log"
run() { echo "\$ python3 $*" | tee -a "$log"; timeout 300 python3 "$@" 2>&1 | grep -v "^W0000\|^I0000" | tee -a "$log"; echo | tee -a "$log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$log"
# Train step MFU at GPT-2 small (goal: >= 45% bf16), and the tiny config.
run bench/bench_train.py --shape gpt2-small --dtype bfloat16 --batch 16 --seq-len 1024 --steps 10
run bench/bench_train.py --shape gpt2-small --dtype float32 --batch 16 --seq-len 1024 --steps 5
run bench/bench_train.py --shape tiny --dtype bfloat16 --batch 32 --seq-len 128 --steps 20
# Decoding against the HBM roofline at batch 1, 8, 64 (goal: >= 60% at 64).
run bench/bench_sampling.py --shape gpt2-small --dtype bfloat16 --batch 1,8,64 --prompt-len 64 --new-tokens 256 \
  --no-uncached --repeats 3
# A PPO iteration split into rollout, scoring, update.
run bench/bench_ppo.py --shape gpt2-small --dtype bfloat16 --batch 64 --prompt-len 64 --new-tokens 128 --iterations 3
run bench/bench_ppo.py --shape tiny --batch 32 --iterations 5
# Vmapped runs against sequential ones (issue 7's goal: 16 runs at >= 8x).
run bench/bench_vmap.py --runs 1,4,16 --steps 5
# The OpenAI-compatible server: requests/s and tokens/s at 1, 4 and 16 clients.
run bench/bench_serve.py --shape gpt2-small --dtype bfloat16 --requests 64 --max-tokens 128
