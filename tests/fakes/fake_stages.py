"""Scripted stand-ins for the three workers, on real sockets, to test the gateway layer alone."""

from __future__ import annotations

import threading
import time

import zmq

import proto
from proto import (AsrFinal, AsrPartial, AsrRequest, AsrStreamAudio, AsrStreamEnd, LlmDone, LlmRequest, LlmSentence,
                   StageHeartbeat, StageHello, StageReady, TtsAudio, TtsDone, TtsRequest, TurnCancel)
from services.runtime.endpoints import STAGES, events_endpoint, inbox_endpoint


class FakeStages:
    """One fake worker per stage named, each with its own inbox (instance `<name>-<stage>`), as
    the real workers have; several FakeStages of different names make several workers per stage."""

    def __init__(self, environ: dict[str, str], transcript: str = "What is the capital of France?",
                 sentences: tuple[str, ...] = ("Paris is the capital of France.", "It is lovely."),
                 stages: tuple[str, ...] = STAGES, name: str = "fake"):
        self.environ = environ
        self.instances = {stage: f"{name}-{stage}" for stage in stages}
        self.transcript = transcript
        self.sentences = sentences
        self.stages = stages
        self.llm_requests: list[LlmRequest] = []
        self.tts_requests: list[TtsRequest] = []
        self.asr_streams: list[AsrStreamEnd] = []  # streamed utterances, by their end
        self.cancels: dict[str, list[TurnCancel]] = {stage: [] for stage in stages}  # as each stage heard them
        self.received: list[tuple[str, object]] = []  # (stage, message): everything its inboxes took
        self.tts_delay = 0.0
        self.hold_tts = False  # hold every sentence but a turn's first until this is lifted (loop stays live)
        self.silent: set[str] = set()  # stages that take requests and never answer (a lost request)
        self.held: list = []  # the requests a silent stage took: (message, payload)
        self.answer_held = threading.Event()  # set: they are answered now, late
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)

    def kill(self) -> None:
        """Gone at once, as after kill -9: no bye, its inboxes closed."""
        self.__exit__()

    def _run(self) -> None:
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(events_endpoint(self.environ))
        pulls = {}
        poller = zmq.Poller()
        inboxes = {}
        for stage in self.stages:
            sock = ctx.socket(zmq.PULL)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(inbox_endpoint(self.instances[stage], self.environ))
            inboxes[stage] = sock.last_endpoint.decode()
            pulls[sock] = stage
            poller.register(sock, zmq.POLLIN)
        def send(message, *payload, reply_to=None):
            stage = proto.stage_of(message)  # tts.done -> tts; stage.hello names it
            if reply_to is not None:
                message.session, message.turn = reply_to.session, reply_to.turn
            message.instance = self.instances[stage]
            push.send_multipart(proto.encode(message, *payload))

        for stage in self.stages:
            send(StageHello(stage=stage, backend="fake", model="fake", device="cpu", pid=0, inbox=inboxes[stage]))
            send(StageReady(stage=stage, backend="fake", model="fake", device="cpu", load_s=0.0))
        def speak(request):
            pcm = b"\x00\x10" * 2400  # 0.1 s at 24 kHz
            send(TtsAudio(index=request.index, part=0, text=request.text, sample_rate=24000,
                          compute_s=0.01), pcm, reply_to=request)
            send(TtsDone(index=request.index, parts=1, compute_s=0.01, audio_s=0.1), reply_to=request)

        held = []  # TTS requests waiting for hold_tts to be lifted

        def answer(message, payload) -> None:
            """A request answered as the stage would, at once (TTS after tts_delay, or held)."""
            if isinstance(message, AsrRequest):
                send(AsrFinal(text=self.transcript, compute_s=0.01, audio_s=len(payload[0]) / 32000),
                     reply_to=message)
            elif isinstance(message, AsrStreamAudio) and message.index == 0:  # one partial per utterance
                send(AsrPartial(text=self.transcript.split()[0], audio_s=0.2, compute_s=0.01), reply_to=message)
            elif isinstance(message, AsrStreamEnd):
                self.asr_streams.append(message)
                send(AsrFinal(text=self.transcript, compute_s=0.01, audio_s=message.frames * 0.2),
                     reply_to=message)
            elif isinstance(message, LlmRequest):
                self.llm_requests.append(message)
                for i, text in enumerate(self.sentences):
                    send(LlmSentence(index=i, text=text, elapsed_s=0.01), reply_to=message)
                send(LlmDone(full_text=" ".join(self.sentences), sentences=len(self.sentences), tokens=10,
                             compute_s=0.02, first_sentence_s=0.01), reply_to=message)
            elif isinstance(message, TtsRequest):
                self.tts_requests.append(message)
                if self.hold_tts and message.index > 0:
                    held.append(message)
                    return
                time.sleep(self.tts_delay)
                speak(message)
        next_beat = 0.0
        while not self.stop.is_set():
            if time.monotonic() > next_beat:
                for stage in self.stages:
                    send(StageHeartbeat(stage=stage, state="ready", busy_ms=0, queue_depth=0, inbox=inboxes[stage]))
                next_beat = time.monotonic() + 0.5
            if self.answer_held.is_set():
                self.answer_held.clear()
                late, self.held = self.held, []
                for message, payload in late:
                    answer(message, payload)
            for sock, _ in poller.poll(50):
                message, payload = proto.decode(sock.recv_multipart())
                stage = pulls[sock]
                self.received.append((stage, message))
                if isinstance(message, TurnCancel):
                    self.cancels[stage].append(message)
                elif stage in self.silent:
                    self.held.append((message, payload))
                else:
                    answer(message, payload)
            while held and not self.hold_tts:
                speak(held.pop(0))
        push.close(0)
        for sock in pulls:  # the stages' inboxes
            sock.close(0)
        ctx.term()
