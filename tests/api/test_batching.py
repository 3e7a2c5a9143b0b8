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
        self.entered = 0
        """Calls begun (each waits at the gate)."""

    def familiar(self, record: dict[str, Any]) -> bool:
        """Values of 100 and above stand for a category unseen in training."""
        return bool(record["x"] < 100)

    def score(self, records: list[dict[str, Any]]) -> list[Any]:
        self.entered += 1
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
    """Two batches in the model at once, on two threads: the one holding the record the model breaks
    on fails, the other is answered, and so is the next request."""
    model = FakeModel(fail_on=13.0)
    model.gate.clear()

    async def scenario() -> tuple[list[Any], int, Any]:
        batcher = MicroBatcher(threads=2, max_size=8, max_wait_ms=10)
        batcher.start()
        try:
            broken = asyncio.ensure_future(submit(batcher, model, 13.0))
            await started(model)  # the first batch, [13.0], is held in the model
            company = [asyncio.ensure_future(submit(batcher, model, x)) for x in (2.0, 3.0)]
            deadline = time.monotonic() + 10
            while model.entered < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the second batch reaches the model on the other thread
            in_flight = model.entered
            model.gate.set()
            outcomes = await asyncio.gather(broken, *company, return_exceptions=True)
            return outcomes, in_flight, await submit(batcher, model, 5.0)
        finally:
            await batcher.stop()

    (broken, two, three), in_flight, after = run(scenario())
    assert in_flight == 2  # both batches were in the model together
    assert isinstance(broken, RuntimeError)
    assert (two, three) == ((2.0, None), (3.0, None))
    assert after == (5.0, None)
    assert sorted(model.batches[:2]) == [1, 2]


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


def test_records_with_unseen_values_are_scored_after_the_others_in_their_own_call() -> None:
    """A batch formed while the model was busy holds familiar records and one with a value unseen in
    training: the familiar ones share a call and are answered first; the other gets its own."""
    model = FakeModel()
    model.gate.clear()

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(threads=1, max_size=8, max_wait_ms=50)
        batcher.start()
        try:
            first = asyncio.ensure_future(submit(batcher, model, 0.0))
            await started(model)  # the model is busy: the next three wait together
            rest = [asyncio.ensure_future(submit(batcher, model, x)) for x in (1.0, 500.0, 2.0)]
            await asyncio.sleep(0.1)
            model.gate.set()
            return list(await asyncio.gather(first, *rest))
        finally:
            await batcher.stop()

    answers = run(scenario())
    assert answers == [(0.0, None), (1.0, None), (500.0, None), (2.0, None)]
    assert model.batches == [1, 2, 1]  # the familiar pair first, then the unseen value alone
