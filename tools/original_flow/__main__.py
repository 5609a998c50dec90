"""s2s-original: the original app's flow as a server, for side-by-side benchmarks with s2s-loadtest.

    s2s-original [--host 127.0.0.1] [--port 7861]

Loads the same three models the stages would (S2S_ASR_*, S2S_LLM_*, S2S_TTS_* and config/*.env,
with the LLM's chunking forced to the original's), then serves POST /upload and GET /stream/<id>
like the gateway, running one turn at a time behind one global lock.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from aiohttp import web

from gateway.settings import GatewaySettings
from tools.original_flow.app import create_app
from tools.original_flow.pipeline import OriginalPipeline
from services.runtime.errors import EXIT_CONFIG, ConfigError

log = logging.getLogger("s2s.original")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2s-original", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7861)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.monotonic()
    pipeline = OriginalPipeline.from_settings()
    try:
        loaded = pipeline.load()
    except ConfigError as exc:
        log.error("cannot load the models: %s", exc)
        return EXIT_CONFIG
    for stage, what in loaded.items():
        log.info("%s: %s", stage, what)
    log.info("original flow ready in %.1f s on http://%s:%d", time.monotonic() - started, args.host, args.port)
    settings = GatewaySettings(host=args.host, port=args.port)
    web.run_app(create_app(pipeline, settings), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
