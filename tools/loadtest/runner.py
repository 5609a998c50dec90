"""Scheduling turns: N turns at concurrency C (closed loop), a fixed arrival rate (open loop), or a sweep.

Every mode is bounded by the number of turns and by the run's time limit: no turn starts after
the deadline, and a turn still running at the deadline is cut there (error kind `deadline`).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass, field, replace

from tools.loadtest.client import AudioInput, TurnResult, new_user_session, run_turn


@dataclass
class RunConfig:
    url: str = "http://127.0.0.1:7860"
    inputs: list[AudioInput] = field(default_factory=list)
    turns: int = 20
    concurrency: int = 1
    rate: float | None = None  # turns per second; open loop when set
    max_seconds: float = 600.0
    turn_timeout: float = 120.0
    persona: str = "wildlife_expert"
    quiet: bool = False
    fresh: bool = False  # a new conversation for every turn (no history carried between questions)


@dataclass
class RunResult:
    mode: str  # concurrency | rate
    level: float  # the concurrency, or the rate
    turns: list[TurnResult]
    wall_s: float
    planned_turns: int
    stopped_by_deadline: bool = False


class _Progress:
    """tqdm on stderr, or nothing with --quiet."""

    def __init__(self, total: int, label: str, quiet: bool):
        self.bar = None
        self.errors = 0
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="turn", file=sys.stderr, dynamic_ncols=True)

    def update(self, result: TurnResult) -> None:
        if not result.ok:
            self.errors += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(errors=self.errors, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Scheduler:
    def __init__(self, config: RunConfig, deadline: float, t0: float):
        self.config = config
        self.deadline = deadline
        self.t0 = t0
        self.counter = itertools.count()
        self.inputs = itertools.cycle(config.inputs)
        self.results: list[TurnResult] = []

    def claim(self) -> int | None:
        """The next turn number, or None when all N are taken or the time is up."""
        if time.monotonic() >= self.deadline:
            return None
        n = next(self.counter)
        return n if n < self.config.turns else None

    async def one(self, session, number: int, user: int, progress: _Progress) -> TurnResult:
        audio = next(self.inputs)
        remaining = self.deadline - time.monotonic()
        cut_by_deadline = remaining < self.config.turn_timeout
        result = TurnResult(turn=number, user=user, input=audio.name, started_s=round(time.monotonic() - self.t0, 6))
        if self.config.fresh:
            session.cookie_jar.clear()  # the gateway starts a new conversation without the cookie
        await run_turn(session, self.config.url, audio, self.config.persona,
                       timeout=max(0.01, min(self.config.turn_timeout, remaining)), result=result,
                       timeout_kind="deadline" if cut_by_deadline else "timeout")
        self.results.append(result)
        progress.update(result)
        return result


async def run_concurrency(config: RunConfig, concurrency: int | None = None,
                          deadline: float | None = None) -> RunResult:
    """C simulated users, each doing turns back to back until N turns are done (or the time is up)."""
    level = concurrency or config.concurrency
    t0 = time.monotonic()
    deadline = deadline if deadline is not None else t0 + config.max_seconds
    sched = _Scheduler(config, deadline, t0)
    progress = _Progress(config.turns, f"c={level}", config.quiet)

    async def user(index: int) -> None:
        async with new_user_session(config.turn_timeout) as session:
            while (number := sched.claim()) is not None:
                await sched.one(session, number, index, progress)

    try:
        await asyncio.gather(*(user(i) for i in range(level)))
    finally:
        progress.close()
    wall = time.monotonic() - t0
    results = sorted(sched.results, key=lambda r: r.turn)
    return RunResult("concurrency", level, results, wall, config.turns,
                     stopped_by_deadline=len(results) < config.turns)


async def run_rate(config: RunConfig, deadline: float | None = None) -> RunResult:
    """Open loop: a new user arrives every 1/R seconds, whatever the others are doing."""
    assert config.rate and config.rate > 0
    t0 = time.monotonic()
    deadline = deadline if deadline is not None else t0 + config.max_seconds
    sched = _Scheduler(config, deadline, t0)
    progress = _Progress(config.turns, f"r={config.rate:g}/s", config.quiet)
    interval = 1.0 / config.rate

    async def arrival(number: int) -> None:
        async with new_user_session(config.turn_timeout) as session:
            await sched.one(session, number, number, progress)

    tasks: list[asyncio.Task] = []
    try:
        while (number := sched.claim()) is not None:
            tasks.append(asyncio.create_task(arrival(number)))
            wake = t0 + (number + 1) * interval
            delay = min(wake, deadline) - time.monotonic()
            if number + 1 < config.turns and delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        progress.close()
    wall = time.monotonic() - t0
    results = sorted(sched.results, key=lambda r: r.turn)
    return RunResult("rate", config.rate, results, wall, config.turns,
                     stopped_by_deadline=len(results) < config.turns)


async def run_sweep(config: RunConfig, levels: list[int]) -> list[RunResult]:
    """The concurrency mode once per level, N turns each; --max-seconds bounds the whole sweep."""
    deadline = time.monotonic() + config.max_seconds
    runs = []
    for level in levels:
        if time.monotonic() >= deadline:
            break
        runs.append(await run_concurrency(config, level, deadline=deadline))
    return runs


async def run_compare(config: RunConfig, baseline_url: str, levels: list[int]) -> tuple[list[RunResult], list[RunResult]]:
    """Side by side: at each concurrency level, the same turns against config.url, then against
    baseline_url (the original flow), so both see the same files, machine and moment.
    --max-seconds bounds the whole comparison."""
    deadline = time.monotonic() + config.max_seconds
    product, baseline = [], []
    for level in levels:
        for url, runs in ((config.url, product), (baseline_url, baseline)):
            if time.monotonic() >= deadline:
                return product, baseline
            runs.append(await run_concurrency(replace(config, url=url), level, deadline=deadline))
    return product, baseline


async def run(config: RunConfig, sweep: list[int] | None = None) -> list[RunResult]:
    if sweep:
        return await run_sweep(config, sweep)
    if config.rate:
        return [await run_rate(config)]
    return [await run_concurrency(config)]
