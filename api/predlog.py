"""The prediction log's writer: every prediction's inputs and outputs, committed in segments.

The table, its rows and its readers are `core.predictions`. Requests only append rows to the
open segment, in memory and, with a spill directory, in the segment's file (`api/spill.py`)
before the answer leaves; one writer thread commits a segment per transaction off the request
path and then deletes its file. While the log cannot be written (a database gone or slow, a full
disk) segments wait and the write is retried with back-off: up to `max_pending` rows in memory,
beyond that on disk only (up to the spill budget), beyond both dropped and counted, never lost in
silence. Shutdown waits a bounded time, then leaves what it could not write on disk for the next
writer to adopt; only rows that had no room on disk are lost, and they are reported.

A row the store refuses for what it holds (a value it cannot keep) never blocks the others: the
writer bisects the segment to find it, as the micro-batcher does with a poison record, keeps it in
the store's quarantine table with the reason (`bitloop_quarantine`, the row as escaped JSON text),
counts it and writes the rest. Only faults of the store itself keep rows pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from api import metrics
from api.settings import ApiSettings
from api.spill import SpillDirectory, encode
from core.predictions.backends import open_store
from core.predictions.rows import PredictionLogUnavailable, Row, redacted, scrubbed
from core.predictions.store import PredictionStore

log = logging.getLogger(__name__)

RETENTION_CHUNK = 1000
RETENTION_PERIOD_SECONDS = 60.0
ADOPTION_PERIOD_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 5.0

__all__ = ["LogStatus", "PredictionLog", "PredictionLogUnavailable"]


@dataclass(frozen=True)
class LogStatus:
    pending_rows: int
    """Answered and not yet written (in memory or on disk); after `close`, left on disk for the next start."""
    spilled_rows: int
    """Of the pending rows, those held on disk only, past the memory budget."""
    dropped_rows: int
    error: str | None
    """Why the last write failed, while writes are failing; None when the log is healthy."""
    quarantined_rows: int = 0
    """Rows the store refused for what they hold, kept in its quarantine table, since start-up."""
    catching_up: bool = False
    """Writes succeed again after failing, and the rows that waited meanwhile are still pending."""


@dataclass
class Segment:
    """The rows appended between two flushes, committed in one transaction."""

    writer: str
    seq: int
    rows: list[Row] | None
    """None once held on disk only."""
    count: int
    on_disk: bool
    started: float
    """time.monotonic() of its first row."""


class PredictionLog:
    """Bounded appends from any thread; `close()` flushes within a time budget."""

    def __init__(
        self,
        location: str | Path,
        flush_rows: int = 512,
        flush_ms: float = 50.0,
        max_pending: int = 100_000,
        retention_days: float = 0.0,
        spill_dir: Path | None = None,
        spill_max_bytes: int = 1 << 30,
        adopt_every: float = ADOPTION_PERIOD_SECONDS,
    ) -> None:
        self.url = str(location)
        self._flush_rows = flush_rows
        self._flush_seconds = flush_ms / 1000
        self._max_pending = max_pending
        self._retention_seconds = retention_days * 86400
        self._adopt_every = adopt_every
        self._cond = threading.Condition()
        self._open: Segment | None = None
        self._sealed: deque[Segment] = deque()
        self._next_seq = 0
        self._pending = 0
        self._resident = 0
        self._spilled = 0
        self._stopping = False
        self._abandoned = False
        self._dropped = 0
        self._quarantined = 0
        self._catching_up = False
        self._error: str | None = None
        # Opening migrates the table, which takes the write lock: an unwritable log fails here.
        self._store: PredictionStore | None = open_store(self.url)
        self._spill = None if spill_dir is None else SpillDirectory(spill_dir, spill_max_bytes)
        self._writer = self._spill.writer if self._spill else "memory"
        self._adopted: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> PredictionLog:
        """The log the server's settings describe (`BITLOOP_PREDICTION_LOG_*`)."""
        return cls(
            settings.prediction_log_url,
            flush_rows=settings.prediction_log_flush_rows,
            flush_ms=settings.prediction_log_flush_ms,
            max_pending=settings.prediction_log_max_pending_rows,
            retention_days=settings.prediction_log_retention_days,
            spill_dir=settings.prediction_log_spill_dir,
            spill_max_bytes=settings.prediction_log_spill_max_bytes,
        )

    def append(self, rows: list[Row]) -> None:
        # Encoded outside the lock, unless the open segment lives in memory only (after a disk fault).
        current = self._open
        to_disk = self._spill is not None and (current is None or current.on_disk or current.count == 0)
        data = encode(rows) if to_disk else None
        with self._cond:
            segment = self._open
            if segment is None:
                segment = self._new_segment()
            written = False
            if self._spill is not None and (segment.on_disk or segment.count == 0):
                written = self._spill.append(segment.seq, encode(rows) if data is None else data)
                if not written and segment.on_disk:  # the disk refused: this segment ends here
                    self._seal()
                    segment = self._new_segment()
                segment.on_disk = written
            fits = self._resident + len(rows) <= self._max_pending
            if segment.rows is not None and fits:
                segment.rows.extend(rows)
                self._resident += len(rows)
            elif written:
                if segment.rows is not None:  # past the memory budget: the whole segment stays on disk
                    self._resident -= len(segment.rows)
                    self._spilled += len(segment.rows)
                    segment.rows = None
                self._spilled += len(rows)
            else:
                self._lose(len(rows), "prediction log full: rows dropped (no room in memory or on disk)")
                return
            segment.count += len(rows)
            self._pending += len(rows)
            if segment.count >= self._flush_rows:
                self._seal()
            self._cond.notify()
            self._publish()

    def status(self) -> LogStatus:
        with self._cond:
            return self._status()

    def _status(self) -> LogStatus:
        return LogStatus(
            self._pending, self._spilled, self._dropped, self._error, self._quarantined, self._catching_up
        )

    def close(self, timeout: float = 10.0) -> LogStatus:
        """Write what is pending, waiting at most `timeout` seconds. What is still unwritten stays on
        disk for the next writer on the spill directory; what exists only in memory is reported lost."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            if self._thread.is_alive():
                self._abandoned = True
                self._cond.notify()
                if self._open is not None:
                    self._seal()
                in_memory = [s for s in self._sealed if not s.on_disk]
                for segment in in_memory:
                    self._sealed.remove(segment)
                    self._forget(segment)
                lost = sum(s.count for s in in_memory)
                if lost:
                    self._lose(lost, "prediction log not flushed in time: rows lost at shutdown", always=True)
                if self._pending:
                    log.warning(
                        "prediction log not flushed in time: rows kept on disk for the next start",
                        extra={"kept": self._pending, "seconds": timeout, "error": self._error},
                    )
            status = self._status()
            if self._spill is not None:
                for writer, fd in self._adopted.items():
                    self._spill.release(writer, fd)
                self._adopted.clear()
                self._spill.close()
        if not self._thread.is_alive():
            self._disconnect()
        return status

    def _new_segment(self) -> Segment:
        segment = Segment(self._writer, self._next_seq, [], 0, False, time.monotonic())
        self._next_seq += 1
        self._open = segment
        return segment

    def _seal(self) -> None:
        if self._open is not None:
            self._sealed.append(self._open)
            self._open = None
        if self._spill is not None:
            self._spill.seal()

    def _forget(self, segment: Segment) -> None:
        """Take a written (or given-up) segment out of the counts."""
        self._pending -= segment.count
        if segment.rows is None:
            self._spilled -= segment.count
        else:
            self._resident -= segment.count

    def _lose(self, rows: int, message: str, always: bool = False) -> None:
        """Count rows that will never be written; the first and every thousandth are logged."""
        before, self._dropped = self._dropped, self._dropped + rows
        metrics.LOG_DROPPED.inc(rows)
        if always or before == 0 or before // 1000 != self._dropped // 1000:
            log.error(message, extra={"lost": rows, "dropped_total": self._dropped, "error": self._error})

    def _publish(self) -> None:
        metrics.LOG_QUEUE.set(self._pending)
        metrics.LOG_SPILLED.set(self._spilled)

    def _run(self) -> None:
        backoff = 0.0
        retention_due = adoption_due = time.monotonic()
        while True:
            with self._cond:
                while True:
                    if self._abandoned:
                        self._disconnect()
                        return
                    now = time.monotonic()
                    if self._open is not None and (
                        self._stopping or now - self._open.started >= self._flush_seconds
                    ):
                        self._seal()
                    if self._sealed or (self._stopping and self._open is None):
                        break
                    if (self._retention_seconds and now >= retention_due) or (
                        self._spill is not None and now >= adoption_due
                    ):
                        break
                    wakes = [retention_due if self._retention_seconds else None]
                    wakes.append(adoption_due if self._spill is not None else None)
                    if self._open is not None:
                        wakes.append(self._open.started + self._flush_seconds)
                    due = [w for w in wakes if w is not None]
                    self._cond.wait(max(min(due) - now, 0.001) if due else None)
                segment = self._sealed[0] if self._sealed else None
                if segment is None and self._stopping:
                    return
            if segment is not None:
                if not self._write(segment):
                    backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF_SECONDS)
                    with self._cond:
                        self._cond.wait_for(lambda: self._abandoned, backoff)
                    continue
                backoff = 0.0
            now = time.monotonic()
            if self._spill is not None and now >= adoption_due:
                self._adopt()
                adoption_due = now + self._adopt_every
            if self._retention_seconds and now >= retention_due:
                full = self._expire()
                retention_due = time.monotonic() + (0 if full else RETENTION_PERIOD_SECONDS)

    def _write(self, segment: Segment) -> bool:
        rows = segment.rows
        if rows is None and self._spill is not None:  # a segment held on disk only
            try:
                rows = self._spill.read(segment.seq, segment.writer)
            except (OSError, ValueError, TypeError) as err:  # deleted or damaged by hand: never retried
                with self._cond:
                    self._sealed.popleft()
                    self._forget(segment)
                    self._lose(segment.count, f"prediction spill segment unreadable ({err}): rows lost", True)
                    self._publish()
                return True
        rows = rows or []
        refused: list[tuple[Row, str]] = []
        try:
            store = self._connected()
            try:
                self._stage(store, segment, rows)
            except Exception as err:
                if not store.refuses_row(err):
                    raise
                store.rollback()
                rows, refused = self._isolate(store, rows)
                self._stage(store, segment, rows)
                store.quarantine(refused)
            with self._cond:
                # Commit and dequeue under the lock close() takes to give up: a segment it left on
                # disk or counted as lost is never written after all, and a written one is neither.
                if self._abandoned:
                    store.rollback()
                    return True
                store.commit()
                self._sealed.popleft()
                self._forget(segment)
                recovered, self._error = self._error is not None, None
                self._catching_up = (self._catching_up or recovered) and self._pending > self._flush_rows
                self._quarantined += len(refused)
                if self._spill is not None and segment.on_disk:  # a failed first append left no file
                    self._spill.remove(segment.seq, segment.writer)
                    self._release_if_done(segment.writer)
                self._publish()
        # A full disk, an I/O error, a lock held too long, a database gone: retried, never dropped.
        except Exception as err:
            self._disconnect()  # a broken connection is opened again on the next attempt
            metrics.LOG_WRITE_FAILURES.inc()
            with self._cond:
                first = self._error is None
                self._error = scrubbed(f"{type(err).__name__}: {err}", self.url)
            metrics.LOG_DEGRADED.set(1)
            if first:
                log.error(
                    "prediction log write failed; rows are kept and retried",
                    extra={"error": self._error, "log": redacted(self.url)},
                )
            return False
        if refused:
            metrics.LOG_QUARANTINED.inc(len(refused))
            log.error(
                "prediction log refused rows for what they hold: quarantined, the rest written",
                extra={"quarantined": len(refused), "reason": refused[0][1], "table": "bitloop_quarantine"},
            )
        now = time.time()
        if recovered:
            log.info("prediction log writes succeed again", extra={"log": redacted(self.url)})
        metrics.LOG_DEGRADED.set(0)
        metrics.LOG_ROWS.inc(len(rows))
        for row in rows:
            metrics.LOG_LAG.observe(now - row.ts)
        return True

    @staticmethod
    def _stage(store: PredictionStore, segment: Segment, rows: list[Row]) -> None:
        # Only a segment with a file is marked: a mark is what keeps a replayed file from being
        # written twice. Waits for the write lock, up to the store's timeout.
        if segment.on_disk:
            store.stage_segment(rows, segment.writer, segment.seq)
        else:
            store.stage(rows)

    def _isolate(self, store: PredictionStore, rows: list[Row]) -> tuple[list[Row], list[tuple[Row, str]]]:
        """The rows the store takes, in order, and those it refuses with the reason: halves staged
        and rolled back until each refusal is one row (a few dozen trial inserts for one poison row in
        a 512-row segment). A fault of the store itself on the way is raised: nothing is decided."""
        taken: list[Row] = []
        refused: list[tuple[Row, str]] = []
        parts = [rows]
        while parts:
            part = parts.pop()
            try:
                store.stage(part)
            except Exception as err:
                store.rollback()
                if not store.refuses_row(err):
                    raise
                if len(part) == 1:
                    refused.append((part[0], scrubbed(f"{type(err).__name__}: {err}", self.url)))
                else:
                    middle = len(part) // 2
                    parts += [part[middle:], part[:middle]]  # the first half is tried first
                continue
            store.rollback()
            taken += part
        return taken, refused

    def _adopt(self) -> None:
        """Queue the segments of spill writers that are gone, skipping those the log already holds."""
        spill = self._spill
        if spill is None:
            return
        with self._cond:
            found = spill.adopt()
        if not found:
            return
        try:
            store = self._connected()
            committed = {writer: store.committed_seq(writer) for writer in found}
        except Exception as err:  # the log is down: try again next period
            self._disconnect()
            with self._cond:
                for writer, (fd, _) in found.items():
                    spill.release(writer, fd)
            log.warning("cannot adopt spilled segments yet", extra={"error": scrubbed(str(err), self.url)})
            return
        with self._cond:
            queued: list[Segment] = []
            for writer, (fd, segments) in found.items():
                self._adopted[writer] = fd
                for file in segments:
                    if file.seq <= committed[writer]:  # written just before its writer died
                        spill.remove(file.seq, writer)
                        continue
                    count = file.path.read_bytes().count(b"\n")
                    queued.append(Segment(writer, file.seq, None, count, True, time.monotonic()))
            self._sealed.extendleft(reversed(queued))
            for writer in found:
                self._release_if_done(writer)
            adopted = sum(s.count for s in queued)
            self._pending += adopted
            self._spilled += adopted
            self._publish()
        if queued:
            log.info(
                "adopted spilled prediction rows of a writer that is gone",
                extra={"rows": adopted, "segments": len(queued), "writers": len(found)},
            )

    def _release_if_done(self, writer: str) -> None:
        if self._spill and writer in self._adopted and not any(s.writer == writer for s in self._sealed):
            self._spill.release(writer, self._adopted.pop(writer))

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
