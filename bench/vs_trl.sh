#!/usr/bin/env bash
# TRL against the RL trainer on the same tiny GPT-2 shape, same CPU, in interleaved rounds.
#
#   PEER=../shared/peer-bench ROOT=/tmp/peer ROUNDS=2 bash bench/vs_trl.sh     # from the repository root
#
# Needs peer-bench's run_all.sh done once (the TRL virtualenvs and the tiny model under $ROOT). The TRL
# side is peer-bench's own scripts; the rlhf_jax side is bench/bench_rl.py (one iteration of the
# trainer's compiled program), so the comparison keeps working as the library changes.
# Prints one line per run; `python $PEER/summarize_vs.py < that output` gives per-round ratios.
set -u
PEER=$(cd "${PEER:-../shared/peer-bench}" && pwd); ROOT=${ROOT:-/tmp/peer}; PROJECT=$(pwd)
PY=${PY:-$PROJECT/.venv/bin/python}; ROUNDS=${ROUNDS:-2}; STEPS=${STEPS:-22}; WARM=${WARM:-2}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$ROOT/results/vs_trl}; mkdir -p "$OUT"; C="--model tiny --steps $STEPS --warmup $WARM"
for r in $(seq 1 "$ROUNDS"); do
  for spec in \
    "trl_ppo_e1|$ROOT|$ROOT/venv_ppo/bin/python $PEER/bench_ppo.py --batch 16 --ppo_epochs 1 $C --json" \
    "jax_ppo_e1|$PROJECT|$PY bench/bench_rl.py --algorithms ppo --epochs 1 --iterations $STEPS --json" \
    "trl_ppo_e4|$ROOT|$ROOT/venv_ppo/bin/python $PEER/bench_ppo.py --batch 16 --ppo_epochs 4 $C --json" \
    "jax_ppo_e4|$PROJECT|$PY bench/bench_rl.py --algorithms ppo --epochs 4 --iterations $STEPS --json" \
    "trl_grpo_p4g4|$ROOT|$ROOT/venv/bin/python $PEER/bench_trl.py --trainer grpo --prompts_per_step 4 --num_generations 4 $C --json" \
    "jax_grpo_p4g4|$PROJECT|$PY bench/bench_rl.py --algorithms grpo --iterations $STEPS --json" \
    "trl_rloo_p4g4|$ROOT|$ROOT/venv/bin/python $PEER/bench_trl.py --trainer rloo --prompts_per_step 4 --num_generations 4 $C --json" \
    "jax_rloo_p4g4|$PROJECT|$PY bench/bench_rl.py --algorithms rloo --iterations $STEPS --json" ; do
    IFS='|' read -r n dir cmd <<< "$spec"; o="$OUT/${n}_r$r"; rm -f "$o.json"
    (cd "$dir" && $cmd "$o.json" > "$o.log" 2>&1)
    echo "round $r $n rc=$? $(grep -o '"median_[a-z]*_s": [0-9.]*' "$o.json" 2>/dev/null | head -1)"
  done
done
