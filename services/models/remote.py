"""The OpenAI-compatible LLM server's address (S2S_LLM_BASE_URL), parsed and checked.

Shared by the planner (services/models/resolve.py, which plans every stage for s2s-models
prepare) and the `openai-compatible` backend (services/llm/openai_compatible.py), so that the
planner needs nothing from the LLM stage.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from services.runtime.errors import ConfigError

NAME = "openai-compatible"  # the backend's name in S2S_LLM_BACKEND
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


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
