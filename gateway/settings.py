"""Gateway settings from S2S_GATEWAY_* (environment over config/gateway.env)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.realtime.limits import RealtimeSettings
from gateway.stages import STUCK_AFTER_S
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
    max_turns_per_client: int = 16  # turns at once from one address (uploading, waiting, streaming)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)  # /v1/realtime's limits

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
            max_turns_per_client=s.get_int("MAX_TURNS_PER_CLIENT", d.max_turns_per_client),
            realtime=RealtimeSettings.from_env(s),
        )
