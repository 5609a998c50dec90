"""CURVE keys for the bus: TCP endpoints are authenticated and encrypted, or nothing starts.

Policy. ipc endpoints live in the 0700 run dir, so only this user can reach them: they need no
keys (they use them if keys are configured). Any other transport (tcp://, ...) can be reached by
other users or hosts, so then CURVE keys are required: without them the gateway and the workers
refuse to start with a ConfigError (exit 78) that names the missing setting.

- The gateway is the CURVE server on every socket it has: the events socket it binds and the PUSH
  it connects to each worker's inbox (the CURVE roles do not follow bind and connect); a ZAP
  handler admits only the worker public keys found in S2S_CURVE_AUTHORIZED_DIR.
- A worker is a CURVE client on both its sockets (the inbox it binds, the events socket it
  connects to): its own keypair, and the gateway's public key.

Settings (environment; a worker also reads them from its env file):

  S2S_CURVE_SECRET_KEY_FILE  this process's secret key file (NAME.key_secret); its public key
                             is derived from it
  S2S_CURVE_SERVER_KEY_FILE  workers: the gateway's public key file (gateway.key)
  S2S_CURVE_AUTHORIZED_DIR   gateway: a directory of worker public key files (*.key)

Key files are ZeroMQ certificates (the format of zmq.auth and czmq: z85 keys in
`public-key = "..."` / `secret-key = "..."` lines), written by `s2s-keys generate DIR --name NAME`
(or `python -m services.runtime.curve generate ...`): NAME.key (public, to copy to the other
side) and NAME.key_secret (mode 0600, never leaves its host).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import re
import stat
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from services.runtime.endpoints import events_endpoint
from services.runtime.errors import ConfigError
from services.runtime.settings import Setting, Source, StageSettings, project_value

log = logging.getLogger("s2s.curve")

# Project-wide settings, S2S_<KEY> (a worker may also set them in its env file).
SECRET_KEY = Setting("CURVE_SECRET_KEY_FILE", str, None, "this process's secret key file (`NAME.key_secret`, mode "
                     "0600); its public key is derived from it. Required with TCP endpoints")
SERVER_KEY = Setting("CURVE_SERVER_KEY_FILE", str, None, "workers: the gateway's public key file (`gateway.key`). "
                     "Required with TCP endpoints")
AUTHORIZED = Setting("CURVE_AUTHORIZED_DIR", str, None, "gateway: a directory (not writable by others) of the worker "
                     "public key files (`*.key`) allowed to connect. Required with TCP endpoints")
SETTINGS = (SECRET_KEY, SERVER_KEY, AUTHORIZED)
SECRET_KEY_FILE, SERVER_KEY_FILE, AUTHORIZED_DIR = ("S2S_" + s.key for s in SETTINGS)
LOCAL_TRANSPORTS = ("ipc", "inproc")
ZAP_DOMAIN = "s2s"
HOWTO = ("generate keys with `s2s-keys generate DIR --name gateway` (and `--name <worker>` on each "
         "worker host); see README, \"Several hosts / TCP\"")
_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")



# --- policy ------------------------------------------------------------------------------------


def remote_endpoints(endpoints: Iterable[str]) -> list[str]:
    """The endpoints that are not local ipc/inproc sockets: these require CURVE."""
    return [e for e in endpoints if e.partition("://")[0].lower() not in LOCAL_TRANSPORTS]


def _setting(source: Source, name: str) -> str | None:
    return project_value(source, name.removeprefix("S2S_"))


def _missing(name: str, what: str, remote: list[str]) -> ConfigError:
    why = (f"endpoint {remote[0]} is not a local ipc socket, so the bus must be authenticated with "
           f"CURVE keys" if remote else "CURVE keys are configured, so every setting is needed")
    return ConfigError(f"{name} is not set ({what}): {why}; {HOWTO}")


# --- key files ---------------------------------------------------------------------------------


def _z85_key(text: bytes, where: str, what: str) -> bytes:
    if not _Z85.fullmatch(text.decode("ascii", "replace")):
        raise ConfigError(f"{where}: the {what} is not a 40-character z85 CURVE key")
    try:
        raw = z85.decode(text)
    except (ValueError, struct.error):  # z85 digits that overflow 32 bits
        raise ConfigError(f"{where}: the {what} is not a valid z85 CURVE key") from None
    if len(raw) != 32:
        raise ConfigError(f"{where}: the {what} is not a 32-byte CURVE key")
    return text


def _read_cert(path: Path, name: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigError(f"{name}={path}: " + ("not a regular file" if path.exists() else "no such file"))
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise ConfigError(f"{name}={path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"{name}={path}: not a CURVE key file (no `public-key = \"...\"` line); "
                          f"{HOWTO}") from None
    where = f"{name}={path}"
    return _z85_key(public, where, "public key"), None if secret is None else _z85_key(secret, where, "secret key")


def load_secret_key(path: str | os.PathLike, name: str = SECRET_KEY_FILE) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a secret key file that only its owner can read."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError:
        raise ConfigError(f"{name}={path}: no such file; {HOWTO}") from None
    if stat.S_ISREG(mode) and mode & 0o077:
        raise ConfigError(f"{name}={path}: the secret key file is accessible by group or others "
                          f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`")
    public, secret = _read_cert(path, name)
    if secret is None:
        raise ConfigError(f"{name}={path}: holds no secret key (a public .key file?); "
                          f"point it at the NAME.key_secret file")
    derived = zmq.curve_public(secret)
    if public != derived:
        raise ConfigError(f"{name}={path}: its public and secret keys do not belong together")
    return derived, secret


def load_public_key(path: str | os.PathLike, name: str = SERVER_KEY_FILE) -> bytes:
    return _read_cert(Path(path).expanduser(), name)[0]


def load_authorized(directory: str | os.PathLike, name: str = AUTHORIZED_DIR) -> list[bytes]:
    """The public keys (*.key) allowed to connect; the directory must not be writable by others."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{name}={path}: no such directory")
    mode = path.stat().st_mode
    if mode & 0o022:
        raise ConfigError(f"{name}={path}: others could add keys to it (mode {stat.S_IMODE(mode):04o}); "
                          f"run `chmod go-w {path}`")
    keys = [load_public_key(cert, name) for cert in sorted(path.glob("*.key"))]
    if not keys:
        raise ConfigError(f"{name}={path}: holds no worker public key (*.key), so no worker could "
                          f"connect; copy each worker's NAME.key there")
    return keys


