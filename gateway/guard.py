"""Which requests the gateway answers: those addressed to its own names, and from a browser only
those its own page makes.

A page on any other site, open in the user's browser, can send requests to 127.0.0.1:7860 (a
cross-site form POST needs no CORS permission), and a DNS-rebinding page can also read the answers,
under a name of its own that it points at 127.0.0.1. So every request passes two checks:

- Host: the name in the Host header must be localhost, a loopback address, the address the
  connection came in on, the bind address, or one of `S2S_GATEWAY_ALLOWED_HOSTS` (the names a
  reverse proxy forwards). A rebinding page's requests carry its own name and are refused.
- Origin: browsers say where a request comes from, in `Sec-Fetch-Site` (every current browser,
  every request) and `Origin` (every POST, every WebSocket handshake). Both must say "this
  origin"; the one exception is a top-level navigation to the page (a link or a typed address).
  A request with neither header is not from a browser (curl, s2s-loadtest) and passes: a page
  cannot make a browser leave them out.

`refusal(request, ...)` is the whole check, and the middleware calls it for every route, the
`/v1/realtime` WebSocket handshake included (a GET with an Origin header). A route may also admit
browser origins the operator named (`S2S_GATEWAY_REALTIME_ALLOWED_ORIGINS` for the realtime
socket): another site's page the operator trusts, never a Host that is not the gateway's.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from yarl import URL

from services.runtime.net import is_loopback_host

SAFE_METHODS = ("GET", "HEAD")
WILDCARD_BINDS = ("", "0.0.0.0", "::")


def split_host(host: str) -> tuple[str, int | None] | None:
    """(lowercased name, port or None) of a Host header value; None when it is malformed.
    An IPv6 address comes without its brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip("."), int(port) if port else None


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def host_allowed(name: str, local_address: str | None, allowed: tuple[str, ...], bind_host: str) -> bool:
    """Whether a Host name is one of the gateway's own. An IP address is only its own when the
    connection came in on it; a name only when it is localhost or configured."""
    if is_loopback_host(name) or name in allowed:
        return True
    if bind_host not in WILDCARD_BINDS and name == bind_host.lower():
        return True
    if local_address:
        local = local_address.removeprefix("::ffff:")  # an IPv4 client on a dual-stack socket
        return _same_ip(name, local)
    return False


def origin_matches(origin: str, host: tuple[str, int | None]) -> bool:
    """Whether an Origin header names the same host and port as the Host header. A Host without
    a port uses the default port of the origin's scheme (a TLS proxy in front: https, 443)."""
    try:
        url = URL(origin)
    except ValueError:
        return False
    if url.scheme not in ("http", "https") or not url.host:
        return False
    name, port = host
    return url.host.lower().rstrip(".") == name and url.port == (port if port is not None else url.port)


def normal_origin(origin: str) -> str:
    """An Origin as settings list it: lowercased, no trailing slash."""
    return origin.strip().rstrip("/").lower()


def refusal(request: web.BaseRequest, allowed_hosts: tuple[str, ...] = (), bind_host: str = "",
            allowed_origins: tuple[str, ...] = ()) -> str | None:
    """Why the gateway must not answer this request (a message for a 403), or None.
    allowed_origins: browser origins admitted besides the gateway's own (normal_origin form)."""
    headers = request.headers
    raw_host = headers.get("Host")
    host = None
    if raw_host is not None:
        host = split_host(raw_host)
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        local = sockname[0] if isinstance(sockname, tuple) else None
        if host is None or not host_allowed(host[0], local, allowed_hosts, bind_host):
            return (f"Host {raw_host[:100]!r} is not a name of this server (set S2S_GATEWAY_ALLOWED_HOSTS "
                    "for a name a reverse proxy uses).")
    origin = headers.get("Origin")
    if origin is not None and normal_origin(origin) in allowed_origins:
        return None  # a page the operator let in, on a name of the gateway's own
    if origin is not None and (host is None or not origin_matches(origin, host)):
        return "Requests from other sites are not accepted."
    site = headers.get("Sec-Fetch-Site")
    if site is None or site == "same-origin":
        return None
    if request.method in SAFE_METHODS and (site == "none" or (
            request.path == "/" and headers.get("Sec-Fetch-Mode") == "navigate")):
        return None  # the user opening the page: typed, bookmarked, or a link from elsewhere
    return "Requests from other sites are not accepted."


def middleware(allowed_hosts: tuple[str, ...], bind_host: str,
               origins_by_path: dict[str, tuple[str, ...]] | None = None):
    """The check on every HTTP route: 403 JSON for a request the gateway must not answer.
    origins_by_path: the other browser origins a route admits (path -> origins)."""
    origins_by_path = origins_by_path or {}

    @web.middleware
    async def own_origin_only(request: web.Request, handler):
        reason = refusal(request, allowed_hosts, bind_host, origins_by_path.get(request.path, ()))
        if reason is not None:
            return web.json_response({"error": reason}, status=403)
        return await handler(request)

    return own_origin_only
