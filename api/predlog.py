"""The prediction log: every prediction's inputs and outputs, appended to SQLite (WAL mode).

Requests only enqueue rows; one writer thread commits them in batches off the request path.
Shutdown drains the queue, so a restart loses nothing that was answered. Drift detection reads
the same table; several worker processes may append to one file.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api import metrics

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    variant TEXT NOT NULL,
    features TEXT NOT NULL,
    prediction TEXT NOT NULL,
    probabilities TEXT
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
"""


@dataclass(frozen=True)
class Row:
    ts: float
    request_id: str
    model_name: str
    model_version: str
    variant: str
    features: dict[str, Any]
    prediction: Any
    probabilities: dict[str, float] | None


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


class PredictionLog:
    """Batched, durable appends from any thread; `close()` flushes everything queued."""

    def __init__(self, path: Path, flush_rows: int = 512, flush_ms: float = 50.0) -> None:
        self.path = path
        self._flush_rows = flush_rows
        self._flush_seconds = flush_ms / 1000
        self._queue: queue.SimpleQueue[Row | None] = queue.SimpleQueue()
        self._conn = connect(path)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, rows: list[Row]) -> None:
        for row in rows:
            self._queue.put(row)
        metrics.LOG_QUEUE.inc(len(rows))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self._flush_seconds
            while len(batch) < self._flush_rows:
                try:
                    item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[Row]) -> None:
        values = [
            (
                r.ts,
                r.request_id,
                r.model_name,
                r.model_version,
                r.variant,
                json.dumps(r.features, separators=(",", ":")),
                json.dumps(r.prediction),
                None if r.probabilities is None else json.dumps(r.probabilities, separators=(",", ":")),
            )
            for r in batch
        ]
        while True:
            try:
                with self._conn:
                    self._conn.executemany(
                        "INSERT INTO predictions (ts, request_id, model_name, model_version, variant, "
                        "features, prediction, probabilities) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        values,
                    )
                break
            except sqlite3.OperationalError as err:  # a locked database is retried, never dropped
                log.warning("prediction log write failed; retrying", extra={"error": str(err)})
                time.sleep(0.2)
        now = time.time()
        metrics.LOG_QUEUE.dec(len(batch))
        metrics.LOG_ROWS.inc(len(batch))
        for row in batch:
            metrics.LOG_LAG.observe(now - row.ts)


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