# --- the two sides -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerKeys:
    """The gateway's keypair and the directory of worker keys it admits."""

    public: bytes
    secret: bytes
    authorized_dir: Path
    authorized: tuple[bytes, ...]


@dataclass(frozen=True)
class ClientKeys:
    """A worker's keypair and the gateway's public key."""

    public: bytes
    secret: bytes
    server: bytes


def server_keys(source: Source, endpoints: Iterable[str]) -> ServerKeys | None:
    """The gateway's keys; None for a plain bus (no keys configured, every endpoint ipc)."""
    remote = remote_endpoints(endpoints)
    secret_file, authorized_dir = _setting(source, SECRET_KEY_FILE), _setting(source, AUTHORIZED_DIR)
    if not (remote or secret_file or authorized_dir):
        return None
    if not secret_file:
        raise _missing(SECRET_KEY_FILE, "the gateway's secret key file, e.g. gateway.key_secret", remote)
    if not authorized_dir:
        raise _missing(AUTHORIZED_DIR, "a directory of the workers' public .key files", remote)
    public, secret = load_secret_key(secret_file)
    authorized = tuple(load_authorized(authorized_dir))
    return ServerKeys(public, secret, Path(authorized_dir).expanduser(), authorized)


def client_keys(source: Source, endpoints: Iterable[str]) -> ClientKeys | None:
    """A worker's keys; None for a plain bus (no keys configured, every endpoint ipc)."""
    remote = remote_endpoints(endpoints)
    secret_file, server_file = _setting(source, SECRET_KEY_FILE), _setting(source, SERVER_KEY_FILE)
    if not (remote or secret_file or server_file):
        return None
    if not secret_file:
        raise _missing(SECRET_KEY_FILE, "this worker's secret key file, e.g. worker.key_secret", remote)
    if not server_file:
        raise _missing(SERVER_KEY_FILE, "the gateway's public key file, gateway.key", remote)
    public, secret = load_secret_key(secret_file)
    return ClientKeys(public, secret, load_public_key(server_file))


def worker_keys(settings: StageSettings) -> ClientKeys | None:
    """The keys of a stage worker for its endpoints (the ones _io_loop uses): the events socket it
    connects to and the inbox it binds (ipc in the run dir unless INBOX_ENDPOINT names another)."""
    return client_keys(settings, [e for e in (events_endpoint(settings), settings.get("INBOX_ENDPOINT")) if e])


