#!/usr/bin/env bash
# docs/BENCHMARKS.md "Two TTS workers": the throughput of two TTS workers against one, in one run
# on the same machine, models and questions.
#   bash scripts/bench_workers.sh [OUT_DIR]
# Starts the product (scripts/run.sh; left running), runs s2s-loadtest at concurrency C (default 4)
# with one TTS worker, switches to two (scripts/workers.py tts 2: that stage alone restarts), runs
# the same turns again, and puts the TTS stage back to one worker. Results: OUT_DIR/tts1, OUT_DIR/tts2.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-loadtest-results/workers}"
TURNS="${S2S_BENCH_TURNS:-12}"
CONCURRENCY="${S2S_BENCH_CONCURRENCY:-4}"
QUESTIONS="$(mktemp -d)"
cleanup() {
    .venv/bin/python scripts/workers.py tts 1 >/dev/null || true
    rm -rf "$QUESTIONS"
}
trap cleanup EXIT
bash scripts/speak_questions.sh "$QUESTIONS"
bash scripts/run.sh
for workers in 1 2; do
    .venv/bin/python scripts/workers.py tts "$workers"
    .venv/bin/python - "$workers" "${S2S_GATEWAY_PORT:-7860}" <<'PY'   # until that many TTS workers are ready
import json, sys, time, urllib.request
want, port, deadline = int(sys.argv[1]), sys.argv[2], time.monotonic() + 600
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stages", timeout=5) as resp:
            stages = json.load(resp)["stages"]
        ready = [w for w in stages["tts"]["workers"] if w["state"] in ("ready", "busy")]
        if len(ready) == want and all(s["state"] in ("ready", "busy") for s in stages.values()):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(2)
sys.exit(f"{want} TTS worker(s) not ready after 10 min")
PY
    .venv/bin/s2s-loadtest --url "http://127.0.0.1:${S2S_GATEWAY_PORT:-7860}" --concurrency "$CONCURRENCY" --turns "$TURNS" --fresh --max-seconds 3600 \
        --turn-timeout 300 --quiet --out "$OUT/tts$workers" "$QUESTIONS"
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
runs = {n: json.loads((Path(sys.argv[1]) / f"tts{n}" / "report.json").read_text())["runs"][0] for n in (1, 2)}
for n, r in runs.items():
    print(f"{n} TTS worker(s): {r['ok_turns']}/{r['turns']} ok, {r['turns_per_minute']} turns/min, "
          f"TTFA p50 {r['latency']['ttfa_s']['p50']} s, done p50 {r['latency']['done_s']['p50']} s")
print(f"throughput ratio, 2 workers / 1: {runs[2]['turns_per_minute'] / runs[1]['turns_per_minute']:.2f}x")
PY
