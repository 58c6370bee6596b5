#!/usr/bin/env bash
# The committed CPU speed benchmarks (issue 17), every ratio measured side by side in
# one run of `python -m physllm bench`. Run on a quiet machine from the repository root:
#   bash reports/bench/run_cpu.sh
# Each command writes reports/bench/<name>.txt (the command, the date and machine load,
# then the table) and <name>.json (the config and every row).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1

run() {
  local name="$1"
  shift
  {
    echo "\$ python -m physllm bench $*"
    echo "# run on $(date -u '+%F %H:%M UTC'), physllm $(git rev-parse --short HEAD), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    python -m physllm bench "$@" --json "reports/bench/${name}.json"
  } | tee "reports/bench/${name}.txt"
}

# Decoding, batch 1, every leaderboard entry (4 layers, width 128, matched parameters):
# the context built through each model's cache to 64, 256 and 1024 tokens, then greedy steps.
run decode_cpu --all --mode generate --lengths 64,256,1024 --repeats 3 --threads 1
# Training (fwd+bwd+AdamW): the leaderboard's shape (block 64, batch 12), and block 256, batch 8.
run train_cpu_block64 --all --repeats 3 --threads 1
run train_cpu_block256 --all --block-size 256 --batch-size 8 --repeats 3 --threads 1
# The hidden-gated context vector (the fused per-token loop: the leaderboard's fixed entry, whose
# gates still read h) alone against GPT at the leaderboard's shape, its width matched as the entry's.
run train_cpu_block64_hidden_gates --models gpt,context_vector:n_hidden=448+n_layer=1+carry_state=True --block-size 64 --batch-size 12 --repeats 3 --threads 1
# The input-gated context vector (parallel scan) against GPT at block 1024, its hidden width
# chosen to match GPT's parameters there (951,424; GPT's positions grow with the block).
run train_cpu_block1024_scan --models gpt,context_vector:n_hidden=544+n_layer=1+gates=input --block-size 1024 --batch-size 8 --repeats 3 --threads 1
# torch.compile on CPU (inductor, C++): the models whose training speed issue 17 asks about,
# each compiled in its untimed warmup (30-90 s per process), against a compiled GPT.
run train_cpu_block256_compile --models gpt,hamiltonian:integrator=position,qllm:n_global=8+segment_len=32 --block-size 256 --batch-size 8 --repeats 2 --threads 1 --compile