def secure_server(socket: zmq.Socket, keys: ServerKeys) -> None:
    """Make a binding socket a CURVE server (before bind); a ZAP handler must run in its context."""
    socket.zap_domain = ZAP_DOMAIN.encode()
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def secure_client(socket: zmq.Socket, keys: ClientKeys | None) -> None:
    """Make a connecting socket a CURVE client of the gateway (before connect); None: plain."""
    if keys is None:
        return
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server


class CurveServer:
    """The gateway's CURVE: server keys on each socket, one ZAP authenticator per context.

    Without a ZAP handler libzmq would let any client keypair in, so the authenticator starts
    before the first socket of its context binds, and stops only after the sockets are closed.
    """

    def __init__(self, keys: ServerKeys):
        self.keys = keys
        self._authenticators: dict[int, ThreadAuthenticator] = {}

    @classmethod
    def load(cls, source: Source, endpoints: Iterable[str]) -> CurveServer | None:
        endpoints = list(endpoints)
        keys = server_keys(source, endpoints)
        if keys is None:
            return None
        log.info("bus secured with CURVE: %d authorized worker key(s) in %s; endpoints %s",
                 len(keys.authorized), keys.authorized_dir, ", ".join(endpoints))
        return cls(keys)

    def secure(self, socket: zmq.Socket) -> None:
        context = socket.context
        if context.underlying not in self._authenticators:
            auth = ThreadAuthenticator(context, log=logging.getLogger("s2s.curve.zap"))
            auth.start()
            auth.configure_curve(domain=ZAP_DOMAIN, location=str(self.keys.authorized_dir))
            self._authenticators[context.underlying] = auth
        secure_server(socket, self.keys)

    def stop(self) -> None:
        for auth in self._authenticators.values():
            auth.stop()
        self._authenticators.clear()


# --- s2s-keys ----------------------------------------------------------------------------------


def _cert_text(kind: str, public: bytes, secret: bytes | None = None) -> str:
    """The ZeroMQ certificate format (zmq.auth.create_certificates writes the same)."""
    lines = [f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by s2s-keys  ****",
             f"#   ZeroMQ CURVE {kind} Certificate", "metadata", "curve",
             f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write_new(path: Path, text: str, mode: int, force: bool) -> None:
    if force:
        path.unlink(missing_ok=True)
    # O_EXCL: never through an existing file or a planted symlink; created with its final mode,
    # so a secret key is not readable by anyone else even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # exactly this mode, whatever the umask
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def generate(directory: str | os.PathLike, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (public, 0644) and NAME.key_secret (0600) into a 0700 directory."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"key name {name!r}: use letters, digits, '.', '_' or '-'")
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        directory.chmod(0o700)
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force:
        for path in (public_file, secret_file):
            if path.exists() or path.is_symlink():
                raise ConfigError(f"{path} exists: keep it, or pass --force to replace the keypair")
    public, secret = zmq.curve_keypair()
    _write_new(secret_file, _cert_text("**Secret**", public, secret), 0o600, force)
    _write_new(public_file, _cert_text("Public", public), 0o644, force)
    return public_file, secret_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2s-keys", description="CURVE keys for a bus over TCP.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write NAME.key and NAME.key_secret into DIR")
    gen.add_argument("directory", metavar="DIR", help="created mode 0700 if missing")
    gen.add_argument("--name", required=True, help="gateway, or a name for this worker (e.g. worker, asr-host2)")
    gen.add_argument("--force", action="store_true", help="replace an existing keypair of that name")
    show = commands.add_parser("public", help="print the public key of a secret or public key file")
    show.add_argument("file")
    args = parser.parse_args(argv)
    if not zmq.has("curve"):
        print("s2s-keys: this libzmq has no CURVE support", file=sys.stderr)
        return 78
    try:
        if args.command == "public":
            print(load_public_key(args.file, "FILE").decode())
            return 0
        public_file, secret_file = generate(args.directory, args.name, args.force)
    except ConfigError as exc:
        print(f"s2s-keys: {exc}", file=sys.stderr)
        return 78
    print(f"public key: {public_file}\nsecret key: {secret_file} (mode 0600; it never leaves this host)")
    if args.name == "gateway":
        print(f"gateway: {SECRET_KEY_FILE}={secret_file}, {AUTHORIZED_DIR}=<dir of worker .key files>\n"
              f"workers: copy {public_file.name} to each worker host and set {SERVER_KEY_FILE} to it")
    else:
        print(f"this worker: {SECRET_KEY_FILE}={secret_file}, {SERVER_KEY_FILE}=<the gateway's gateway.key>\n"
              f"gateway: copy {public_file.name} into its {AUTHORIZED_DIR}, then restart the gateway")
    return 0


if __name__ == "__main__":
    sys.exit(main())
