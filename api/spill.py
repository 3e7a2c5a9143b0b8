"""The prediction log's buffer on disk: rows are appended to a segment file before their answer
leaves, and the file is deleted once its rows are committed to the log.

A process killed with SIGKILL loses no row the kernel has taken: the page cache outlives the
process. (A power cut is not covered: an fsync per request would cost a disk flush each.) The
segments of a process that is gone, whose lock is no longer held, are adopted by the next
writer that starts or looks on the same directory. The log records each writer's last committed
segment in the same transaction as its rows (`PredictionStore.stage_segment`), so a segment
committed just before a crash is recognised and deleted, never written twice.

Written here rather than taken from a disk-queue library: exactly-once needs the segment's
bookkeeping inside the log's own transaction, which a separate store cannot give.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from core.errors import ServiceUnavailable
from core.predictions.rows import Row

log = logging.getLogger(__name__)

SPILL_SETTING = "BITLOOP_API_PREDICTION_LOG_SPILL_DIR"
SEGMENT_NAME = re.compile(r"^(?P<writer>[0-9a-f]{32})\.(?P<seq>\d{12})\.jsonl$")
LOCK_NAME = re.compile(r"^(?P<writer>[0-9a-f]{32})\.lock$")


def encode(rows: Iterable[Row]) -> bytes:
    """One JSON line per row. orjson, not json: every answered row is encoded on the request path,
    and for a 1,000-row batch that is a millisecond instead of eight."""
    return b"".join(
        orjson.dumps(
            [
                r.ts,
                r.request_id,
                r.model_name,
                r.model_version,
                r.variant,
                r.features,
                r.prediction,
                r.probabilities,
                r.row_index,
                r.entity_id,
            ]
        )
        + b"\n"
        for r in rows
    )


def decode(data: bytes) -> list[Row]:
    """The rows of a segment file. A last line without its newline was cut by a crash of the
    machine mid-write, before its answer could leave: it is left out. A line of eight fields was
    written before rows had a row index and entity id: they take their defaults."""
    lines = data.split(b"\n")
    if lines[-1]:
        log.warning("prediction spill segment ends in a cut line: left out", extra={"bytes": len(lines[-1])})
    return [Row(*orjson.loads(line)) for line in lines[:-1]]


@dataclass(frozen=True)
class SegmentFile:
    writer: str
    seq: int
    path: Path


class SpillUnavailable(ServiceUnavailable, RuntimeError):
    """The spill directory cannot be used; the message names the setting."""


class SpillDirectory:
    """One writer's segments in a directory that other writers (workers, restarts) may share.

    Not thread-safe: the prediction log calls it under its own lock.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.writer = uuid.uuid4().hex
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # The lock appears under its name already held: a writer scanning for orphans never
            # sees this one's lock free.
            staging = directory / f"{self.writer}.lock.new"
            self._lock = os.open(staging, os.O_WRONLY | os.O_CREAT, 0o600)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            staging.rename(self._lock_path(self.writer))
        except OSError as err:
            raise SpillUnavailable(
                f"cannot use the prediction log's spill directory {directory} ({err.strerror or err}): "
                f"check {SPILL_SETTING}"
            ) from None
        self.bytes = 0
        """What this writer's own segments take on disk, held under `max_bytes`."""
        self._fd: int | None = None
        self._fd_seq = -1
        self._fd_size = 0

    def _lock_path(self, writer: str) -> Path:
        return self.directory / f"{writer}.lock"

    def path(self, seq: int, writer: str | None = None) -> Path:
        return self.directory / f"{writer or self.writer}.{seq:012d}.jsonl"

    def _segments(self) -> list[SegmentFile]:
        found = []
        for entry in os.scandir(self.directory):
            if match := SEGMENT_NAME.match(entry.name):
                found.append(SegmentFile(match["writer"], int(match["seq"]), Path(entry.path)))
        return sorted(found, key=lambda f: (f.writer, f.seq))

    def append(self, seq: int, data: bytes) -> bool:
        """Append `data` to segment `seq`'s file; False, with nothing written, when the budget or
        the disk refuses it."""
        if self.bytes + len(data) > self.max_bytes:
            return False
        try:
            fd = self._fd
            if fd is None or self._fd_seq != seq:
                self.seal()
                fd = self._fd = os.open(self.path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._fd_seq, self._fd_size = seq, 0
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as err:
            self._undo(err)
            return False
        self._fd_size += len(data)
        self.bytes += len(data)
        return True

    def _undo(self, err: OSError) -> None:
        """Cut a failed append back to the rows before it (freeing space works on a full disk)."""
        log.warning("prediction spill write failed", extra={"error": str(err), "dir": str(self.directory)})
        if self._fd is None:
            return
        try:
            if self._fd_size:
                os.ftruncate(self._fd, self._fd_size)
                return
            self.path(self._fd_seq).unlink(missing_ok=True)
        except OSError:
            pass  # cannot even cut it: the segment is finished where it is
        self.seal()

    def seal(self) -> None:
        """Close the open segment's file; the next append starts a new one."""
        fd, self._fd, self._fd_seq = self._fd, None, -1
        if fd is not None:
            os.close(fd)

    def read(self, seq: int, writer: str | None = None) -> list[Row]:
        return decode(self.path(seq, writer).read_bytes())

    def remove(self, seq: int, writer: str | None = None) -> None:
        own = writer in (None, self.writer)
        path = self.path(seq, writer)
        if own and self._fd_seq == seq:
            self.seal()
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        if own:
            self.bytes = max(self.bytes - size, 0)

    def adopt(self) -> dict[str, tuple[int, list[SegmentFile]]]:
        """Take over the segments of writers that are gone: {writer: (lock fd, its segments in order)}.

        The caller holds each lock while it writes them, then calls `release`.
        """
        by_writer: dict[str, list[SegmentFile]] = {}
        for segment in self._segments():
            if segment.writer != self.writer:
                by_writer.setdefault(segment.writer, []).append(segment)
        for entry in os.scandir(self.directory):  # a lock with no segments: a writer gone with none left
            if (match := LOCK_NAME.match(entry.name)) and match["writer"] != self.writer:
                by_writer.setdefault(match["writer"], [])
        adopted = {}
        for writer, segments in by_writer.items():
            fd = os.open(self._lock_path(writer), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # alive, or adopted by another writer right now
                os.close(fd)
                continue
            adopted[writer] = (fd, segments)
        return adopted

    def release(self, writer: str, fd: int) -> None:
        """Give up an adopted writer: its lock file goes when none of its segments is left."""
        if not any(s.writer == writer for s in self._segments()):
            self._lock_path(writer).unlink(missing_ok=True)
        os.close(fd)

    def close(self) -> None:
        """Release this writer's lock; segments still on disk are adopted by the next writer."""
        self.seal()
        if not any(s.writer == self.writer for s in self._segments()):
            self._lock_path(self.writer).unlink(missing_ok=True)
        os.close(self._lock)
