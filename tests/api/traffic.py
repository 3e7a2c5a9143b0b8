"""Load for live tests: client threads whose every answer is kept, asserted on in the test."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


class Traffic:
    """Clients sending single-record predictions until stopped; every answer is kept."""

    def __init__(self, base: str, record: dict[str, Any], clients: int = 4, path: str = "/predict") -> None:
        self.base, self.record, self.path = base, record, path
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.path, json=self.record)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.answers.append((response.status_code, version))
                except httpx.HTTPError as err:
                    self.answers.append((-1, repr(err)))

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
