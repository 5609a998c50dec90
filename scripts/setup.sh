#!/usr/bin/env bash
# One-time (and idempotent) setup: system packages, the virtualenv, the project.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
wanted=(ffmpeg espeak-ng sox)
# --test (scripts/test.sh): chromium too, which the browser tests (tests/test_browser.py) drive
[ "${1:-}" = "--test" ] && wanted+=(chromium)
for cmd in "${wanted[@]}"; do command -v "$cmd" >/dev/null || need+=("$cmd"); done
if [ ${#need[@]} -gt 0 ]; then
    echo "s2s setup: installing system packages: ${need[*]}"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
PIP=".venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The pinned CPU build first: a bare torch requirement would pull a multi-GB CUDA build.
$PIP install -q torch==2.13.0
# openai-whisper without its triton dependency (GPU-only, about 1 GB); its other
# dependencies are listed in pyproject.toml.
$PIP install -q --no-deps openai-whisper==20250625
$PIP install -q -e '.[test]'
PIP="$PIP" bash scripts/install-models-deps.sh
echo "s2s setup: done"
