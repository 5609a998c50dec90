#!/usr/bin/env bash
# End-to-end latency of the running product, measured with s2s-loadtest on spoken questions.
#   bash scripts/bench_pipeline.sh [OUT_DIR]
# Starts the product with scripts/run.sh (a no-op wait if it already runs; it is left running),
# speaks six 2-3 s questions with espeak-ng, then runs concurrency 1 and a 1,2,4 sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-loadtest-results/pipeline}"
QUESTIONS="$(mktemp -d)"
trap 'rm -rf "$QUESTIONS"' EXIT
n=0
while read -r question; do
    n=$((n + 1))
    espeak-ng -v en-us -s 140 -w "$QUESTIONS/q$n.wav" "$question"
done <<'LIST'
What is the capital of France?
How far away is the moon?
Why do cats purr when they are happy?
Can you tell me a fun fact about elephants?
What should I cook for dinner tonight?
How do airplanes stay up in the sky?
LIST
bash scripts/run.sh
.venv/bin/s2s-loadtest --turns 12 --concurrency 1 --out "$OUT/c1" "$QUESTIONS"
.venv/bin/s2s-loadtest --sweep 1,2,4 --turns 8 --max-seconds 1500 --out "$OUT/sweep" "$QUESTIONS"
