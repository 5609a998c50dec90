"""s2s-gateway: serve the page and the API, bind the bus."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from gateway.app import create_app
from gateway.settings import GatewaySettings
from services.runtime.errors import EXIT_CONFIG, ConfigError
from services.runtime.net import is_loopback_host
from services.runtime.logs import configure_logging

log = logging.getLogger("s2s.gateway")


def run() -> None:
    argparse.ArgumentParser(prog="s2s-gateway", description="Serve the page and the API, and bind the bus. "
                            "Settings come from S2S_GATEWAY_* and S2S_* environment variables (README, "
                            "Settings).").parse_args()
    configure_logging("gateway")  # JSON lines on stderr (S2S_LOG_FORMAT=text: plain)
    try:
        settings = GatewaySettings.from_env()
    except ConfigError as exc:
        log.error("gateway cannot start: %s", exc)
        sys.exit(EXIT_CONFIG)
    if not is_loopback_host(settings.host):
        log.warning("binding %s: the assistant is reachable from the network, without authentication",
                    settings.host)
    log.info("s2s is at http://%s:%d/", settings.host, settings.port)
    try:
        web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None,
                    shutdown_timeout=5)
    except ConfigError as exc:  # raised at startup, e.g. by Bus.start: tcp endpoints without CURVE keys
        log.error("gateway cannot start: %s", exc)
        sys.exit(EXIT_CONFIG)


if __name__ == "__main__":
    run()
