"""What one realtime socket may do (S2S_GATEWAY_REALTIME_*); which origins may open one is
gateway/guard.py's check."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.guard import normal_origin
from services.runtime.settings import StageSettings


@dataclass
class RealtimeSettings:
    max_message_bytes: int = 1024 * 1024  # one client event; larger ones get an error event
    # a message this large is refused by aiohttp itself, which closes the socket (1009): the bound
    # on what the gateway reads into memory at all
    hard_message_bytes: int = 16 * 1024 * 1024
    max_buffer_s: float = 60.0  # audio buffered and not yet committed (and one utterance's length)
    max_sessions_per_client: int = 4  # sockets at once from one address
    idle_timeout_s: float = 300.0  # no client event and nothing in progress: the socket is closed
    # browser origins allowed besides the page's own (comma-separated); no Origin header: allowed
    allowed_origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, s: StageSettings | None = None) -> "RealtimeSettings":
        s = s or StageSettings.load("gateway")
        d = cls()
        origins = tuple(normal_origin(o) for o in s.get("REALTIME_ALLOWED_ORIGINS", "").split(",") if o.strip())
        return cls(
            max_message_bytes=s.get_int("REALTIME_MAX_MESSAGE_BYTES", d.max_message_bytes),
            hard_message_bytes=max(s.get_int("REALTIME_MAX_MESSAGE_BYTES", d.max_message_bytes) * 16,
                                   d.hard_message_bytes),
            max_buffer_s=s.get_float("REALTIME_MAX_BUFFER_S", d.max_buffer_s),
            max_sessions_per_client=s.get_int("REALTIME_MAX_SESSIONS_PER_CLIENT", d.max_sessions_per_client),
            idle_timeout_s=s.get_float("REALTIME_IDLE_TIMEOUT_S", d.idle_timeout_s),
            allowed_origins=origins,
        )
