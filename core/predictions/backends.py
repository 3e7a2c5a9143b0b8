"""The prediction log's two backends, and which one a URL opens: SQLite (a file, WAL mode: one
writer and any number of readers at once) and PostgreSQL (shared by every worker and replica)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.predictions.rows import PredictionLogUnavailable, Row, is_postgres, redacted, scrubbed
from core.predictions.store import ROW_REFUSALS, PredictionStore, _values
from core.predictions.tables import INSERT, Migration
from core.settings import PREDICTION_LOG_SETTING

SETTING = PREDICTION_LOG_SETTING


SQLITE_TIMEOUT = 5.0
"""How long a SQLite writer waits for a lock."""


class SqliteStore(PredictionStore):
    def __init__(self, url: str, *, read_only: bool = False) -> None:
        super().__init__(url)
        path = Path(url.removeprefix("sqlite:///"))
        if read_only:
            self.conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=30.0, check_same_thread=False
            )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=SQLITE_TIMEOUT, check_same_thread=False)
        deadline = time.monotonic() + SQLITE_TIMEOUT
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as err:
                # Turning a new file to WAL needs a lock SQLite does not wait for (its busy timeout
                # is not applied), so replicas starting together on one file retry here instead.
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql, args)

    def _lock_for_migration(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def _statements(self, migration: Migration) -> tuple[str, ...]:
        return migration.sqlite

    def _decode(self, value: Any) -> Any:
        return json.loads(value)  # JSON text

    def table_missing(self, err: Exception) -> bool:
        return isinstance(err, sqlite3.OperationalError) and "no such table" in str(err)

    def refuses_row(self, err: Exception) -> bool:
        # OperationalError (locked, disk full, read-only, I/O) and DatabaseError are the store's.
        refusals = (*ROW_REFUSALS, sqlite3.DataError, sqlite3.IntegrityError, sqlite3.ProgrammingError)
        return isinstance(err, refusals)

    def stage(self, rows: Iterable[Row]) -> None:
        self.conn.executemany(
            INSERT + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _values(rows),
        )


class PostgresStore(PredictionStore):
    MIGRATION_LOCK = 0x6269746C6F6F70  # "bitloop": one migration at a time across replicas

    def __init__(self, url: str, *, read_only: bool = False, timeout: float = 5.0) -> None:
        import psycopg2

        super().__init__(url)
        # Writes wait at most `timeout` for a lock, like SQLite's busy timeout: the writer retries.
        options = f"-c lock_timeout={int(timeout * 1000)} -c statement_timeout={int(timeout * 6000)}"
        self.conn = psycopg2.connect(url, connect_timeout=max(int(timeout), 1), options=options)
        if read_only:
            self.conn.set_session(readonly=True)

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        cursor = self.conn.cursor()
        cursor.execute(sql.replace("?", "%s"), args)  # psycopg2's parameter style
        return cursor

    def _lock_for_migration(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (self.MIGRATION_LOCK,))

    def _statements(self, migration: Migration) -> tuple[str, ...]:
        return migration.postgres

    def _decode(self, value: Any) -> Any:
        return value  # psycopg2 decodes JSONB itself

    def table_missing(self, err: Exception) -> bool:
        from psycopg2 import errors

        return isinstance(err, errors.UndefinedTable)

    def refuses_row(self, err: Exception) -> bool:
        # A NUL in a text parameter is a ValueError before it leaves psycopg2, one escaped in JSONB
        # a DataError from the server; OperationalError and InterfaceError are the store's.
        import psycopg2

        return isinstance(err, (*ROW_REFUSALS, psycopg2.DataError, psycopg2.IntegrityError))

    def stage(self, rows: Iterable[Row]) -> None:
        from psycopg2.extras import execute_values

        execute_values(
            self.conn.cursor(),
            INSERT + "%s",
            _values(rows),
            page_size=1000,
        )


def open_store(location: str | Path, *, read_only: bool = False) -> PredictionStore:
    """A connection to the log at `location` (a URL or a SQLite path), its table migrated (writers)
    or as it is (readers). PredictionLogUnavailable, naming the setting, when it cannot be opened.
    """
    url = str(location)
    try:
        if is_postgres(url):
            store: PredictionStore = PostgresStore(url, read_only=read_only)
        else:
            store = SqliteStore(url, read_only=read_only)
        if not read_only:
            store.migrate()
        return store
    except PredictionLogUnavailable:
        raise
    except Exception as err:  # sqlite3, psycopg2 and OS errors: all mean "cannot use this log"
        detail = scrubbed(str(err), url).strip().splitlines()[0] if str(err).strip() else ""
        raise PredictionLogUnavailable(
            f"cannot open the prediction log {redacted(url)} ({type(err).__name__}: {detail}): "
            f"check {SETTING}"
        ) from None
