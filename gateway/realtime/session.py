"""One realtime session's settings: what the client asked for in session.update, reduced to what
s2s really does. session.created / session.updated show exactly this, never a wish."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.listening import parse_turn_detection
from gateway.realtime.protocol import PCM_FORMAT, ClientError
from proto import MAX_NEW_TOKENS
from services.personas import DEFAULT_PERSONA, PERSONAS, VOICES

MAX_OUTPUT_TOKENS = MAX_NEW_TOKENS  # the LLM stage's own cap on a reply (S2S_LLM_MAX_NEW_TOKENS default)


@dataclass
class SessionConfig:
    id: str
    persona: str = DEFAULT_PERSONA
    voice: str = PERSONAS[DEFAULT_PERSONA].voice
    instructions: str | None = None  # None: the persona's prompt
    # what the client asked for (None: push-to-talk); what took effect is the detector's `effective`
    turn_detection: dict | None = None
    turn_detection_effective: dict | None = None
    transcription: dict | None = field(default_factory=lambda: {"model": "s2s-asr"})
    max_output_tokens: int = MAX_OUTPUT_TOKENS

    def as_dict(self) -> dict:
        return {
            "type": "realtime", "object": "realtime.session", "id": self.id, "model": "s2s",
            "output_modalities": ["audio"],
            "instructions": self.instructions if self.instructions is not None else PERSONAS[self.persona].system,
            "persona": self.persona,  # s2s extension: the persona whose prompt and voice apply
            "audio": {
                "input": {"format": PCM_FORMAT, "transcription": self.transcription,
                          "turn_detection": self.turn_detection_effective, "noise_reduction": None},
                "output": {"format": PCM_FORMAT, "voice": self.voice, "speed": 1.0},
            },
            "tools": [], "tool_choice": "auto", "max_output_tokens": self.max_output_tokens,
            "tracing": None, "truncation": "auto", "prompt": None, "include": None,
        }

    def update(self, session: object) -> bool:
        """Apply a session.update's `session`, all or nothing (ClientError names the bad field).
        Well-formed fields s2s does not do (tools, text output, other formats...) are left out
        and session.updated shows what holds. True when turn detection was given."""
        if not isinstance(session, dict):
            raise ClientError("`session` must be an object.", param="session")
        if session.get("type", "realtime") != "realtime":
            raise ClientError("s2s serves `realtime` sessions only.", param="session.type")
        new = dict(persona=self.persona, voice=self.voice, instructions=self.instructions,
                   turn_detection=self.turn_detection, transcription=self.transcription,
                   max_output_tokens=self.max_output_tokens)
        persona = session.get("persona")
        if persona is not None:
            if persona not in PERSONAS:
                raise ClientError(f"Unknown persona {persona!r}; s2s has {', '.join(PERSONAS)}.",
                                  param="session.persona")
            new.update(persona=persona, voice=PERSONAS[persona].voice)
            if "instructions" not in session:
                new["instructions"] = None  # a persona brings its own prompt
        if "instructions" in session:
            instructions = session["instructions"]
            if instructions is not None and not isinstance(instructions, str):
                raise ClientError("`instructions` must be a string.", param="session.instructions")
            new["instructions"] = instructions.strip() or None if instructions else None
        if "max_output_tokens" in session:
            tokens = session["max_output_tokens"]
            if tokens == "inf":
                tokens = MAX_OUTPUT_TOKENS
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
                raise ClientError("`max_output_tokens` must be a positive integer or \"inf\".",
                                  param="session.max_output_tokens")
            new["max_output_tokens"] = min(tokens, MAX_OUTPUT_TOKENS)
        audio = session.get("audio") or {}
        if not isinstance(audio, dict):
            raise ClientError("`audio` must be an object.", param="session.audio")
        given_detection = False
        audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
        if not isinstance(audio_in, dict) or not isinstance(audio_out, dict):
            raise ClientError("`audio.input` and `audio.output` must be objects.", param="session.audio")
        for where, config in (("input", audio_in), ("output", audio_out)):
            fmt = config.get("format")
            if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "audio/pcm") != "audio/pcm"
                                    or fmt.get("rate", 24000) != 24000):
                raise ClientError("s2s speaks audio/pcm at 24000 Hz only.", code="unsupported_audio_format",
                                  param=f"session.audio.{where}.format")
        voice = audio_out.get("voice")
        if voice is not None:
            if voice not in VOICES:
                raise ClientError(f"Unknown voice {voice!r}; the TTS stage has {', '.join(VOICES)}.",
                                  param="session.audio.output.voice")
            new["voice"] = voice
        if "turn_detection" in audio_in:
            detection = audio_in["turn_detection"]
            if detection is not None:
                try:
                    parse_turn_detection(detection)
                except ValueError as exc:
                    raise ClientError(f"{exc}.", param="session.audio.input.turn_detection") from None
            new["turn_detection"], given_detection = detection, True
        if "transcription" in audio_in:
            transcription = audio_in["transcription"]
            if transcription is not None and not isinstance(transcription, dict):
                raise ClientError("`transcription` must be an object or null.",
                                  param="session.audio.input.transcription")
            # s2s always recognises speech (the LLM reads text); this only says whether the
            # transcript events go out. Model and language are the ASR stage's own.
            new["transcription"] = {"model": "s2s-asr"} if transcription is not None else None
        for key, value in new.items():
            setattr(self, key, value)
        return given_detection
