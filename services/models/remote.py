"""The OpenAI-compatible LLM server's settings, declared once, and its address (S2S_LLM_BASE_URL), parsed and checked.

Shared by the planner (services/models/resolve.py, which plans every stage for s2s-models
prepare) and the `openai-compatible` backend (services/llm/openai_compatible.py), so that the
planner needs nothing from the LLM stage.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from services.runtime.errors import ConfigError
from services.runtime.settings import Setting

NAME = "openai-compatible"  # the backend's name in S2S_LLM_BACKEND
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
# This backend's settings, S2S_LLM_<KEY> (its model is S2S_LLM_MODEL, the name the server serves it under).
BASE_URL = Setting("BASE_URL", str, DEFAULT_BASE_URL, "openai-compatible: the server's API root, ending in /v1")
API_KEY_FILE = Setting("API_KEY_FILE", str, None, "openai-compatible: a file (mode 0600, like a CURVE secret key) "
                       "holding the server's API key, sent as a bearer token; the key itself is never logged")
TEMPERATURE = Setting("TEMPERATURE", float, 0.0, "openai-compatible: 0 = greedy, as the transformers backend "
                      "decodes; above 0 the server samples")
CONNECT_TIMEOUT_S = Setting("CONNECT_TIMEOUT_S", float, 5.0, "openai-compatible: seconds to connect")
READ_TIMEOUT_S = Setting("READ_TIMEOUT_S", float, 60.0, "openai-compatible: the longest silence within a reply (its "
                         "first piece included) before that turn ends with an error")
SERVER_WAIT_S = Setting("SERVER_WAIT_S", float, 0.0, "openai-compatible: seconds the stage waits at start for a "
                        "server that is down or still loading its model (503)")
SETTINGS = (BASE_URL, API_KEY_FILE, TEMPERATURE, CONNECT_TIMEOUT_S, READ_TIMEOUT_S, SERVER_WAIT_S)


def parse_base_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of S2S_LLM_BASE_URL, or a ConfigError saying what is wrong."""
    parts = urlsplit((url or "").strip())
    example = f"such as {DEFAULT_BASE_URL}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"S2S_LLM_BASE_URL must be an http:// or https:// URL {example}, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("S2S_LLM_BASE_URL must not carry credentials: put the API key in a file "
                          "named by S2S_LLM_API_KEY_FILE")
    if parts.query or parts.fragment:
        raise ConfigError(f"S2S_LLM_BASE_URL must be the API root {example}, without ?query or #fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"S2S_LLM_BASE_URL has an invalid port: {url!r}") from None
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def base_url_of(url: str) -> str:
    """The API root as requests use it: scheme, host and port as given, no trailing slash."""
    scheme, _, _, path = parse_base_url(url)
    return f"{scheme}://{urlsplit(url.strip()).netloc}{path}"
