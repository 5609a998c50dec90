"""What one realtime socket may do (S2S_GATEWAY_REALTIME_*); which origins may open one is
gateway/guard.py's check."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.guard import normal_origin
from services.runtime.settings import Settings, read_dataclass, setting

KEY_PREFIX = "REALTIME_"


@dataclass
class RealtimeSettings:
    """S2S_GATEWAY_REALTIME_<field>, each declared once here."""

    max_message_bytes: int = setting(1024 * 1024, "largest `/v1/realtime` client event; larger ones get an "
                                     "`error` event (16 times this closes the socket)")
    # a message this large is refused by aiohttp itself, which closes the socket (1009): the bound
    # on what the gateway reads into memory at all (16 times max_message_bytes, at least this)
    hard_message_bytes: int = 16 * 1024 * 1024
    max_buffer_s: float = setting(60.0, "input audio a realtime session may buffer before a commit")
    max_sessions_per_client: int = setting(4, "realtime sockets at once from one address")
    idle_timeout_s: float = setting(300.0, "a realtime socket with no client event and nothing in progress for this "
                                    "long is closed")
    write_timeout_s: float = setting(10.0, "a realtime socket whose client stops reading for this long is closed "
                                     "(its response cancelled)")
    allowed_origins: tuple[str, ...] = setting((), "browser origins allowed to open `/v1/realtime` besides the "
                                               "page's own (comma-separated); clients without an `Origin` header "
                                               "are always allowed", items=normal_origin)

    @classmethod
    def from_env(cls, s: Settings | None = None) -> "RealtimeSettings":
        s = s or Settings.from_environment("gateway")
        read = read_dataclass(cls, s, KEY_PREFIX)
        return replace(read, hard_message_bytes=max(read.max_message_bytes * 16, cls.hard_message_bytes))
