"""The bus over TCP: CURVE keys are required, only authorized workers get in (real loopback sockets)."""

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

import proto
from gateway.bus import Bus, WorkerUnavailable
from proto import StageHello, StageReady, TtsAudio, TtsDone, TtsRequest, TurnCancel
from services.runtime import curve
from services.runtime.errors import EXIT_CONFIG, ConfigError
from tests.worker_process import ROOT

pytestmark = pytest.mark.timeout(60)

ANY_PORT = "tcp://127.0.0.1:*"
TCP = {"S2S_EVENTS_ENDPOINT": ANY_PORT}  # the gateway binds only this; each worker binds its own inbox
HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}


@pytest.fixture
def keys(tmp_path):
    """A gateway keypair, one authorized worker, and an intruder whose key is not listed."""
    curve.generate(tmp_path / "gateway", "gateway")
    curve.generate(tmp_path / "authorized", "worker")
    curve.generate(tmp_path / "intruder", "intruder")
    return tmp_path


def gateway_env(keys, **extra):
    return {"S2S_RUN_DIR": str(keys / "run"), **TCP,
            "S2S_CURVE_SECRET_KEY_FILE": str(keys / "gateway" / "gateway.key_secret"),
            "S2S_CURVE_AUTHORIZED_DIR": str(keys / "authorized"), **extra}


def worker_keys(keys, secret_file):
    return curve.client_keys({"S2S_CURVE_SECRET_KEY_FILE": str(secret_file),
                              "S2S_CURVE_SERVER_KEY_FILE": str(keys / "gateway" / "gateway.key")}, [ANY_PORT])


class RunningBus:
    """The real gateway Bus on loopback TCP, collecting what it receives; like the gateway, it
    connects to the inbox a worker's hello names."""

    def __init__(self, environ):
        self.bus = Bus(environ)
        self.received: asyncio.Queue = asyncio.Queue()
        self.bus.start(self._on_message)
        self.events = self.bus.pull.last_endpoint.decode()

    def _on_message(self, message, payload):
        if isinstance(message, StageHello) and message.inbox:
            self.bus.connect(message.instance, message.inbox)
        self.received.put_nowait(message)

    async def next(self, timeout):
        return await asyncio.wait_for(self.received.get(), timeout)


