"""The prediction log's writer and the drift window's reads, on real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pandas as pd

from api.drift_gauges import DriftWatcher
from api.predlog import RETENTION_CHUNK, PredictionLog
from api.settings import ApiSettings
from core.params import DriftParams
from core.predictions.access import count_rows
from core.predictions.backends import SqliteStore, open_store
from core.predictions.rows import Row
from core.predictions.tables import WINDOW_QUERY
from tests.api.traffic import wait_for
from tests.factories import log_predictions


def rows(n: int, ts: float, model: str = "m") -> list[Row]:
    return [Row(ts, f"r{i}", model, "1", "champion", {"x": float(i)}, 0, {"0": 1.0}) for i in range(n)]


def test_everything_appended_is_written_by_close(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.sqlite", flush_rows=64, flush_ms=1000)
    for _ in range(10):
        log.append(rows(100, time.time()))
    status = log.close(timeout=30)
    assert (status.pending_rows, status.dropped_rows, status.error) == (0, 0, None)
    assert count_rows(tmp_path / "p.sqlite") == 1000


def test_retention_deletes_old_rows_in_chunks_while_writes_go_on(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    now = time.time()
    old = 2 * RETENTION_CHUNK + 500
    log_predictions(path, "m", pd.DataFrame({"x": range(old)}), now - 40 * 86400)
    log_predictions(path, "m", pd.DataFrame({"x": range(7)}), now - 29 * 86400)
    log = PredictionLog(path, retention_days=30)
    log.append(rows(5, now))
    wait_for(lambda: count_rows(path) == 12, timeout=20)
    assert log.close().dropped_rows == 0
    with sqlite3.connect(path) as conn:
        oldest = conn.execute("SELECT MIN(ts) FROM predictions").fetchone()[0]
    assert oldest > now - 30 * 86400


def test_the_window_query_reads_the_index_newest_first_without_sorting(tmp_path: Path) -> None:
    store = open_store(tmp_path / "p.sqlite")
    assert isinstance(store, SqliteStore)
    plan = " ".join(
        row[-1]
        for row in store.conn.execute(f"EXPLAIN QUERY PLAN {WINDOW_QUERY}", ("m", 0.0, 1e18, "shadow", 10))
    )
    store.close()
    assert "USING INDEX predictions_model_ts (model_name=? AND ts>? AND ts<?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


class SlowWatcher(DriftWatcher):
    """A real watcher whose evaluation is slow and counted (no champion is needed to join one)."""

    def __init__(self) -> None:
        super().__init__(ApiSettings(), manager=None, config=DriftParams())  # type: ignore[arg-type]
        self.evaluations = 0

    def evaluate(self) -> Any:
        self.evaluations += 1
        time.sleep(0.5)
        return f"report {self.evaluations}"


def test_concurrent_drift_callers_share_one_evaluation() -> None:
    watcher = SlowWatcher()

    async def callers() -> tuple[list[Any], float]:
        started = time.monotonic()
        first = await asyncio.gather(*(watcher.evaluate_shared() for _ in range(4)))
        second = await watcher.evaluate_shared()  # a later call evaluates afresh
        return [*first, second], time.monotonic() - started

    reports, seconds = asyncio.run(callers())
    assert reports == ["report 1"] * 4 + ["report 2"]
    assert watcher.evaluations == 2
    assert seconds < 1.5  # four callers did not queue behind each other
