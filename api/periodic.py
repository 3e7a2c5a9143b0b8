"""A background task that runs an action at a fixed period until the server stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


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
