#!/usr/bin/env bash
# The benchmark issue's three measurements against a local `tpuserve serve`, in one run:
#   1. 256 random prompts, 128 in / 128 out, concurrency 64 (output throughput);
#   2. 512-token prompts, 1 output token, concurrency 1 (prefill rate and TTFT);
#   3. 16-token prompts, 128 out, concurrency 1 (single-stream decode, TPOT).
# Usage: scripts/bench_targets.sh [OUT_DIR] [extra `tpuserve serve` flags, e.g. --dtype bfloat16]
# Results: OUT_DIR/{c64,prefill512,single}.json (vLLM's JSON keys) and the server log.
set -euo pipefail
out=${1:-bench-results}
shift || true
port=${TPUSERVE_BENCH_PORT:-8123}
bin=${TPUSERVE_BIN:-.venv/bin/tpuserve}
mkdir -p "$out"
"$bin" serve --port "$port" "$@" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
bench() {
  local name=$1
  shift
  "$bin" bench serve --port "$port" --dataset-name random --ignore-eos --disable-tqdm \
    --result-json "$out/$name.json" "$@" | tee "$out/$name.txt"
}
bench c64 --num-prompts 256 --random-input-len 128 --random-output-len 128 --max-concurrency 64
bench prefill512 --num-prompts 8 --random-input-len 512 --random-output-len 1 --max-concurrency 1
bench single --num-prompts 4 --random-input-len 16 --random-output-len 128 --max-concurrency 1
