"""The prediction log's writer: every prediction's inputs and outputs, appended to SQLite (WAL mode).

The table, its rows and its readers are `pipeline.predictions`. Requests only enqueue rows; one
writer thread commits them in batches off the request path. The queue is bounded: while the file
cannot be written (a full or failing disk) rows wait in memory and the write is retried with
back-off; past `max_pending` rows, new rows are dropped and counted, never lost in silence.
Shutdown waits a bounded time for the backlog, then reports what it could not write. What a
SIGKILL can lose is what was answered in the last flush interval.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from api import metrics
from pipeline.predictions import (
    PredictionLogUnavailable,
    PredictionStore,
    Row,
    open_store,
    redacted,
    scrubbed,
)

log = logging.getLogger(__name__)

RETENTION_CHUNK = 1000
RETENTION_PERIOD_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 5.0

__all__ = ["LogStatus", "PredictionLog", "PredictionLogUnavailable"]


@dataclass(frozen=True)
class LogStatus:
    pending_rows: int
    dropped_rows: int
    error: str | None
    """Why the last write failed, while writes are failing; None when the log is healthy."""


class PredictionLog:
    """Batched, bounded appends from any thread; `close()` flushes within a time budget."""

    def __init__(
        self,
        location: str | Path,
        flush_rows: int = 512,
        flush_ms: float = 50.0,
        max_pending: int = 100_000,
        retention_days: float = 0.0,
    ) -> None:
        self.url = str(location)
        self._flush_rows = flush_rows
        self._flush_seconds = flush_ms / 1000
        self._max_pending = max_pending
        self._retention_seconds = retention_days * 86400
        self._pending: deque[Row] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._abandoned = False
        self._dropped = 0
        self._error: str | None = None
        # Opening migrates the table, which takes the write lock: an unwritable log fails here.
        self._store: PredictionStore | None = open_store(self.url)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, rows: list[Row]) -> None:
        with self._cond:
            accepted = rows[: max(self._max_pending - len(self._pending), 0)]
            self._pending.extend(accepted)
            lost = len(rows) - len(accepted)
            self._dropped += lost
            self._cond.notify()
        metrics.LOG_QUEUE.inc(len(accepted))
        if lost:
            metrics.LOG_DROPPED.inc(lost)
            if self._dropped == lost or self._dropped // 1000 != (self._dropped - lost) // 1000:
                log.error(
                    "prediction log full: rows dropped",
                    extra={
                        "dropped_total": self._dropped,
                        "pending": self._max_pending,
                        "error": self._error,
                    },
                )

    def status(self) -> LogStatus:
        with self._cond:
            return LogStatus(len(self._pending), self._dropped, self._error)

    def close(self, timeout: float = 10.0) -> LogStatus:
        """Write what is queued, waiting at most `timeout` seconds; rows still unwritten are counted
        as dropped and reported."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            if self._thread.is_alive():
                self._abandoned = True
                lost = len(self._pending)
                self._dropped += lost
                self._pending.clear()
                metrics.LOG_DROPPED.inc(lost)
                metrics.LOG_QUEUE.dec(lost)
                log.error(
                    "prediction log not flushed in time: rows lost at shutdown",
                    extra={"lost": lost, "seconds": timeout, "error": self._error, "log": redacted(self.url)},
                )
            status = LogStatus(len(self._pending), self._dropped, self._error)
        if not self._thread.is_alive():
            self._disconnect()
        return status

    def _run(self) -> None:
        backoff = 0.0
        retention_due = time.monotonic()
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    if self._retention_seconds and time.monotonic() >= retention_due:
                        break
                    idle = max(retention_due - time.monotonic(), 0.1) if self._retention_seconds else None
                    self._cond.wait(idle)
                if self._abandoned:
                    self._disconnect()
                    return
                if self._stopping and not self._pending:
                    return
                deadline = time.monotonic() + self._flush_seconds
                while (
                    self._pending
                    and len(self._pending) < self._flush_rows
                    and not self._stopping
                    and (remaining := deadline - time.monotonic()) > 0
                ):
                    self._cond.wait(remaining)
                batch = list(itertools.islice(self._pending, self._flush_rows))
            if batch and not self._write(batch):
                backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF_SECONDS)
                with self._cond:
                    self._cond.wait_for(lambda: self._abandoned, backoff)
                continue
            backoff = 0.0
            if self._retention_seconds and time.monotonic() >= retention_due:
                full = self._expire()
                retention_due = time.monotonic() + (0 if full else RETENTION_PERIOD_SECONDS)

    def _write(self, batch: list[Row]) -> bool:
        try:
            store = self._connected()
            store.stage(batch)  # waits for the write lock, up to the store's timeout
            with self._cond:
                # Commit and dequeue under the lock close() takes to give up: rows it counted as
                # lost are never written after all, and rows written are never counted as lost.
                if self._abandoned:
                    store.rollback()
                    return True
                store.commit()
                for _ in batch:
                    self._pending.popleft()
                recovered, self._error = self._error is not None, None
        # A full disk, an I/O error, a lock held too long, a database gone: retried, never dropped.
        except Exception as err:
            self._disconnect()  # a broken connection is opened again on the next attempt
            metrics.LOG_WRITE_FAILURES.inc()
            with self._cond:
                first = self._error is None
                self._error = f"{type(err).__name__}: {err}"
            metrics.LOG_DEGRADED.set(1)
            if first:
                log.error(
                    "prediction log write failed; rows are kept in memory and retried",
                    extra={"error": scrubbed(str(err), self.url), "log": redacted(self.url)},
                )
            return False
        now = time.time()
        if recovered:
            log.info("prediction log writes succeed again", extra={"log": redacted(self.url)})
        metrics.LOG_DEGRADED.set(0)
        metrics.LOG_QUEUE.dec(len(batch))
        metrics.LOG_ROWS.inc(len(batch))
        for row in batch:
            metrics.LOG_LAG.observe(now - row.ts)
        return True

    def _connected(self) -> PredictionStore:
        if self._store is None:
            self._store = open_store(self.url)
        return self._store

    def _disconnect(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.rollback()
                store.close()
            except Exception:  # already broken: nothing left to release
                log.debug("prediction log connection closed while broken")

    def _expire(self) -> bool:
        """Delete one chunk of rows past retention; True when there may be more."""
        try:
            deleted = self._connected().expire(time.time() - self._retention_seconds, RETENTION_CHUNK)
        except Exception as err:
            self._disconnect()
            log.warning("prediction log retention failed", extra={"error": scrubbed(str(err), self.url)})
            return False
        if deleted:
            metrics.LOG_EXPIRED.inc(deleted)
        return bool(deleted == RETENTION_CHUNK)
