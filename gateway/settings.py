"""Gateway settings: S2S_GATEWAY_* from the environment (supervisord.conf's `environment=`, or the
shell). The gateway is no stage and has no env file. Each setting is declared once, below, with
its default and its doc (the README's settings table is written from them: scripts/settings_docs.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.media import BYTES_PER_SECOND
from gateway.realtime.limits import RealtimeSettings
from gateway.stages import DOWN_AFTER_S, STUCK_AFTER_S
from services.runtime.endpoints import MAX_MESSAGE_BYTES
from services.runtime.errors import ConfigError
from services.runtime.settings import Settings, read_dataclass, setting

SCOPE = "gateway"


@dataclass
class GatewaySettings:
    host: str = setting("127.0.0.1", "bind address; anything but loopback logs a warning")
    port: int = setting(7860, "HTTP port")
    max_upload_bytes: int = setting(10 * 1024 * 1024, "larger uploads get 413")
    max_audio_s: float = setting(60.0, "longer recordings get 413 (at most 1046: a recording goes to the ASR in one "
                                 "bus message of at most 32 MiB)")
    upload_ttl_s: float = setting(120.0, "uploads never streamed are dropped")
    stage_wait_s: float = setting(90.0, "how long a turn waits for a stage that is loading, or restarting after its "
                                  "process went away (then its lost requests are sent again, once)")
    stage_timeout_s: float = setting(60.0, "longest silence from the stage a turn waits on, unless that stage is "
                                     "still answering other turns")
    queue_timeout_s: float = setting(300.0, "longest wait behind other turns on a busy stage")
    stuck_after_s: float = setting(STUCK_AFTER_S, "a stage busy this long without any result is `stuck`: its turns "
                                   "end with an error, `/readyz` says so")
    down_after_s: float = setting(DOWN_AFTER_S, "a worker silent this long (three missed heartbeats) while its "
                                  "process is still there is `down` (hung): the turns waiting on it end with an "
                                  "error, or go to another worker of its stage")
    max_turns_per_client: int = setting(16, "turns at once from one address (decoding, waiting to stream, "
                                        "streaming); more get 429")
    allowed_hosts: tuple[str, ...] = setting((), "comma-separated host names the gateway answers to besides "
                                             "localhost, loopback addresses, the address a connection came in on "
                                             "and `S2S_GATEWAY_HOST` (a reverse proxy's public name); any other "
                                             "Host gets 403 (DNS rebinding)", items=str.lower)
    # Gateway-wide caps, whichever addresses the requests come from:
    max_uploads_in_flight: int = setting(32, "upload bodies being read or decoded, all clients together; more get "
                                         "503 with `Retry-After`")
    max_pending_uploads: int = setting(256, "uploads decoded and not yet streamed, all clients together; more get "
                                       "503")
    max_decodes: int = setting(2, "ffmpeg processes at once; other decodes wait their turn")
    body_timeout_s: float = setting(30.0, "an upload body that takes longer to arrive gets 408 and its connection "
                                    "is closed")
    decode_timeout_s: float = setting(20.0, "wall-clock limit of one decode")
    decode_cpu_s: int = setting(10, "CPU seconds one ffmpeg may use (RLIMIT_CPU)")
    decode_memory_mb: int = setting(768, "address space one ffmpeg may map (RLIMIT_AS; its libraries alone map "
                                    "about 300 MB)")
    sse_write_timeout_s: float = setting(10.0, "a stream whose client stops reading for this long is closed and "
                                         "its turn released")
    max_conversations: int = setting(10000, "conversations kept (the least recently used go first)")
    max_conversations_per_client: int = setting(64, "conversations one address may hold; past it, that address's "
                                                "own least recently used go")
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)  # /v1/realtime's limits

    # caps that must let at least one through (0 would refuse, or hang, every upload)
    AT_LEAST_ONE = ("max_turns_per_client", "max_uploads_in_flight", "max_pending_uploads", "max_decodes",
                    "decode_cpu_s", "max_conversations", "max_conversations_per_client")

    def __post_init__(self) -> None:
        for name in self.AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ConfigError(f"S2S_GATEWAY_{name.upper()} must be at least 1, got {getattr(self, name)}")
        # A recording goes to the ASR in one bus message; a worker drops a connection that carries
        # a larger one than the bus allows, and does not reconnect.
        if self.max_audio_s * BYTES_PER_SECOND + 65536 > MAX_MESSAGE_BYTES:
            longest = (MAX_MESSAGE_BYTES - 65536) // BYTES_PER_SECOND
            raise ConfigError(f"S2S_GATEWAY_MAX_AUDIO_S must be at most {longest} (one bus message), "
                              f"got {self.max_audio_s:g}")

    @classmethod
    def from_env(cls) -> "GatewaySettings":
        s = Settings.from_environment(SCOPE)
        return read_dataclass(cls, s, realtime=RealtimeSettings.from_env(s))
