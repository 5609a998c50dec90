"""The settings that say what each stage loads, S2S_<STAGE>_<KEY>, each declared once: read by the
planner (services/models/resolve.py) and by the stages, written into config/<stage>.env and the
README by scripts/settings_docs.py."""

from __future__ import annotations

from services.runtime.settings import Setting

SOURCE = Setting("SOURCE", str, "auto", "`local`, `hub` or `registry` forces where the model comes from")
ASR_BACKEND = Setting("BACKEND", str, "openai-whisper", "`faster-whisper` or `openai-whisper` (same weights, same "
                      "words; faster-whisper is quicker on CPU)")
ASR_MODEL = Setting("MODEL", str, "base", "whisper model name (tiny, base, small, ...), or a checkpoint `.pt` path "
                    "(openai-whisper; a CTranslate2 dir for faster-whisper)")
ASR_COMPUTE_TYPE = Setting("COMPUTE_TYPE", str, "auto", "faster-whisper: `auto` is int8 on CPU, float16 on cuda")
ASR_DEVICE = Setting("DEVICE", str, "cpu", "whisper is kept on CPU, as in the original")
ASR_LANGUAGE = Setting("LANGUAGE", str, None, "spoken language; empty = detect it per clip (slower)")
ASR_DOWNLOAD_ROOT = Setting("DOWNLOAD_ROOT", str, None, "openai-whisper: where hub checkpoints are kept",
                            default_doc="`~/.cache/whisper`")
ASR_MODEL_SETTINGS = (ASR_BACKEND, ASR_MODEL, ASR_COMPUTE_TYPE, ASR_DEVICE, ASR_LANGUAGE, ASR_DOWNLOAD_ROOT, SOURCE)

LLM_BACKEND = Setting("BACKEND", str, "transformers", "`transformers` (the model in this process), or "
                      "`openai-compatible`: replies streamed from any server with the OpenAI chat-completions API "
                      "(vLLM, SGLang, llama.cpp's server, Ollama) at `S2S_LLM_BASE_URL`, which serves "
                      "`S2S_LLM_MODEL`")
LLM_MODEL = Setting("MODEL", str, "Qwen/Qwen2.5-1.5B-Instruct", "hub id or local directory (openai-compatible: the "
                    "name the server serves it under)")
LLM_GGUF_FILE = Setting("GGUF_FILE", str, None, "a GGUF file name inside `S2S_LLM_MODEL`")
LLM_DEVICE = Setting("DEVICE", str, "auto", "`auto`: cuda, else mps, else cpu")
LLM_DTYPE = Setting("DTYPE", str, "auto", "`auto`: float16 on an accelerator, float32 on CPU")
LLM_REPETITION_PENALTY = Setting("REPETITION_PENALTY", float, None, "decoding: above 1 discourages repeating tokens "
                                 "(1 = none)", default_doc="the model plan's, else the model's own")
LLM_NO_REPEAT_NGRAM_SIZE = Setting("NO_REPEAT_NGRAM_SIZE", int, None, "decoding: no n-gram of this size is said "
                                   "twice (0 = off)", default_doc="the model plan's, else the model's own")
LLM_MODEL_SETTINGS = (LLM_BACKEND, LLM_MODEL, LLM_GGUF_FILE, LLM_DEVICE, LLM_DTYPE, LLM_REPETITION_PENALTY,
                      LLM_NO_REPEAT_NGRAM_SIZE, SOURCE)

TTS_BACKEND = Setting("BACKEND", str, "kokoro", "`kokoro` (PyTorch) or `kokoro-onnx` (ONNX runtime)")
TTS_REPO = Setting("REPO", str, "hexgrad/Kokoro-82M", "hub repo of the model and voices")
TTS_MODEL_PATH = Setting("MODEL_PATH", str, None, "a local Kokoro (PyTorch) `.pth` instead of the hub")
TTS_CONFIG_PATH = Setting("CONFIG_PATH", str, None, "a local Kokoro (PyTorch) `config.json` instead of the hub")
TTS_VOICES_DIR = Setting("VOICES_DIR", str, None, "a local dir of Kokoro (PyTorch) voices (`<voice>.pt`) instead "
                         "of the hub")
TTS_MODEL_DIR = Setting("MODEL_DIR", str, None, "kokoro-onnx: a dir with `kokoro-v1.0.int8.onnx`, `vocab.json`, "
                        "`voices/*.bin`")
TTS_DEVICE = Setting("DEVICE", str, "cpu", "Kokoro runs on CPU")
TTS_LANG_CODE = Setting("LANG_CODE", str, "a", "Kokoro's language code (`a`: American English)")
TTS_FIRST_THREADS = Setting("FIRST_THREADS", int, None, "CPU threads for the first sentence of a turn, which is on "
                            "the path to the first audio (0 = one per core)", default_doc="as `S2S_TTS_THREADS`")
TTS_MODEL_SETTINGS = (TTS_BACKEND, TTS_REPO, TTS_MODEL_PATH, TTS_CONFIG_PATH, TTS_VOICES_DIR, TTS_MODEL_DIR,
                      TTS_DEVICE, TTS_LANG_CODE, TTS_FIRST_THREADS, SOURCE)
