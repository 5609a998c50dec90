"""What every backend declares: the capabilities a stage and the worker read, with their defaults."""

from __future__ import annotations


class Backend:
    """A backend implements load() (heavy, never in the constructor) and its model call, and
    sets what it has of these; every backend subclasses it."""

    device: str = "cpu"  # as resolved by load()
    thread_safe = False  # its model call may run on several threads at once
    # seconds the backend spent warming itself up while loading; None: it did not (the stage then
    # warms it up with one request)
    warmup_s: float | None = None

    def load(self) -> None:
        raise NotImplementedError
