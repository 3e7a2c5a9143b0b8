"""The memory budget's policy: least recently used out, never a model answering a request."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from api.residency import Residency

CLOCK = itertools.count()


class Manager:
    """What the budget reads and does to a model: its name, residency, last use, load and unload.
    (The real ModelManager's loads are the tests in test_models.py.)"""

    def __init__(self, name: str) -> None:
        self.name, self.resident, self.last_used = name, True, 0.0
        self.loads = 0

    def touch(self) -> None:
        self.last_used = float(next(CLOCK))

    async def load(self) -> Any:
        self.resident, self.loads = True, self.loads + 1
        return type("Result", (), {"detail": "loaded"})()

    async def unload(self) -> None:
        self.resident = False


def test_past_the_budget_the_least_recently_used_idle_model_goes() -> None:
    async def scenario() -> tuple[list[bool], list[bool], list[bool]]:
        managers = {name: Manager(name) for name in "abc"}
        residency = Residency(managers, 2)  # type: ignore[arg-type]
        await residency.start()
        first = [m.resident for m in managers.values()]
        async with residency.hold("c"):  # c loads; a and b are idle, a the least recently used
            pass
        second = [m.resident for m in managers.values()]
        async with residency.hold("b"), residency.hold("a"):  # a loads while b answers: c goes
            pass
        return first, second, [m.resident for m in managers.values()]

    first, second, third = asyncio.run(scenario())
    assert first == [True, True, False]
    assert second == [False, True, True]
    assert third == [True, True, False]


def test_a_model_answering_a_request_is_never_unloaded_under_it() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        managers = {name: Manager(name) for name in "ab"}
        residency = Residency(managers, 1)  # type: ignore[arg-type]
        await residency.start()
        async with residency.hold("a"):
            async with residency.hold("b"):  # b loads while a answers: the budget waits for a
                during = managers["a"].resident
            after_b = managers["a"].resident
        return during, after_b, residency.unloads["a"]

    during, after_b, unloads = asyncio.run(scenario())
    assert during is True
    assert after_b is True  # still answering its own request
    assert unloads == 0
