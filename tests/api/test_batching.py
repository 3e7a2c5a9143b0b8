"""The micro-batcher on its own: a fake model that can be held in the middle of a call."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import pytest

from api.batching import MicroBatcher


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
