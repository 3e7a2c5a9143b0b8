"""The micro-batcher and the prediction-log writer on their own: a fake model that can be held in
the middle of a call, and a real SQLite file whose write lock another connection holds."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from api.batching import MicroBatcher
from api.predlog import PredictionLog
from pipeline.predictions import Row, count_rows


class FakeModel:
    """Scores a record {"x": v} as (v, None); holds every call while `gate` is closed."""

    name, version = "fake", "1"

    def __init__(self, fail_on: float | None = None) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.batches: list[int] = []
        self.fail_on = fail_on

    def score(self, records: list[dict[str, Any]]) -> list[Any]:
        self.started.set()
        self.gate.wait(10)
        self.batches.append(len(records))
        if any(r["x"] == self.fail_on for r in records):
            raise RuntimeError("the model broke on this batch")
        return [(r["x"], None) for r in records]


def submit(batcher: MicroBatcher, model: FakeModel, x: float) -> Any:
    return batcher.submit(cast(Any, model), "champion", {"x": x})


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


async def started(model: FakeModel) -> None:
    await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 10)


def test_an_idle_batcher_answers_at_once_without_waiting_for_company() -> None:
    model = FakeModel()

    async def scenario() -> float:
        batcher = MicroBatcher(threads=1, max_size=64, max_wait_ms=2000)
        batcher.start()
        try:
            begun = time.perf_counter()
            assert await submit(batcher, model, 1.0) == (1.0, None)
            return time.perf_counter() - begun
        finally:
            await batcher.stop()

    assert run(scenario()) < 0.5  # far below the 2 s a waiting batch could take
    assert model.batches == [1]


def test_batches_formed_while_the_model_is_busy_never_exceed_max_size() -> None:
    model = FakeModel()
    model.gate.clear()

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(threads=1, max_size=8, max_wait_ms=50)
        batcher.start()
        try:
            first = asyncio.ensure_future(submit(batcher, model, 0.0))
            await started(model)
            rest = [asyncio.ensure_future(submit(batcher, model, float(i))) for i in range(1, 50)]
            await asyncio.sleep(0.1)
            model.gate.set()
            return await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()

    answers = run(scenario())
    assert [label for label, _ in answers] == [float(i) for i in range(50)]  # each its own answer
    assert model.batches[0] == 1
    assert max(model.batches) == 8
    assert sum(model.batches) == 50


def test_a_cancelled_request_leaves_the_others_answered_and_the_batcher_working() -> None:
    model = FakeModel()
    model.gate.clear()

    async def scenario() -> tuple[Any, ...]:
        batcher = MicroBatcher(threads=1, max_size=8, max_wait_ms=10)
        batcher.start()
        try:
            held = asyncio.ensure_future(submit(batcher, model, 1.0))
            await started(model)
            gone = asyncio.ensure_future(submit(batcher, model, 2.0))
            kept = asyncio.ensure_future(submit(batcher, model, 3.0))
            await asyncio.sleep(0.05)
            gone.cancel()  # the client went away while its record waited
            model.gate.set()
            outcomes = await asyncio.gather(held, gone, kept, return_exceptions=True)
            later = await submit(batcher, model, 4.0)
            return (*outcomes, later)
        finally:
            await batcher.stop()

    held, gone, kept, later = run(scenario())
    assert held == (1.0, None)
    assert isinstance(gone, asyncio.CancelledError)
    assert kept == (3.0, None)
    assert later == (4.0, None)


def test_a_model_that_raises_fails_its_own_batch_only() -> None:
    model = FakeModel(fail_on=13.0)

    async def scenario() -> tuple[Any, Any]:
        batcher = MicroBatcher(threads=1, max_size=8, max_wait_ms=10)
        batcher.start()
        try:
            broken = await asyncio.gather(
                submit(batcher, model, 13.0),
                return_exceptions=True,
            )
            return broken[0], await submit(batcher, model, 5.0)
        finally:
            await batcher.stop()

    broken, after = run(scenario())
    assert isinstance(broken, RuntimeError)
    assert after == (5.0, None)


def test_stop_waits_for_the_batch_in_flight_then_refuses_work() -> None:
    model = FakeModel()
    model.gate.clear()

    async def scenario() -> tuple[Any, bool]:
        batcher = MicroBatcher(threads=1, max_size=8, max_wait_ms=10)
        batcher.start()
        answer = asyncio.ensure_future(submit(batcher, model, 7.0))
        await started(model)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.1)
        finished_early = stopping.done()
        model.gate.set()
        await stopping
        with pytest.raises(RuntimeError):  # the inference threads are gone
            await batcher.run_in_thread(model.score, [{"x": 1.0}])
        return answer.result(), finished_early

    answer, finished_early = run(scenario())
    assert answer == (7.0, None)
    assert not finished_early


def rows(n: int) -> list[Row]:
    return [Row(time.time(), f"r{i}", "m", "1", "champion", {"x": float(i)}, 0, None) for i in range(n)]


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's long write transaction: every write to the log waits, then fails."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_a_full_queue_drops_and_counts_only_what_does_not_fit_then_writes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    log = PredictionLog(path, flush_rows=4, flush_ms=10, max_pending=10)
    holder = hold_write_lock(path)
    log.append(rows(25))
    status = log.status()
    assert (status.pending_rows, status.dropped_rows) == (10, 15)
    holder.rollback()
    holder.close()
    closed = log.close(timeout=30)
    assert (closed.pending_rows, closed.dropped_rows, closed.error) == (0, 15, None)
    assert count_rows(path) == 10


def test_shutdown_is_bounded_while_writes_fail_and_counts_the_backlog_as_lost(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    log = PredictionLog(path, flush_rows=4, flush_ms=10)
    holder = hold_write_lock(path)
    log.append(rows(7))
    begun = time.monotonic()
    closed = log.close(timeout=1.0)
    waited = time.monotonic() - begun
    holder.rollback()
    holder.close()
    assert waited < 2.0
    assert closed.dropped_rows == 7
    assert closed.pending_rows == 0
    time.sleep(6)  # longer than a write's own lock wait: the abandoned writer must not write them later
    assert count_rows(path) == 0