class Peer:
    """A worker-side pair of sockets (events PUSH, its own inbox PULL on loopback TCP), with or
    without CURVE keys."""

    def __init__(self, bus: RunningBus, keys: curve.ClientKeys | None, name="peer"):
        self.name = name
        self.ctx = zmq.Context()
        self.push, self.pull = self.ctx.socket(zmq.PUSH), self.ctx.socket(zmq.PULL)
        self.monitor = self.push.get_monitor_socket()
        self.inbox_monitor = self.pull.get_monitor_socket()
        for sock in (self.push, self.pull):
            sock.linger = 0
            curve.secure_client(sock, keys)
        self.push.connect(bus.events)
        self.pull.bind(ANY_PORT)
        self.inbox = self.pull.last_endpoint.decode()

    def hello(self, backend):
        hello = StageHello(stage="tts", backend=backend, model="m", device="cpu", pid=1, inbox=self.inbox)
        hello.instance = self.name
        # never blocks: zmq.Again when no connection is left to queue it on (a refused handshake
        # can end the connection before the send)
        self.push.send_multipart(proto.encode(hello), flags=zmq.NOBLOCK)

    async def receive(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.pull.poll(0):
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return proto.decode(self.pull.recv_multipart())[0]

    def connection_events(self, monitor=None):
        monitor = monitor or self.monitor
        events = []
        while monitor.poll(0):
            events.append(recv_monitor_message(monitor)["event"])
        return events

    def close(self):
        self.push.disable_monitor()
        self.pull.disable_monitor()
        self.monitor.close(linger=0)
        self.inbox_monitor.close(linger=0)
        self.push.close()
        self.pull.close()
        self.ctx.term()


# --- s2s-keys --------------------------------------------------------------------------------


def test_the_keys_command_writes_an_owner_only_secret_and_valid_z85_keys(tmp_path):
    key_dir = tmp_path / "curve"
    out = subprocess.run([sys.executable, "-m", "services.runtime.curve", "generate", str(key_dir), "--name", "worker"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    public_file, secret_file = key_dir / "worker.key", key_dir / "worker.key_secret"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert not stat.S_IMODE(public_file.stat().st_mode) & 0o022
    public, secret = zmq.auth.load_certificate(secret_file)  # the zmq/czmq certificate format
    assert zmq.auth.load_certificate(public_file) == (public, None)
    assert len(public) == len(secret) == 40 and len(z85.decode(public)) == len(z85.decode(secret)) == 32
    assert zmq.curve_public(secret) == public
    assert curve.load_secret_key(secret_file) == (public, secret)
    # An existing keypair is never overwritten by accident.
    again = subprocess.run([sys.executable, "-m", "services.runtime.curve", "generate", str(key_dir), "--name", "worker"],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and "--force" in again.stderr
    assert zmq.auth.load_certificate(secret_file) == (public, secret)


def test_each_keypair_is_new_and_a_secret_is_created_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        first = curve.generate(tmp_path, "a")
    finally:
        os.umask(old)
    second = curve.generate(tmp_path, "b")
    assert stat.S_IMODE(first[1].stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(first[0]) != zmq.auth.load_certificate(second[0])
    with pytest.raises(ConfigError):
        curve.generate(tmp_path, "../escape")


# --- authenticated traffic -------------------------------------------------------------------


async def test_an_authorized_worker_key_exchanges_messages_with_the_bus(keys):
    bus = RunningBus(gateway_env(keys))
    peer = Peer(bus, worker_keys(keys, keys / "authorized" / "worker.key_secret"))
    try:
        assert bus.events.startswith("tcp://127.0.0.1:")
        peer.hello("authorized")
        assert (await bus.next(timeout=5)).backend == "authorized"
        # the gateway connected to the inbox the hello named: as the CURVE server, though it connects
        bus.bus.send("peer", TtsRequest(index=0, text="to-worker", voice="v", session="s", turn=1))
        assert (await peer.receive(timeout=5)).text == "to-worker"
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED in peer.connection_events()
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED in peer.connection_events(peer.inbox_monitor)
    finally:
        peer.close()
        await bus.bus.close()


@pytest.mark.parametrize("who", ["unlisted key", "plain zeromq"])
async def test_an_unauthenticated_peer_is_refused(keys, who):
    bus = RunningBus(gateway_env(keys))
    intruder_keys = worker_keys(keys, keys / "intruder" / "intruder.key_secret") if who == "unlisted key" else None
    intruder = Peer(bus, intruder_keys, name="intruder")
    try:
        with contextlib.suppress(zmq.Again):  # refused already: its hello was not even queued
            intruder.hello("intruder")
        with pytest.raises(asyncio.TimeoutError):
            await bus.next(timeout=1.5)
        with pytest.raises(WorkerUnavailable):  # its hello never arrived: nothing for the bus to send work to
            bus.bus.send("intruder", TtsRequest(index=0, text="secret work", voice="v", session="s", turn=1))
        assert HANDSHAKE_FAILED & set(intruder.connection_events())
        # Told its inbox some other way, the gateway still gets no work through to it.
        bus.bus.connect("intruder", intruder.inbox)
        bus.bus.send("intruder", TtsRequest(index=0, text="secret work", voice="v", session="s", turn=1))
        assert await intruder.receive(timeout=1.0) is None
        assert HANDSHAKE_FAILED & set(intruder.connection_events(intruder.inbox_monitor))
        # The same bus, still serving: an authorized worker gets through at once.
        worker = Peer(bus, worker_keys(keys, keys / "authorized" / "worker.key_secret"))
        try:
            worker.hello("authorized")
            assert (await bus.next(timeout=5)).backend == "authorized"
        finally:
            worker.close()
        assert bus.received.empty()  # and the intruder's message never followed
    finally:
        intruder.close()
        await bus.bus.close()


# --- the policy: no keys, no TCP ---------------------------------------------------------------


async def test_the_gateway_refuses_tcp_endpoints_without_keys(tmp_path, keys):
    bus = Bus({"S2S_RUN_DIR": str(tmp_path / "run"), "S2S_EVENTS_ENDPOINT": ANY_PORT})
    try:
        with pytest.raises(ConfigError) as refused:
            bus.start(lambda message, payload: None)
        assert "S2S_CURVE_SECRET_KEY_FILE is not set" in str(refused.value)
        assert "s2s-keys generate" in str(refused.value) and "tcp://127.0.0.1:*" in str(refused.value)
        assert not bus.inboxes and bus.pull is None  # refused before anything was bound
    finally:
        await bus.close()
    no_dir = gateway_env(keys)
    del no_dir["S2S_CURVE_AUTHORIZED_DIR"]
    with pytest.raises(ConfigError, match="S2S_CURVE_AUTHORIZED_DIR is not set"):
        curve.server_keys(no_dir, [ANY_PORT])
    (keys / "empty").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="S2S_CURVE_AUTHORIZED_DIR=.*holds no worker public key"):
        curve.server_keys(gateway_env(keys, S2S_CURVE_AUTHORIZED_DIR=str(keys / "empty")), [ANY_PORT])


async def test_a_gateway_without_keys_does_not_connect_to_a_tcp_inbox(tmp_path, caplog):
    bus = Bus({"S2S_RUN_DIR": str(tmp_path / "run")})
    bus.start(lambda message, payload: None)
    try:
        assert bus.connect("tts-remote", "tcp://127.0.0.1:9") is False and not bus.inboxes
        assert "tts-remote" in caplog.text and "no CURVE keys" in caplog.text
        with pytest.raises(WorkerUnavailable):
            bus.send("tts-remote", TurnCancel(session="s", turn=1))
    finally:
        await bus.close()


def test_ipc_endpoints_need_no_keys_but_use_configured_ones(keys):
    ipc = ["ipc:///tmp/s2s-x/asr.in", "inproc://outbox"]
    assert curve.remote_endpoints(ipc) == []
    assert curve.remote_endpoints([*ipc, "tcp://10.0.0.2:5555"]) == ["tcp://10.0.0.2:5555"]
    assert curve.server_keys({}, ipc) is None and curve.client_keys({}, ipc) is None
    assert curve.server_keys(gateway_env(keys), ipc) is not None
    with pytest.raises(ConfigError, match="S2S_CURVE_SERVER_KEY_FILE is not set"):
        curve.client_keys({"S2S_CURVE_SECRET_KEY_FILE": str(keys / "authorized" / "worker.key_secret")}, ipc)


def run_worker(env, **extra):
    """The scripted TTS stage under the real worker runtime, connecting to tcp endpoints."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("S2S_CURVE_")}, "PYTHONPATH": str(ROOT),
           **env, **extra}
    return subprocess.run([sys.executable, "-m", "tests.fakes.scripted_stage"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("case", ["no keys", "world-readable secret"])
def test_a_worker_refuses_tcp_endpoints_without_usable_keys(keys, case):
    # Nothing listens on these ports: the worker must exit before it ever connects.
    env = {"S2S_RUN_DIR": str(keys / "run"), "S2S_TTS_INBOX_ENDPOINT": "tcp://127.0.0.1:*",
           "S2S_EVENTS_ENDPOINT": "tcp://127.0.0.1:9"}
    if case == "world-readable secret":
        secret = keys / "authorized" / "worker.key_secret"
        secret.chmod(0o644)
        env.update(S2S_CURVE_SECRET_KEY_FILE=str(secret),
                   S2S_CURVE_SERVER_KEY_FILE=str(keys / "gateway" / "gateway.key"))
    out = run_worker(env)
    assert out.returncode == EXIT_CONFIG, out.stderr
    if case == "no keys":
        assert "S2S_CURVE_SECRET_KEY_FILE is not set" in out.stderr and "s2s-keys generate" in out.stderr
        assert "tcp://127.0.0.1:9" in out.stderr
    else:
        assert "accessible by group or others (mode 0644)" in out.stderr and "chmod 600" in out.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_key_file_readable_by_others_is_refused(keys, mode):
    secret = keys / "gateway" / "gateway.key_secret"
    secret.chmod(mode)
    with pytest.raises(ConfigError, match=f"S2S_CURVE_SECRET_KEY_FILE=.*mode {mode:04o}.*chmod 600"):
        curve.server_keys(gateway_env(keys), [ANY_PORT])
    secret.chmod(0o600)
    assert curve.server_keys(gateway_env(keys), [ANY_PORT]).public == zmq.auth.load_certificate(secret)[0]


def test_missing_malformed_or_mismatched_key_files_are_refused(keys):
    secret = keys / "gateway" / "gateway.key_secret"
    public, real_secret = zmq.auth.load_certificate(secret)
    bad = keys / "bad.key_secret"

    def refused(text, match, name="S2S_CURVE_SECRET_KEY_FILE"):
        bad.unlink(missing_ok=True)
        if text is not None:
            bad.write_text(text)
            bad.chmod(0o600)
        with pytest.raises(ConfigError, match=match) as error:
            curve.server_keys(gateway_env(keys, S2S_CURVE_SECRET_KEY_FILE=str(bad)), [ANY_PORT])
        assert name in str(error.value)

    refused(None, "no such file")
    refused("hello\n", "not a CURVE key file")
    refused(f'public-key = "{public.decode()}"\n', "holds no secret key")
    refused(f'public-key = "{public.decode()}"\nsecret-key = "{real_secret.decode()[:-1]}"\n', "not a 40-character z85")
    refused(f'public-key = "{public.decode()}"\nsecret-key = "{zmq.curve_keypair()[1].decode()}"\n',
            "do not belong together")
    (keys / "authorized" / "junk.key").write_text("not a key\n")
    with pytest.raises(ConfigError, match="S2S_CURVE_AUTHORIZED_DIR=.*junk.key"):
        curve.server_keys(gateway_env(keys), [ANY_PORT])
    with pytest.raises(ConfigError, match="S2S_CURVE_SERVER_KEY_FILE=.*no such file"):
        curve.client_keys({"S2S_CURVE_SECRET_KEY_FILE": str(keys / "authorized" / "worker.key_secret"),
                           "S2S_CURVE_SERVER_KEY_FILE": str(keys / "nope.key")}, [ANY_PORT])


def test_an_authorized_dir_others_can_write_to_is_refused(keys):
    (keys / "authorized").chmod(0o777)
    with pytest.raises(ConfigError, match="S2S_CURVE_AUTHORIZED_DIR=.*others could add keys"):
        curve.server_keys(gateway_env(keys), [ANY_PORT])


# --- a real worker process over TCP with CURVE --------------------------------------------------


async def test_a_real_worker_reaches_the_bus_over_tcp_with_curve(keys):
    bus = RunningBus(gateway_env(keys))
    env = {"S2S_RUN_DIR": str(keys / "run"), "S2S_TTS_INBOX_ENDPOINT": ANY_PORT, "S2S_EVENTS_ENDPOINT": bus.events,
           "S2S_CURVE_SECRET_KEY_FILE": str(keys / "authorized" / "worker.key_secret"),
           "S2S_CURVE_SERVER_KEY_FILE": str(keys / "gateway" / "gateway.key"),
           "S2S_TTS_THREADS": "0"}  # config/tts.env pins 1 thread, which would import torch
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("S2S_")}, "PYTHONPATH": str(ROOT), **env}
    log = keys / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.scripted_stage"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not isinstance(message := await bus.next(timeout=max(0.1, deadline - time.monotonic())), StageReady):
            pass
        assert message.backend == "scripted"
        worker = message.instance
        assert bus.bus.inboxes[worker].endpoint.startswith("tcp://127.0.0.1:")  # its hello named its tcp inbox
        bus.bus.send(worker, TtsRequest(index=0, text="parts=1", voice="af_heart", session="s", turn=1))
        while not isinstance(message := await bus.next(timeout=5), TtsDone):
            pass
        assert (message.session, message.turn, message.parts) == ("s", 1, 1)
        # a cancel reaches it over CURVE too: a long item stops
        bus.bus.send(worker, TtsRequest(index=0, text="parts=50 delay=0.05", voice="af_heart", session="s", turn=2))
        while not (isinstance(message := await bus.next(timeout=5), TtsAudio) and message.part == 2):
            pass
        bus.bus.send(worker, TurnCancel(session="s", turn=2))
        after, until = [], time.monotonic() + 0.7
        while (left := until - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                after.append(await bus.next(timeout=left))
        assert not any(isinstance(m, TtsDone) for m in after)
        assert len([m for m in after if isinstance(m, TtsAudio)]) <= 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    except BaseException:
        print(log.read_text(errors="replace"))
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        await bus.bus.close()
