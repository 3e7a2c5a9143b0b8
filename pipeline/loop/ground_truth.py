"""Ground truth, collected: the outcomes the world has released for customers the model scored.

`python -m pipeline ground-truth` (the ground_truth DAG's task) reads the prediction log for
answered predictions that carry an entity id and have no outcome yet (within `--since`), asks the
data-source service what became of those customers (`POST /outcomes`), and sends the outcomes it
released to the model server (`POST /models/<name>/feedback`, by entity id: the model's own
predictions only). Idempotent: an outcome the server already holds is a duplicate there and is not
asked for again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from core.errors import BitloopError
from core.predictions.access import read_unlabelled

log = logging.getLogger(__name__)
CHUNK = 1000  # ids per request: the model server's default batch limit


class GroundTruthError(BitloopError, RuntimeError):
    """A service could not be asked; the message names it and says what to check."""


def _chunks(items: list[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _post(client: httpx.Client, url: str, body: dict[str, Any], service: str, setting: str) -> Any:
    try:
        answer = client.post(url, json=body)
    except httpx.HTTPError as err:
        raise GroundTruthError(f"the {service} at {url} is not reachable ({err}): check {setting}") from None
    if answer.status_code >= 400:
        raise GroundTruthError(f"the {service} answered {answer.status_code} to {url}: {answer.text[:300]}")
    return answer.json()


def collect(
    prediction_log: str,
    model_name: str,
    source_url: str,
    api_url: str,
    api_key: str | None,
    since: datetime,
    limit: int = 100_000,
) -> dict[str, Any]:
    """Move the released outcomes of waiting predictions to the model server's feedback route of
    `model_name` (which finds that model's predictions only); counts of each step."""
    feedback = f"{api_url}/models/{quote(model_name, safe='')}/feedback"
    ids = read_unlabelled(prediction_log, model_name, since=since.timestamp(), limit=limit)
    counts: Counter[str] = Counter(waiting=len(ids))
    released: list[dict[str, Any]] = []
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(timeout=60, headers=headers) as client:
        for chunk in _chunks(ids):
            found = _post(
                client, f"{source_url}/outcomes", {"ids": chunk}, "data source", "BITLOOP_DATA_SOURCE_URL"
            )
            released += found["outcomes"]
            counts["pending"] += len(found["pending"])
            counts["unknown_to_source"] += len(found["unknown"])
        counts["released"] = len(released)
        for chunk in _chunks(released):
            outcomes = [{"id": o["id"], "outcome": o["outcome"]} for o in chunk]
            answer = _post(client, feedback, {"outcomes": outcomes}, "model server", "BITLOOP_API_URL")
            for status in ("recorded", "invalid", "duplicate", "conflict", "unknown"):
                counts[status] += int(answer.get(status, 0))  # `invalid`: the server refused an outcome
            log.info("outcomes sent", extra={"sent": len(outcomes), "recorded": counts["recorded"]})
    return {"status": "collected", **counts}
