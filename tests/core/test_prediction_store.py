"""The prediction log on both stores, SQLite and a real PostgreSQL: the same rows, windows and
retention; versioned migrations that several replicas may run at once; an unreachable database
named by its setting, never by its password; writers that survive the database going away."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from api.predlog import PredictionLog
from core.predictions.access import count_rows, insert_rows, read_features, read_rows
from core.predictions.backends import open_store
from core.predictions.rows import PredictionLogUnavailable, Row
from core.predictions.tables import SCHEMA_VERSION
from tests.api.traffic import wait_for
from tests.servers import free_port, postgres_server
from tests.tools import require_postgres


def rows(n: int, ts: float, *, model: str = "m", variant: str = "champion", start: int = 0) -> list[Row]:
    return [
        Row(
            ts + i,
            f"r{start + i}",
            model,
            "1",
            variant,
            {"x": float(start + i), "c": None},
            1,
            {"0": 0.5, "1": 0.5},
        )
        for i in range(n)
    ]


def test_rows_windows_and_retention_are_the_same_on_both_stores(log_url: str) -> None:
    now = time.time()
    insert_rows(log_url, rows(5, now - 100))
    insert_rows(log_url, rows(2, now - 50, variant="shadow", start=5))  # shadow rows repeat inputs
    insert_rows(log_url, rows(3, now - 10, model="other", start=7))
    labelled = Row(
        now - 5, "r10", "other", "1", "champion", {"x": 1.5, "c": "red"}, "yes", {"no": 0.2, "yes": 0.8}
    )
    insert_rows(log_url, [labelled])
    written = read_rows(log_url)
    assert [r.request_id for r in written] == [f"r{i}" for i in range(11)]
    assert written[0] == rows(1, now - 100)[0]
    assert written[-1] == labelled  # a class name reads back as the string it was
    assert count_rows(log_url) == 11
    window = read_features(log_url, "m", since=now - 99, until=now - 96)
    assert window["x"].tolist() == [1.0, 2.0, 3.0]  # oldest first, [since, until), model m only
    assert read_features(log_url, "m", limit=2)["x"].tolist() == [3.0, 4.0]  # the newest two
    store = open_store(log_url)
    try:
        assert store.expire(now - 97, chunk=2) == 2  # the oldest first, a chunk at a time
        assert store.expire(now - 97, chunk=2) == 1
        assert store.expire(now - 97, chunk=2) == 0
    finally:
        store.close()
    assert [r.request_id for r in read_rows(log_url)][:2] == ["r3", "r4"]


def test_a_log_nobody_wrote_yet_reads_as_empty(log_url: str) -> None:
    assert read_features(log_url, "m").empty


def test_migrations_run_once_even_when_replicas_start_together(log_url: str) -> None:
    failures: list[BaseException] = []  # collected here, asserted below

    def start_replica() -> None:
        try:
            open_store(log_url).close()
        except BaseException as err:
            failures.append(err)

    replicas = [threading.Thread(target=start_replica) for _ in range(4)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.join(60)
    assert failures == []
    store = open_store(log_url)
    try:
        versions = store._execute("SELECT version FROM bitloop_schema").fetchall()
        assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))
        # A log written by a newer bitloop is refused with a reason, not misread.
        store._execute("INSERT INTO bitloop_schema VALUES (?, ?, ?)", (SCHEMA_VERSION + 1, "next", 0.0))
        store.commit()
    finally:
        store.close()
    with pytest.raises(PredictionLogUnavailable, match="newer than this bitloop"):
        open_store(log_url)


def test_an_unreachable_database_is_named_by_its_setting_never_its_password() -> None:
    url = f"postgresql://bitloop:hunter2-secret@127.0.0.1:{free_port()}/predictions"
    with pytest.raises(PredictionLogUnavailable) as refused:
        open_store(url)
    assert "BITLOOP_PREDICTION_LOG_URL" in str(refused.value)
    assert "hunter2-secret" not in str(refused.value)
    assert "bitloop:***@127.0.0.1" in str(refused.value)


def test_two_replicas_write_one_postgres_log_and_survive_it_going_away(tmp_path: Path) -> None:
    require_postgres()
    with postgres_server() as server:  # its own server: this test stops it
        replicas = [
            PredictionLog(
                server.url, flush_rows=16, flush_ms=10, max_pending=3, spill_dir=tmp_path / f"spill-{i}"
            )
            for i in range(2)
        ]
        now = time.time()
        replicas[0].append(rows(20, now, start=0))
        replicas[1].append(rows(20, now, start=20))
        wait_for(lambda: count_rows(server.url) == 40, timeout=20)
        server.stop()  # the database goes away: rows wait, past the memory budget on disk
        replicas[0].append(rows(5, now, start=40))
        wait_for(lambda: replicas[0].status().error is not None, timeout=30)
        assert replicas[0].status().pending_rows == 5
        assert replicas[0].status().spilled_rows == 5
        server.start()  # it comes back: the writer reconnects and writes the backlog
        wait_for(lambda: replicas[0].status().pending_rows == 0, timeout=60)
        statuses = [replica.close(timeout=30) for replica in replicas]
        assert [s.dropped_rows for s in statuses] == [0, 0]
        assert statuses[0].error is None
        assert sorted(int(r.request_id[1:]) for r in read_rows(server.url)) == list(range(45))
