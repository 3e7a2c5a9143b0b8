"""Which served models keep their versions in memory: at most BITLOOP_API_MAX_LOADED_MODELS of them.

Past the budget the least recently used model is unloaded (its registry check pauses too) and
loaded again by the next request that asks for it, which waits for the load: a cold load, counted
and timed in metrics and shown in GET /models. A model is never unloaded while a request for it is
being answered (`hold`): with more models asked at the same moment than the budget, the budget is
exceeded until they are answered. Budget 0 keeps every model loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping

from api import metrics
from api.manager import ModelManager

log = logging.getLogger(__name__)


class Residency:
    def __init__(self, managers: Mapping[str, ModelManager], limit: int) -> None:
        self.managers = managers
        self.limit = limit
        self.cold_loads: dict[str, int] = dict.fromkeys(managers, 0)
        self.unloads: dict[str, int] = dict.fromkeys(managers, 0)
        self.holds: dict[str, int] = dict.fromkeys(managers, 0)
        """Requests being answered per model: a held model is not unloaded under them."""
        self._lock = asyncio.Lock()
        for name, manager in managers.items():
            metrics.MODEL_RESIDENT.labels(name).set(1 if manager.resident else 0)

    def initial(self) -> list[str]:
        """The models to load at start: the first `limit` (the default model first), or all."""
        names = list(self.managers)
        return names if self.limit == 0 else names[: self.limit]

    async def start(self) -> None:
        """Mark the models past the budget unloaded before anything loads them."""
        for name in list(self.managers)[len(self.initial()) :]:
            await self.managers[name].unload()
            metrics.MODEL_RESIDENT.labels(name).set(0)

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Around a request for `name`: load it if it was unloaded, keep it loaded until the request
        is answered, and keep the budget."""
        self.holds[name] += 1
        try:
            await self._use(name)
            yield
        finally:
            self.holds[name] -= 1

    async def _use(self, name: str) -> None:
        manager = self.managers[name]
        manager.touch()
        if manager.resident:
            return
        async with self._lock:  # one load at a time: two requests for an unloaded model load it once
            if not manager.resident:
                started = time.perf_counter()
                result = await manager.load()
                waited = time.perf_counter() - started
                self.cold_loads[name] += 1
                metrics.COLD_LOADS.labels(name).observe(waited)
                metrics.MODEL_RESIDENT.labels(name).set(1)
                log.info(
                    "model loaded on demand",
                    extra={"model": name, "seconds": round(waited, 3), "detail": result.detail},
                )
            await self._keep_budget(name)

    async def _keep_budget(self, keep: str) -> None:
        if self.limit == 0:
            return
        resident = [m for n, m in self.managers.items() if m.resident and n != keep]
        # The least recently used first; a model answering a request now is not a candidate.
        idle = sorted((m for m in resident if self.holds[m.name] == 0), key=lambda m: m.last_used)
        while idle and len(resident) + 1 > self.limit:
            oldest = idle.pop(0)
            resident.remove(oldest)
            await oldest.unload()
            self.unloads[oldest.name] += 1
            metrics.MODEL_UNLOADS.labels(oldest.name).inc()
            metrics.MODEL_RESIDENT.labels(oldest.name).set(0)
            log.info(
                "model unloaded: the least recently used past the budget",
                extra={"model": oldest.name, "budget": self.limit},
            )
