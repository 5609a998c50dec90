#!/usr/bin/env bash
# The benchmark of docs/BENCHMARKS.md: this product side by side with the original app's flow.
#   bash scripts/bench.sh [OUT_DIR]        (or: make bench)
# Starts the product with scripts/run.sh (left running) and the original flow (s2s-original, one
# process, one global lock, stopped at the end) on the same models, speaks eight 2-5 s questions
# with espeak-ng, then runs s2s-loadtest at concurrency 1 and 4 against both, level by level, with
# a new conversation per turn. Results: OUT_DIR/comparison.json, OUT_DIR/{product,original}/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-loadtest-results/bench}"
LEVELS="${S2S_BENCH_LEVELS:-1,4}"
TURNS="${S2S_BENCH_TURNS:-12}"
ORIGINAL_PORT="${S2S_BENCH_ORIGINAL_PORT:-7861}"
QUESTIONS="$(mktemp -d)"
ORIGINAL_PID=""
cleanup() {
    [ -n "$ORIGINAL_PID" ] && kill "$ORIGINAL_PID" 2>/dev/null && wait "$ORIGINAL_PID" 2>/dev/null
    rm -rf "$QUESTIONS"
}
trap cleanup EXIT
bash scripts/speak_questions.sh "$QUESTIONS"
bash scripts/run.sh
mkdir -p var/log
echo "bench: loading the original flow on port $ORIGINAL_PORT (log: var/log/original-flow.log)..."
.venv/bin/s2s-original --port "$ORIGINAL_PORT" >var/log/original-flow.log 2>&1 &
ORIGINAL_PID=$!
for _ in $(seq 1 450); do
    if .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://127.0.0.1:$ORIGINAL_PORT/healthz" >/dev/null 2>&1; then
        break
    fi
    kill -0 "$ORIGINAL_PID" 2>/dev/null || { tail -n 20 var/log/original-flow.log; exit 1; }
    sleep 2
done
.venv/bin/s2s-loadtest --sweep "$LEVELS" --turns "$TURNS" --fresh --max-seconds 5400 --turn-timeout 300 \
    --compare "http://127.0.0.1:$ORIGINAL_PORT" --out "$OUT" "$QUESTIONS"
