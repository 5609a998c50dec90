"""Gateway settings from S2S_GATEWAY_* (environment over config/gateway.env)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.media import BYTES_PER_SECOND
from gateway.realtime.limits import RealtimeSettings
from gateway.stages import DOWN_AFTER_S, STUCK_AFTER_S
from services.runtime.endpoints import MAX_MESSAGE_BYTES
from services.runtime.errors import ConfigError
from services.runtime.settings import StageSettings


@dataclass
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 7860
    max_upload_bytes: int = 10 * 1024 * 1024
    max_audio_s: float = 60.0
    upload_ttl_s: float = 120.0  # uploads never streamed are dropped after this
    # how long a turn waits for a stage that is loading, or restarting after its process went away
    stage_wait_s: float = 90.0
    stage_timeout_s: float = 60.0  # longest silence from the stage a turn is waiting on
    queue_timeout_s: float = 300.0  # longest wait behind other turns' work on a busy stage
    stuck_after_s: float = STUCK_AFTER_S  # a stage busy this long without any result is stuck
    down_after_s: float = DOWN_AFTER_S  # a worker silent this long (no heartbeat) is down: hung
    max_turns_per_client: int = 16  # turns at once from one address (uploading, waiting, streaming)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)  # /v1/realtime's limits
    # Host names the gateway answers to besides localhost and the address a connection came in on
    # (a reverse proxy's public name): any other Host header is refused (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # Gateway-wide caps, whichever addresses the requests come from:
    max_uploads_in_flight: int = 32  # bodies being read or decoded (more: 503)
    max_pending_uploads: int = 256  # decoded and not yet streamed (more: 503)
    max_decodes: int = 2  # ffmpeg processes at once; the others wait their turn
    body_timeout_s: float = 30.0  # an upload body that takes longer to arrive gets 408
    decode_timeout_s: float = 20.0  # wall-clock limit of one decode
    decode_cpu_s: int = 10  # CPU seconds one ffmpeg may use (RLIMIT_CPU)
    decode_memory_mb: int = 768  # address space one ffmpeg may map (RLIMIT_AS; it maps ~300 MB of libraries)
    sse_write_timeout_s: float = 10.0  # a stream whose client stops reading for this long is closed
    max_conversations: int = 10000  # stored conversations (least recently used go first)
    max_conversations_per_client: int = 64  # stored conversations created from one address

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
        s = StageSettings.load("gateway")
        d = cls()
        return cls(
            host=s.get("HOST", d.host),
            port=s.get_int("PORT", d.port),
            max_upload_bytes=s.get_int("MAX_UPLOAD_BYTES", d.max_upload_bytes),
            max_audio_s=s.get_float("MAX_AUDIO_S", d.max_audio_s),
            upload_ttl_s=s.get_float("UPLOAD_TTL_S", d.upload_ttl_s),
            stage_wait_s=s.get_float("STAGE_WAIT_S", d.stage_wait_s),
            stage_timeout_s=s.get_float("STAGE_TIMEOUT_S", d.stage_timeout_s),
            queue_timeout_s=s.get_float("QUEUE_TIMEOUT_S", d.queue_timeout_s),
            stuck_after_s=s.get_float("STUCK_AFTER_S", d.stuck_after_s),
            down_after_s=s.get_float("DOWN_AFTER_S", d.down_after_s),
            max_turns_per_client=s.get_int("MAX_TURNS_PER_CLIENT", d.max_turns_per_client),
            allowed_hosts=tuple(h.strip().lower() for h in (s.get("ALLOWED_HOSTS") or "").split(",") if h.strip()),
            max_uploads_in_flight=s.get_int("MAX_UPLOADS_IN_FLIGHT", d.max_uploads_in_flight),
            max_pending_uploads=s.get_int("MAX_PENDING_UPLOADS", d.max_pending_uploads),
            max_decodes=s.get_int("MAX_DECODES", d.max_decodes),
            body_timeout_s=s.get_float("BODY_TIMEOUT_S", d.body_timeout_s),
            decode_timeout_s=s.get_float("DECODE_TIMEOUT_S", d.decode_timeout_s),
            decode_cpu_s=s.get_int("DECODE_CPU_S", d.decode_cpu_s),
            decode_memory_mb=s.get_int("DECODE_MEMORY_MB", d.decode_memory_mb),
            sse_write_timeout_s=s.get_float("SSE_WRITE_TIMEOUT_S", d.sse_write_timeout_s),
            max_conversations=s.get_int("MAX_CONVERSATIONS", d.max_conversations),
            max_conversations_per_client=s.get_int("MAX_CONVERSATIONS_PER_CLIENT", d.max_conversations_per_client),
            realtime=RealtimeSettings.from_env(s),
        )
