"""The prediction log under faults: rows past the memory budget wait on disk, a writer that stops
or is killed leaves them for the next, and none is written twice. Real SQLite files; another
connection holding the write lock is the database that does not answer."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from api.predlog import PredictionLog
from api.spill import SpillDirectory, encode
from core.predictions.access import count_rows, read_rows
from core.predictions.backends import open_store
from core.predictions.rows import Row
from tests.api.traffic import wait_for


def rows(n: int, start: int = 0) -> list[Row]:
    return [
        Row(time.time(), f"r{i}", "m", "1", "champion", {"x": float(i), "c": None}, 0, {"0": 1.0})
        for i in range(start, start + n)
    ]


def request_ids(log: Path) -> list[int]:
    return sorted(int(r.request_id[1:]) for r in read_rows(log))


def segments(spill: Path) -> list[Path]:
    return sorted(spill.glob("*.jsonl"))


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's long write transaction: every write to the log waits, then fails."""
    open_store(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_rows_past_the_memory_budget_wait_on_disk_and_are_written_once_the_log_returns(
    tmp_path: Path,
) -> None:
    path, spill = tmp_path / "p.sqlite", tmp_path / "spill"
    log = PredictionLog(path, flush_rows=4, flush_ms=10, max_pending=10, spill_dir=spill)
    holder = hold_write_lock(path)
    for start in range(0, 25, 5):
        log.append(rows(5, start))
    status = log.status()
    assert (status.pending_rows, status.dropped_rows) == (25, 0)
    assert status.spilled_rows >= 15  # memory holds ten at most
    holder.rollback()
    holder.close()
    closed = log.close(timeout=30)
    assert (closed.pending_rows, closed.spilled_rows, closed.dropped_rows, closed.error) == (0, 0, 0, None)
    assert request_ids(path) == list(range(25))
    assert segments(spill) == []
    assert list(spill.iterdir()) == []  # its lock goes with it


def test_without_a_spill_rows_past_the_memory_budget_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    log = PredictionLog(path, flush_rows=4, flush_ms=10, max_pending=10)
    holder = hold_write_lock(path)
    for start in range(0, 25, 5):
        log.append(rows(5, start))
    status = log.status()
    assert (status.pending_rows, status.spilled_rows, status.dropped_rows) == (10, 0, 15)
    holder.rollback()
    holder.close()
    closed = log.close(timeout=30)
    assert (closed.pending_rows, closed.dropped_rows, closed.error) == (0, 15, None)
    assert request_ids(path) == list(range(10))


def test_past_the_spill_budget_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    path, spill = tmp_path / "p.sqlite", tmp_path / "spill"
    budget = 3 * len(encode(rows(5, 35)))  # three segments of the longest rows: every pending row is on disk
    log = PredictionLog(
        path, flush_rows=5, flush_ms=10, max_pending=5, spill_dir=spill, spill_max_bytes=budget
    )
    holder = hold_write_lock(path)
    for start in range(0, 40, 5):
        log.append(rows(5, start))
    status = log.status()
    holder.rollback()
    holder.close()
    closed = log.close(timeout=30)
    assert (status.pending_rows, status.spilled_rows, status.dropped_rows) == (15, 10, 25)
    assert closed.dropped_rows == 25
    assert request_ids(path) == list(range(15))


def test_a_bounded_shutdown_leaves_unwritten_rows_on_disk_for_the_next_writer(tmp_path: Path) -> None:
    path, spill = tmp_path / "p.sqlite", tmp_path / "spill"
    log = PredictionLog(path, flush_rows=4, flush_ms=10, spill_dir=spill)
    holder = hold_write_lock(path)
    log.append(rows(7))
    begun = time.monotonic()
    closed = log.close(timeout=1.0)
    waited = time.monotonic() - begun
    holder.rollback()
    holder.close()
    assert waited < 2.0
    assert (closed.pending_rows, closed.dropped_rows) == (7, 0)
    time.sleep(6)  # longer than a write's own lock wait: the abandoned writer must not write them later
    assert count_rows(path) == 0
    assert segments(spill)
    successor = PredictionLog(path, spill_dir=spill)
    wait_for(lambda: count_rows(path) == 7, timeout=20)
    assert successor.close().dropped_rows == 0
    assert request_ids(path) == list(range(7))
    assert list(spill.iterdir()) == []


def test_without_a_spill_a_bounded_shutdown_counts_the_backlog_as_lost(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    log = PredictionLog(path, flush_rows=4, flush_ms=10)
    holder = hold_write_lock(path)
    log.append(rows(7))
    closed = log.close(timeout=1.0)
    holder.rollback()
    holder.close()
    assert (closed.pending_rows, closed.dropped_rows) == (0, 7)
    time.sleep(6)
    assert count_rows(path) == 0


WRITER = """
import sys, time
from pathlib import Path
from api.predlog import PredictionLog
from tests.api.test_spill import rows
log = PredictionLog(sys.argv[1], flush_rows=10**6, flush_ms=3_600_000, spill_dir=Path(sys.argv[2]))
for start in range(0, 50, 5):
    log.append(rows(5, start))
print("appended", flush=True)
time.sleep(600)
"""


def test_rows_of_a_writer_killed_with_sigkill_are_written_by_the_next(tmp_path: Path) -> None:
    path, spill = tmp_path / "p.sqlite", tmp_path / "spill"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(spill)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "appended"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    assert count_rows(path) == 0  # it held all fifty for an hour's flush
    successor = PredictionLog(path, spill_dir=spill)
    wait_for(lambda: count_rows(path) == 50, timeout=20)
    successor.close()
    assert request_ids(path) == list(range(50))


def test_a_segment_committed_just_before_its_writer_died_is_not_written_twice(tmp_path: Path) -> None:
    path, spill = tmp_path / "p.sqlite", tmp_path / "spill"
    dead = SpillDirectory(spill, 1 << 20)
    dead.append(0, encode(rows(5, 0)))
    dead.append(1, encode(rows(5, 5)))
    store = open_store(path)
    store.stage_segment(rows(5, 0), dead.writer, 0)  # its last commit; the crash came before the unlink
    store.commit()
    store.close()
    dead.close()
    successor = PredictionLog(path, spill_dir=spill)
    wait_for(lambda: not segments(spill), timeout=20)
    successor.close()
    assert request_ids(path) == list(range(10))


def test_a_live_writers_segments_are_never_adopted_by_another(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    stuck, other = tmp_path / "stuck.sqlite", tmp_path / "other.sqlite"
    first = PredictionLog(stuck, flush_rows=4, flush_ms=10, spill_dir=spill)
    holder = hold_write_lock(stuck)
    first.append(rows(7))
    second = PredictionLog(other, spill_dir=spill, adopt_every=0.2)
    time.sleep(1.5)
    assert count_rows(other) == 0  # seven rows of a writer that is alive, only stuck
    first.close(timeout=0.5)  # gives up: its rows stay on disk, its lock goes
    wait_for(lambda: count_rows(other) == 7, timeout=20)
    second.close()
    holder.rollback()
    holder.close()
    assert request_ids(other) == list(range(7))
    assert count_rows(stuck) == 0


def test_after_the_log_returns_the_backlog_reads_catching_up_until_it_is_written(tmp_path: Path) -> None:
    """While the rows that waited are written, the status says so (/ready: "degraded, catching up"),
    never a plain ok with thousands of rows pending; once they are written it is ok again."""
    path = tmp_path / "p.sqlite"
    log = PredictionLog(path, flush_rows=64, flush_ms=10, max_pending=150_000)
    holder = hold_write_lock(path)
    for start in range(0, 100_000, 64):  # one segment each, as requests append them
        log.append(rows(64, start))
    wait_for(lambda: log.status().error is not None, 30)
    holder.rollback()
    holder.close()
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = log.status()
        seen.append(status)
        if status.pending_rows == 0:
            break
        time.sleep(0.001)
    log.close()
    healthy = [s for s in seen if s.error is None]
    assert healthy, "the log never came back"
    behind = [s for s in healthy if s.pending_rows > 64]
    assert behind, "no look while the backlog was written"
    assert all(s.catching_up for s in behind)  # every look at the backlog says so
    assert (seen[-1].pending_rows, seen[-1].catching_up) == (0, False)
    assert count_rows(path) == 100_032
