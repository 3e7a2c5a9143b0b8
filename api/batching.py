"""Adaptive micro-batching: concurrent single-record requests share one model call.

Batches form while the previous batch is being computed, so an idle server scores a request at
once and a busy one answers many per call. With several requests already waiting, the batcher
waits at most `max_wait_ms` for more, up to `max_size` rows. Inference runs in worker threads,
never on the event loop. A record the model cannot score fails alone: `ServedModel.score` finds it
by bisection and the others in its batch are answered. Records holding a category value unseen in
training are scored after the others, in a call of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from threadpoolctl import threadpool_limits

from api import metrics
from api.model import Scored, ServedModel

log = logging.getLogger(__name__)


def _single_native_thread() -> None:
    """One OpenMP/BLAS thread per inference thread (the limit is per calling thread); set once
    because threadpoolctl's context manager costs milliseconds per call."""
    threadpool_limits(limits=1)


@dataclass
class _Item:
    model: ServedModel
    variant: str
    record: dict[str, Any]
    future: asyncio.Future[Scored]


class MicroBatcher:
    def __init__(self, threads: int, max_size: int, max_wait_ms: float) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="inference", initializer=_single_native_thread
        )
        self._slots = asyncio.Semaphore(threads)
        self._max_size = max_size
        self._max_wait = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, model: ServedModel, variant: str, record: dict[str, Any]) -> Scored:
        future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(model, variant, record, future))
        return await future

    async def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call on the inference threads (used for whole batches from /predict/batch)."""
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _drain(self, batch: list[_Item]) -> None:
        while len(batch) < self._max_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            await self._slots.acquire()
            batch = [first]
            self._drain(batch)
            if 1 < len(batch) < self._max_size and self._max_wait > 0:
                deadline = loop.time() + self._max_wait
                while len(batch) < self._max_size and (remaining := deadline - loop.time()) > 0:
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
                    self._drain(batch)
            task = asyncio.create_task(self._score(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _score(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Per model, the records with values seen in training first, then the others: a record
            # its model may refuse never delays, nor costs a bisection of, the familiar ones.
            groups: dict[tuple[int, bool], list[_Item]] = {}
            for item in batch:
                key = (id(item.model), not item.model.familiar(item.record))
                groups.setdefault(key, []).append(item)
            for _, items in sorted(groups.items(), key=lambda group: group[0][1]):
                model, variant = items[0].model, items[0].variant
                started = time.perf_counter()
                try:
                    outcomes = await loop.run_in_executor(
                        self._executor, model.score, [i.record for i in items]
                    )
                except Exception as err:  # score() isolates model failures; this is the batcher's own
                    log.exception("inference failed", extra={"model": model.name, "version": model.version})
                    outcomes = [err] * len(items)
                metrics.INFERENCE.labels(model.name, model.version, variant).observe(
                    time.perf_counter() - started
                )
                metrics.BATCH_ROWS.labels(model.name, variant).observe(len(items))
                for item, outcome in zip(items, outcomes, strict=True):
                    if item.future.done():  # the client went away
                        continue
                    if isinstance(outcome, Exception):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome)
        finally:
            self._slots.release()
