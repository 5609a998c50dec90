#!/usr/bin/env bash
# The realtime benchmark of docs/BENCHMARKS.md: conversations over /v1/realtime at real-time pace.
#   bash scripts/bench_realtime.sh [OUT_DIR]      (the product must be running: scripts/run.sh)
# The eight benchmark questions spoken by a voice the tests do not use (espeak-ng en-gb, 150 wpm),
# then s2s-loadtest --realtime: server_vad with 500 ms of silence and semantic_vad at
# concurrency 1, server_vad with 4 sessions at once, and barge-in at concurrency 1.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-loadtest-results/realtime}"
URL="${S2S_BENCH_URL:-http://127.0.0.1:${S2S_GATEWAY_PORT:-7860}}"
TURNS="${S2S_BENCH_TURNS:-8}"
QUESTIONS="$(mktemp -d)"
trap 'rm -rf "$QUESTIONS"' EXIT
S2S_SPEAK_VOICE=en-gb S2S_SPEAK_RATE=150 bash scripts/speak_questions.sh "$QUESTIONS"
LT=(.venv/bin/s2s-loadtest --url "$URL" --realtime --turn-timeout 300 --max-seconds 3600 --quiet)
"${LT[@]}" --turns "$TURNS" --turn-detection server_vad --silence-ms 500 --out "$OUT/server_vad-c1" "$QUESTIONS"
"${LT[@]}" --turns "$TURNS" --turn-detection semantic_vad --out "$OUT/semantic_vad-c1" "$QUESTIONS"
"${LT[@]}" --turns $(( (TURNS + 3) / 4 )) --concurrency 4 --turn-detection server_vad --silence-ms 500 \
    --out "$OUT/server_vad-c4" "$QUESTIONS"
"${LT[@]}" --turns "$TURNS" --barge-in --turn-detection server_vad --silence-ms 500 --out "$OUT/barge-in-c1" \
    "$QUESTIONS"
