"""s2s-gateway: serve the page and the API, bind the bus."""

from __future__ import annotations

import ipaddress
import logging
import sys

from aiohttp import web

from gateway.app import create_app
from gateway.settings import GatewaySettings
from services.runtime.errors import EXIT_CONFIG, ConfigError

log = logging.getLogger("s2s.gateway")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = GatewaySettings.from_env()
    except ConfigError as exc:
        log.error("gateway cannot start: %s", exc)
        sys.exit(EXIT_CONFIG)
    if not _is_loopback(settings.host):
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
