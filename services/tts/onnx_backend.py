"""Kokoro-82M on onnxruntime: the exported graph (int8 or fp32) instead of the PyTorch model.

The model directory holds what the exported model needs and nothing from the hub:

    kokoro-v1.0.int8.onnx   inputs tokens int64 [1, T], style float32 [1, 256], speed float32 [1];
                            output audio float32 [samples] at 24 kHz
    vocab.json              phoneme -> token id ({"vocab": {...}} like Kokoro's config, or the bare map)
    voices/<name>.bin       raw float32 voice packs, [510, 1, 256]

Text -> phonemes is kokoro's own KPipeline without a model (misaki's English G2P and kokoro's
chunking into pieces of at most 510 phonemes). misaki needs the spaCy package en_core_web_sm; when
it is missing, espeak-ng phonemizes instead (worse pronunciation) and this module chunks the text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from services.runtime.backend import Backend
from services.runtime.errors import ConfigError

log = logging.getLogger("s2s.tts.onnx")

MODEL_FILE = "kokoro-v1.0.int8.onnx"
CONTEXT = 510  # phonemes per model call: 512 positions with the two boundary tokens
STYLE_DIM = 256
SPACY_MODEL = "en_core_web_sm"  # what misaki's English G2P loads (trf=False)
WARMUP_TEXT = "Hello, this is a short warm-up."
WARMUP_VOICE = "af_heart"
_VOICE_NAME = re.compile(r"[A-Za-z0-9_-]+")
# Input names used by the known Kokoro exports; the first is the one of kokoro-v1.0.int8.onnx.
_INPUT_NAMES = {"tokens": ("tokens", "input_ids"), "style": ("style", "ref_s"), "speed": ("speed",)}
# Where a too-long espeak phoneme string may be cut, best first (as KPipeline.waterfall_last).
_WATERFALL = ("!.?…", ":;", ",—")
# EspeakG2P's English IPA -> the symbols misaki writes and Kokoro was trained on (the mappings of
# misaki.espeak.EspeakFallback, which misaki applies to out-of-vocabulary English words).
_ESPEAK_COMMON = (("ɚ", "əɹ"), ("r", "ɹ"), ("x", "k"), ("ç", "k"), ("ɐ", "ə"), ("ɬ", "l"), ("\u0303", ""),
                  ("ɾ", "T"), ("ʔ", "t"))
_ESPEAK_TO_MISAKI = {
    "a": (("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɪə", "iə"), ("ː", "")) + _ESPEAK_COMMON,
    "b": (("eə", "ɛː"), ("iə", "ɪə")) + _ESPEAK_COMMON,
}


def _spacy_model_installed() -> bool:
    """True when misaki can load en_core_web_sm without trying to download it."""
    try:
        import spacy.util
    except ImportError:
        return False
    try:
        return bool(spacy.util.is_package(SPACY_MODEL))
    except Exception:
        return False


def split_phonemes(ps: str, limit: int = CONTEXT) -> list[str]:
    """Cut a phoneme string into pieces of at most `limit` characters: after sentence punctuation if
    possible, then after clause punctuation, then at a space, else hard at `limit`."""
    pieces = []
    ps = ps.strip()
    while len(ps) > limit:
        head = ps[: limit + 1]  # a cut right after position `limit` still fits
        cut = 0
        for marks in _WATERFALL:
            cut = max((i + 1 for i, c in enumerate(head[:limit]) if c in marks), default=0)
            if cut:
                break
        if not cut:
            cut = head.rfind(" ")
        if cut <= 0:
            cut = limit
        pieces.append(ps[:cut].strip())
        ps = ps[cut:].strip()
    if ps:
        pieces.append(ps)
    return [p for p in pieces if p]


class KokoroOnnxBackend(Backend):
    """Kokoro-82M exported to ONNX, run by onnxruntime; float32 mono 24 kHz, one array per chunk."""

    name = "kokoro-onnx"
    sample_rate = 24000

    # Sentences may be spoken on several threads at once: onnxruntime sessions run concurrently,
    # and the G2P (spaCy, misaki), which is not known to be thread-safe, runs under a lock.
    thread_safe = True

    def __init__(self, model_dir: str, device: str = "cpu", lang_code: str = "a", threads: int = 0,
                 first_threads: int | None = None):
        self.model_dir = model_dir
        self.requested_device = device
        self.device = device
        self.lang_code = lang_code
        self.threads = int(threads or 0)
        # The first sentence of a turn is on the path to the first audio: it may use more threads
        # (a second session) than the rest, which run beside the LLM writing the next sentences.
        # None: the same as threads; 0: onnxruntime's default (one per core).
        self.first_threads = None if first_threads is None else int(first_threads)
        self.model_path = os.path.join(model_dir, MODEL_FILE) if model_dir else MODEL_FILE
        self.model_label = self.model_path
        self.g2p: str | None = None  # "misaki" or "espeak" once loaded
        self.load_s: float | None = None
        self.warmup_s: float | None = None
        self._session = None
        self._first_session = None
        self._g2p_lock = threading.Lock()
        self._inputs: dict[str, str] = {}
        self._output: str | None = None
        self._vocab: dict[str, int] = {}
        self._voices_dir: Path | None = None
        self._voices: dict[str, np.ndarray] = {}
        self._pipeline = None  # kokoro KPipeline(model=False)
        self._espeak = None  # misaki EspeakG2P when spaCy's model is missing
        self._espeak_map: tuple = ()

    # --- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        started = time.monotonic()
        if not self.model_dir:
            raise ConfigError("the kokoro-onnx backend needs a model directory (S2S_TTS_MODEL_DIR)")
        model_dir = Path(self.model_dir)
        if not model_dir.is_dir():
            raise ConfigError(f"Kokoro ONNX model directory {model_dir} does not exist")
        model_path = model_dir / MODEL_FILE
        if not model_path.is_file():
            raise ConfigError(f"Kokoro ONNX model file {model_path} is missing")
        self._voices_dir = model_dir / "voices"
        if not self._voices_dir.is_dir():
            raise ConfigError(f"Kokoro voices directory {self._voices_dir} is missing (voices/<name>.bin)")
        self._vocab = self._load_vocab(model_dir / "vocab.json")
        self._session = self._load_session(model_path, self.threads)
        if self.first_threads is not None and self.first_threads != self.threads:
            self._first_session = self._load_session(model_path, self.first_threads)
        self._load_g2p()
        self.load_s = time.monotonic() - started
        self._warm_up()
        log.info("kokoro-onnx loaded %s on %s (g2p %s, threads %s, first sentence %s) in %.2f s, warm-up %.2f s",
                 model_path, self.device, self.g2p, self.threads or "default",
                 "same" if self.first_threads is None else (self.first_threads or "default"),
                 self.load_s, self.warmup_s)

    @staticmethod
    def _load_vocab(path: Path) -> dict[str, int]:
        if not path.is_file():
            raise ConfigError(f"Kokoro vocabulary {path} is missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("vocab"), dict):
                data = data["vocab"]  # Kokoro's config.json layout
            vocab = {str(k): int(v) for k, v in data.items()}
        except (ValueError, TypeError, AttributeError) as e:
            raise ConfigError(f"Kokoro vocabulary {path} is not a JSON map of phoneme -> id: {e}") from None
        if not vocab:
            raise ConfigError(f"Kokoro vocabulary {path} is empty")
        return vocab

    def _providers(self, ort) -> list:
        req = (self.requested_device or "cpu").strip().lower()
        available = ort.get_available_providers()
        if req == "auto":
            req = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if req == "cpu":
            self.device = "cpu"
            return ["CPUExecutionProvider"]
        m = re.fullmatch(r"cuda(?::(\d+))?", req)
        if not m:
            raise ConfigError(f"unknown device {self.requested_device!r} for kokoro-onnx (use auto, cpu, cuda or cuda:N)")
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(f"device {self.requested_device!r} requested but this onnxruntime has no CUDA provider "
                              f"(available: {', '.join(available)}); install onnxruntime-gpu or use cpu")
        self.device = req
        return [("CUDAExecutionProvider", {"device_id": int(m.group(1) or 0)}), "CPUExecutionProvider"]

    def _load_session(self, model_path: Path, threads: int):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(f"onnxruntime is not installed ({e})") from None
        providers = self._providers(ort)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: int8 graphs log harmless warnings
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        except Exception as e:
            raise ConfigError(f"cannot load Kokoro ONNX model {model_path}: {e}") from None
        if self.device.startswith("cuda") and "CUDAExecutionProvider" not in session.get_providers():
            raise ConfigError(f"device {self.requested_device!r} requested but onnxruntime could not start "
                              f"its CUDA provider for {model_path}")
        names = {i.name for i in session.get_inputs()}
        self._inputs = {}
        for role, candidates in _INPUT_NAMES.items():
            found = next((n for n in candidates if n in names), None)
            if found is None:
                raise ConfigError(f"Kokoro ONNX model {model_path} has no {role!r} input "
                                  f"(inputs: {', '.join(sorted(names))})")
            self._inputs[role] = found
        outputs = [o.name for o in session.get_outputs()]
        self._output = "audio" if "audio" in outputs else outputs[0]
        return session

    def _load_g2p(self) -> None:
        lang = (self.lang_code or "a").strip().lower()
        lang = {"en-us": "a", "en-gb": "b"}.get(lang, lang)
        english = lang in ("a", "b")
        if english and not _spacy_model_installed():
            log.warning("spaCy model %s is not installed: phonemizing with espeak-ng instead of misaki; "
                        "pronunciation and prosody are worse (see scripts/install-models-deps.sh)", SPACY_MODEL)
            try:
                from misaki.espeak import EspeakG2P

                self._espeak = EspeakG2P(language="en-gb" if lang == "b" else "en-us")
                self._espeak_map = _ESPEAK_TO_MISAKI[lang]
            except Exception as e:
                raise ConfigError(f"neither misaki's English G2P ({SPACY_MODEL} missing) nor espeak-ng "
                                  f"(misaki.espeak, espeakng-loader) is usable: {e}") from None
            self.g2p = "espeak"
            return
        try:
            from kokoro import KPipeline

            # model=False: G2P and chunking only; nothing is downloaded (voices are ours).
            self._pipeline = KPipeline(lang_code=lang, repo_id="hexgrad/Kokoro-82M", model=False)
        except (Exception, SystemExit) as e:  # SystemExit: spacy.cli.download failing
            raise ConfigError(f"cannot start kokoro's G2P for lang_code {self.lang_code!r}: {e}") from None
        self.g2p = "misaki" if english else "espeak"

    def _warm_up(self) -> None:
        voice = WARMUP_VOICE if (self._voices_dir / f"{WARMUP_VOICE}.bin").is_file() else None
        if voice is None:
            names = sorted(p.stem for p in self._voices_dir.glob("*.bin") if _VOICE_NAME.fullmatch(p.stem))
            if not names:
                raise ConfigError(f"no voice packs (<name>.bin) in {self._voices_dir}")
            voice = names[0]
        started = time.monotonic()
        try:
            samples = sum(len(a) for a in self.synthesize(WARMUP_TEXT, voice))
            if self._first_session is not None:
                sum(len(a) for a in self.synthesize(WARMUP_TEXT, voice, first=True))
        except ValueError as e:  # a corrupt voice pack
            raise ConfigError(str(e)) from None
        except Exception as e:
            raise ConfigError(f"Kokoro ONNX model {self.model_path} failed its warm-up synthesis: {e}") from None
        self.warmup_s = time.monotonic() - started
        log.info("kokoro-onnx warm-up: %.2f s of audio in %.2f s", samples / self.sample_rate, self.warmup_s)

    # --- synthesis ---------------------------------------------------------------------------

    def _voice(self, voice: str) -> np.ndarray:
        """Voice pack [N, 1, 256] float32, read once per name."""
        pack = self._voices.get(voice) if isinstance(voice, str) else None
        if pack is not None:
            return pack
        if not isinstance(voice, str) or not _VOICE_NAME.fullmatch(voice):  # keeps paths out of the lookup
            raise ValueError(f"unknown voice {voice!r}: expected a name like 'af_heart'")
        path = self._voices_dir / f"{voice}.bin"
        if not path.is_file():
            raise ValueError(f"unknown voice {voice!r}: no {path}")
        data = np.fromfile(path, dtype=np.float32)
        if data.size == 0 or data.size % STYLE_DIM:
            raise ValueError(f"voice {voice!r}: {path} is not a float32 [N, 1, {STYLE_DIM}] voice pack "
                             f"({data.size} values)")
        pack = data.reshape(-1, 1, STYLE_DIM)
        self._voices[voice] = pack
        return pack

    def phonemes(self, text: str) -> Iterator[str]:
        """Phoneme strings of at most 510 characters, one per model call."""
        if self._pipeline is not None:
            for result in self._pipeline(text):  # KPipeline chunks to <= 510 phonemes
                if result.phonemes:
                    yield result.phonemes
            return
        yield from self._espeak_phonemes(text)

    def _espeak_phonemes(self, text: str) -> Iterator[str]:
        """Sentences phonemized one by one, packed into chunks of <= 510 phonemes; like KPipeline,
        newlines always end a chunk."""
        for paragraph in re.split(r"\n+", text.strip()):
            pending = ""
            for sentence in re.split(r"(?<=[.!?…])\s+", paragraph):
                if not sentence.strip():
                    continue
                ps, _ = self._espeak(sentence)
                for a, b in self._espeak_map:
                    ps = (ps or "").replace(a, b)
                for piece in split_phonemes(ps or ""):
                    if pending and len(pending) + 1 + len(piece) <= CONTEXT:
                        pending = f"{pending} {piece}"
                    else:
                        if pending:
                            yield pending
                        pending = piece
            if pending:
                yield pending

    def _infer(self, session, ps: str, pack: np.ndarray, speed: float) -> np.ndarray:
        ids = [self._vocab[p] for p in ps if p in self._vocab][:CONTEXT]
        if not ids:
            return np.zeros(0, dtype=np.float32)
        # The style row kokoro's KPipeline.infer uses: pack[len(ps) - 1].
        style = pack[min(max(len(ps) - 1, 0), len(pack) - 1)].reshape(1, STYLE_DIM).astype(np.float32, copy=False)
        feeds = {
            self._inputs["tokens"]: np.array([[0, *ids, 0]], dtype=np.int64),
            self._inputs["style"]: style,
            self._inputs["speed"]: np.array([speed], dtype=np.float32),
        }
        audio = session.run([self._output], feeds)[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def synthesize(self, text: str, voice: str, speed: float = 1.0, first: bool = False) -> Iterator[np.ndarray]:
        """Yield float32 mono 24 kHz audio, one array per chunk of at most 510 phonemes.
        first: the turn's first sentence (uses first_threads when set)."""
        if self._session is None:
            raise RuntimeError("KokoroOnnxBackend.synthesize() called before load()")
        session = self._first_session if first and self._first_session is not None else self._session
        pack = self._voice(voice)  # before any G2P, so a bad voice fails before any audio
        with self._g2p_lock:
            pieces = list(self.phonemes(text))
        for ps in pieces:
            audio = self._infer(session, ps, pack, float(speed))
            if audio.size:
                yield audio
