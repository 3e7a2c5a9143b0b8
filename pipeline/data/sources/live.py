"""Live customers of the simulated world, and their true outcomes, released late.

`GET /customers` hands out customers to score, without their label. Each customer's id names the
draw it came from (when its outcomes are known, the batch's size and seed, the world's drift and
concept when it was handed out, its row), so the outcome is recomputed from the id alone: nothing
is stored, a restarted or second data source answers the same, and an outcome exists only for a
customer the world really handed out. `POST /outcomes` releases an outcome once the world's
`outcome_delay_seconds` (as they were when the customer was handed out) have passed, as a real
outcome (a churn, a default) is known only later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from pipeline.data.sources.simulated import ID_COLUMN, TARGET, simulate_churn

MAX_ROWS = 100_000
SCALE = 1_000_000  # drift and concept levels travel as integers (millionths)
LIVE_ID = re.compile(r"L([0-9a-f]{1,16})-(\d{1,6})-(\d{1,19})-(\d{1,7})-(\d{1,7})-(\d{1,6})")


@dataclass(frozen=True)
class Draw:
    """One `GET /customers` answer: when its outcomes are known, how many, which seed, and the
    world's levels when it was handed out."""

    released_ms: int
    n: int
    seed: int
    drift: int
    concept: int

    def customer_id(self, row: int) -> str:
        return f"L{self.released_ms:x}-{self.n}-{self.seed}-{self.drift}-{self.concept}-{row}"


def draw(n: int, seed: int, drift: float, concept: float, released_at: float) -> pd.DataFrame:
    """`n` customers to score (features and id, no label) whose outcomes are known from
    `released_at` (Unix seconds)."""
    issued = Draw(int(released_at * 1000), n, seed, round(drift * SCALE), round(concept * SCALE))
    # The levels as the id carries them, so the outcome recomputed from the id is this draw's.
    frame = simulate_churn(n, seed, issued.drift / SCALE, issued.concept / SCALE).drop(columns=[TARGET])
    frame[ID_COLUMN] = [issued.customer_id(row) for row in range(n)]
    return frame


def parse(customer_id: str) -> tuple[Draw, int] | None:
    """The draw and row a live customer id names; None for anything the world never handed out."""
    match = LIVE_ID.fullmatch(customer_id)
    if match is None:
        return None
    released, n, seed, drift, concept, row = match.groups()
    found = Draw(int(released, 16), int(n), int(seed), int(drift), int(concept))
    valid = (
        1 <= found.n <= MAX_ROWS and found.drift <= SCALE and found.concept <= SCALE and int(row) < found.n
    )
    # One spelling per customer: "-07" is not row 7's id (the outcome is stored against the id).
    canonical = valid and found.customer_id(int(row)) == customer_id
    return (found, int(row)) if canonical else None


@lru_cache(maxsize=32)
def _churned(n: int, seed: int, drift: int, concept: int) -> np.ndarray:
    """The labels of one draw (a DAG asks for many customers of the same few draws)."""
    return simulate_churn(n, seed, drift / SCALE, concept / SCALE)[TARGET].to_numpy()


@dataclass
class Released:
    outcomes: dict[str, int]
    """id → true outcome, for the customers whose delay has passed."""
    pending: list[str]
    """Ids whose outcome is not known yet: ask again later."""
    unknown: list[str]
    """Ids the world never handed out."""


def release(ids: list[str], now: float) -> Released:
    """The outcomes of the customers whose outcomes are known at `now`."""
    found = Released({}, [], [])
    for customer in ids:
        parsed = parse(customer)
        if parsed is None:
            found.unknown.append(customer)
            continue
        origin, row = parsed
        if origin.released_ms / 1000 > now:
            found.pending.append(customer)
            continue
        churned = _churned(origin.n, origin.seed, origin.drift, origin.concept)
        found.outcomes[customer] = int(churned[row])
    return found
