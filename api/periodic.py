"""Background evaluations: one run at a fixed period until the server stops, shared by callers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Periodic:
    """Await `action` every `seconds`; a failing run is logged and the next one still happens."""

    def __init__(self, name: str, seconds: float, action: Callable[[], Awaitable[object]]) -> None:
        self.name, self.seconds, self.action = name, seconds, action
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds)
            try:
                await self.action()
            except Exception:  # the loop must outlive any single failure
                log.exception("%s failed", self.name)


class Shared(Generic[T]):
    """A blocking evaluation run on a worker thread; callers arriving while it runs await the same
    run instead of queueing behind it (the period and `/drift?fresh=true` alike)."""

    def __init__(self, action: Callable[[], T]) -> None:
        self.action = action
        self._inflight: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self.action))
            self._inflight.add_done_callback(self._finished)
        return await asyncio.shield(self._inflight)

    def _finished(self, _: asyncio.Future[T]) -> None:
        self._inflight = None
