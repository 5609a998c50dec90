"""The common shape of a stage: one backend, resolved at load time from the stage's settings."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

from services.runtime.backend import Backend
from services.runtime.errors import ConfigError, ModelError
from services.runtime.registry import backend_class
from services.runtime.settings import Setting, StageSettings
from services.runtime.worker import StageDefaults, StageInfo

log = logging.getLogger("s2s.stage")


class BackendStage(StageDefaults):
    """Subclasses set name, request_type, BACKENDS, the settings of their backend and device, and
    planner, and implement handle(); they may override the capabilities of StageDefaults and
    warmup_request(). The planner (services/models/resolve.py) picks the backend, model and source."""

    name: str
    request_type: type
    BACKENDS: dict[str, str]
    backend_setting: Setting  # S2S_<STAGE>_BACKEND, with the stage's default backend
    device_setting: Setting  # S2S_<STAGE>_DEVICE
    planner = None  # staticmethod: (settings, prepare, log_line) -> Plan

    def __init__(self, settings: StageSettings):
        self.settings = settings
        self.backend_name = settings.value(self.backend_setting)
        backend_class(self.name, self.backend_name, self.BACKENDS)  # a bad name fails before loading
        self.backend: Backend | None = None

    def warmup_request(self):
        """(request, payload) of a small request that warms the model up at load; None: no warm-up."""
        return None

    @property
    def parallel_ok(self) -> bool:
        """Whether the loaded backend may handle several requests at once (S2S_<STAGE>_PARALLEL)."""
        return self.backend is not None and self.backend.thread_safe

    def describe(self) -> StageInfo:
        """Before load(): the configured backend; the model is known once resolved."""
        return StageInfo(self.backend_name, "resolving", self.settings.value(self.device_setting))

    def load(self) -> StageInfo:
        try:
            plan = self.planner(self.settings, prepare=True, log_line=log.info)
        except ModelError as exc:  # a registry fallback that cannot be assembled
            raise ConfigError(str(exc)) from None
        log.info("%s will load %s (%s) from %s: %s", self.name, plan.model, plan.backend, plan.source, plan.reason)
        if plan.offline:
            os.environ["HF_HUB_OFFLINE"] = "1"  # load the cached copy without waiting on the hub
        self.backend_name = plan.backend
        self.backend = backend_class(self.name, plan.backend, self.BACKENDS)(**plan.options)
        self.backend.load()
        self.warm_up()
        return StageInfo(plan.backend, plan.model, self.backend.device, plan.source, plan.reason)

    def warm_up(self) -> float:
        """One small request through handle() at load, so the first user's turn does not pay for
        lazy initialisation (kernel selection, caches, first allocations). Returns its seconds."""
        made = self.warmup_request()
        if made is None:
            return 0.0
        request, payload = made
        started = time.monotonic()
        try:
            for _ in self.handle(request, payload, InProcessStopCheck()):
                pass
        except Exception as exc:  # a model that cannot answer a trivial request is not ready
            raise ConfigError(f"{self.name} warm-up failed: {type(exc).__name__}: {exc}") from exc
        elapsed = time.monotonic() - started
        log.info("%s warm-up took %.2f s", self.name, elapsed)
        return elapsed


class InProcessStopCheck:
    """The stop check of a request handled in-process, without the bus (a warm-up, the original
    flow): it stops when `should_stop` says so, never by default."""

    def __init__(self, should_stop: Callable[[], bool] = lambda: False):
        self.should_stop = should_stop
