"""The closed vocabularies of the wire and of /api/stages: a stage worker's lifecycle states, the
gateway's view of a stage, the kinds of stage.error and why a reply ended.

Each is a Literal declared once; the tuples beside them (in declaration order) are what code
iterates (metric labels, the gateway's state precedence). The page's copy of STAGE_STATES is
checked against this one (tests/test_contracts.py). On the wire they are plain msgpack strings:
typing the fields changes no byte (tests/test_proto.py pins them).
"""

from __future__ import annotations

from typing import Literal, get_args

# A worker's lifecycle (services/runtime/worker.py): starting -> loading -> ready <-> busy ->
# draining -> stopped. Its heartbeats carry every state but stopped.
WorkerState = Literal["starting", "loading", "ready", "busy", "draining", "stopped"]
WORKER_STATES: tuple[WorkerState, ...] = get_args(WorkerState)

# A stage as the gateway sees it (GET /api/stages, /readyz, the page's badges): its workers'
# states, plus stuck (busy too long without a result), failed (could not load) and down (no
# worker heard from). In precedence order: a stage is in the first state any of its workers is in.
StageState = Literal["ready", "busy", "loading", "draining", "stuck", "failed", "down"]
STAGE_STATES: tuple[StageState, ...] = get_args(StageState)
TAKES_REQUESTS: tuple[StageState, ...] = ("ready", "busy")

# stage.error's kind. failed: the model raised; busy: the worker's inbox was full; bad_request:
# the stage refused the request; shutdown: the worker is stopping; load_failed: it could not start.
ErrorKind = Literal["failed", "busy", "bad_request", "shutdown", "load_failed"]
ERROR_KINDS: tuple[ErrorKind, ...] = get_args(ErrorKind)

# Why a worker stops a request part-way or drops it unstarted (StopCheck.stale_reason).
StopReason = Literal["cancelled", "deadline", "shutdown"]
STOP_REASONS: tuple[StopReason, ...] = get_args(StopReason)

# llm.done's end_reason ("" from a stage that predates the field).
EndReason = Literal["", "end_of_text", "sentence_limit", "repetition", "token_cap", "cancel"]
END_REASONS: tuple[EndReason, ...] = get_args(EndReason)
