"""The prediction log: its table, versioned migrations, the row, the writes and the readers.

`BITLOOP_PREDICTION_LOG_URL` picks the store: a SQLite file path (the default,
`.bitloop/predictions.sqlite`; WAL mode, so one writer and any number of readers work at once)
or a `postgresql://` URL, which every model-server worker and replica can share. The model
server writes it through the bounded queue in `api/predlog.py`; the drift code of the model
server and of the drift monitor reads it here; tests write and read it through the same
functions. Nothing else writes SQL against it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import pandas as pd

from core.errors import ServiceUnavailable
from core.settings import PREDICTION_LOG_SETTING

T = TypeVar("T")

SETTING = PREDICTION_LOG_SETTING
SHADOW = "shadow"
"""The one variant that answered nobody: a shadow row repeats inputs another variant's row logged.
Every other variant (champion, canary, challenger, and any added later) answered a request, so the
readers below filter shadow rows out by name rather than list the variants that count."""
COLUMNS = (
    "ts, request_id, model_name, model_version, variant, features, prediction, probabilities, "
    "row_index, entity_id"
)
INSERT = f"INSERT INTO predictions ({COLUMNS}) VALUES "  # noqa: S608 - constant columns
SELECT_ALL = f"SELECT {COLUMNS} FROM predictions ORDER BY id"  # noqa: S608 - constant columns


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# Applied in order, each once, and recorded in bitloop_schema; a store never goes back a version.
MIGRATIONS = (
    Migration(
        1,
        "the predictions table, by time and by model and time",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
            "request_id TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, "
            "variant TEXT NOT NULL, features TEXT NOT NULL, prediction TEXT NOT NULL, probabilities TEXT)",
            "CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts)",
            "CREATE INDEX IF NOT EXISTS predictions_model_ts ON predictions (model_name, ts)",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS predictions (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, "
            "request_id TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, "
            "variant TEXT NOT NULL, features JSONB NOT NULL, prediction JSONB NOT NULL, probabilities JSONB)",
            "CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts)",
            "CREATE INDEX IF NOT EXISTS predictions_model_ts ON predictions (model_name, ts)",
        ),
    ),
    Migration(
        2,
        "each writer's last committed segment, so a spilled segment is written exactly once",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS bitloop_log_writers (writer TEXT PRIMARY KEY, "
            "committed_seq INTEGER NOT NULL, updated_at REAL NOT NULL)",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS bitloop_log_writers (writer TEXT PRIMARY KEY, "
            "committed_seq BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
        ),
    ),
    Migration(
        3,
        "each prediction's row in its request and the client's entity id; true outcomes by prediction",
        sqlite=(
            "ALTER TABLE predictions ADD COLUMN row_index INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE predictions ADD COLUMN entity_id TEXT",
            "CREATE INDEX IF NOT EXISTS predictions_request ON predictions (request_id, row_index)",
            "CREATE INDEX IF NOT EXISTS predictions_entity ON predictions (entity_id, ts) "
            "WHERE entity_id IS NOT NULL",
            "CREATE TABLE IF NOT EXISTS outcomes (request_id TEXT NOT NULL, row_index INTEGER NOT NULL, "
            "outcome TEXT NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (request_id, row_index))",
            "CREATE INDEX IF NOT EXISTS outcomes_received ON outcomes (received_at)",
        ),
        postgres=(
            "ALTER TABLE predictions ADD COLUMN IF NOT EXISTS row_index INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE predictions ADD COLUMN IF NOT EXISTS entity_id TEXT",
            "CREATE INDEX IF NOT EXISTS predictions_request ON predictions (request_id, row_index)",
            "CREATE INDEX IF NOT EXISTS predictions_entity ON predictions (entity_id, ts) "
            "WHERE entity_id IS NOT NULL",
            "CREATE TABLE IF NOT EXISTS outcomes (request_id TEXT NOT NULL, row_index INTEGER NOT NULL, "
            "outcome JSONB NOT NULL, received_at DOUBLE PRECISION NOT NULL, "
            "PRIMARY KEY (request_id, row_index))",
            "CREATE INDEX IF NOT EXISTS outcomes_received ON outcomes (received_at)",
        ),
    ),
    Migration(
        4,
        "each model's last retraining claim, taken atomically so that two monitors never both start one",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS bitloop_retrain_claims (model_name TEXT PRIMARY KEY, "
            "signal TEXT NOT NULL, claimed_at REAL NOT NULL)",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS bitloop_retrain_claims (model_name TEXT PRIMARY KEY, "
            "signal TEXT NOT NULL, claimed_at DOUBLE PRECISION NOT NULL)",
        ),
    ),
    Migration(
        5,
        "rows the store refused, kept as escaped JSON text with the reason, so one never blocks the log",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS bitloop_quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "quarantined_at REAL NOT NULL, reason TEXT NOT NULL, row_json TEXT NOT NULL)",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS bitloop_quarantine (id BIGSERIAL PRIMARY KEY, "
            "quarantined_at DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, row_json TEXT NOT NULL)",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

# Served newest first by the (model_name, ts) index: no sort, and at most `limit` rows are read.
WINDOW_QUERY = (
    "SELECT features FROM predictions WHERE model_name = ? AND ts >= ? AND ts < ?"
    " AND variant <> ? ORDER BY ts DESC LIMIT ?"
)


# Every variant, shadow included: each is judged on the outcomes of the rows it scored.
LABELLED_QUERY = (
    "SELECT p.ts, p.model_version, p.variant, p.prediction, p.probabilities, o.outcome, o.received_at "
    "FROM predictions p LEFT JOIN outcomes o ON o.request_id = p.request_id AND o.row_index = p.row_index "
    "WHERE p.model_name = ? AND p.ts >= ? AND p.ts < ? ORDER BY p.ts DESC LIMIT ?"
)


ROW_REFUSALS: tuple[type[Exception], ...] = (ValueError, TypeError, OverflowError)
"""What a driver raises for a value it cannot send (a NUL, a lone surrogate, an integer too large):
row-specific on every store, beside each store's own data and integrity errors."""


class PredictionLogUnavailable(ServiceUnavailable, RuntimeError):
    """The prediction log cannot be opened; the message names the setting and never a password."""


class Row(NamedTuple):
    """One answered record. A named tuple, not a validated model nor a frozen dataclass: rows are
    built on the request path, and a frozen dataclass's __init__ costs 3 ms per 1,000-row batch."""

    ts: float
    """Unix seconds."""
    request_id: str
    model_name: str
    model_version: str
    variant: str
    """champion, challenger or shadow."""
    features: dict[str, Any]
    prediction: Any
    probabilities: dict[str, float] | None
    row_index: int = 0
    """The record's position in its request (0 for /predict)."""
    entity_id: str | None = None
    """The client's id for what the record describes (a customer, say), when it sent one."""


class LoggedPrediction(NamedTuple):
    """One logged prediction and its true outcome, when one arrived."""

    ts: float
    version: str
    variant: str
    prediction: Any
    probabilities: dict[str, float] | None
    outcome: Any = None
    received_at: float | None = None

    @property
    def labelled(self) -> bool:
        return self.received_at is not None


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """The URL fit for logs and answers: any password replaced by ***."""
    if not is_postgres(url):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def scrubbed(text: str, url: str) -> str:
    """`text` (an error message, say) with the URL's password replaced by ***."""
    password = urlsplit(url).password if is_postgres(url) else None
    text = text.replace(url, redacted(url))
    return text.replace(password, "***") if password else text


def unstorable(text: str) -> str | None:
    """Why the log cannot keep `text` exactly on every store, or None when it can.

    Two kinds of string are refused at the door wherever a client sends one: a NUL character
    (PostgreSQL's text and JSONB refuse it, so one such row used to stop the log for good) and a
    lone surrogate (U+D800 to U+DFFF: not text at all in UTF-8, which both stores keep). Every other
    string is stored and read back exactly."""
    if "\x00" in text:
        return "holds a NUL character (U+0000), which the prediction log cannot store"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (U+D800 to U+DFFF), which is not UTF-8 text"
    return None


def quarantine_text(row: Row) -> str:
    """A row as JSON text of ASCII only: every character any store refuses (NUL, a lone surrogate)
    escaped, so the row can be kept, read and replayed by hand."""
    return json.dumps(row._asdict(), ensure_ascii=True, default=repr)


def _json(value: Any) -> str:
    """Compact JSON text. orjson, not json: the log writer encodes two values per answered row, 5 ms
    of a 1,000-row batch with json, competing with requests for the interpreter."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _values(rows: Iterable[Row]) -> list[tuple[Any, ...]]:
    """Rows as the table's columns, in COLUMNS order (JSON text for the structured ones)."""
    return [
        (
            r.ts,
            r.request_id,
            r.model_name,
            r.model_version,
            r.variant,
            _json(r.features),
            _json(r.prediction),
            None if r.probabilities is None else _json(r.probabilities),
            r.row_index,
            r.entity_id,
        )
        for r in rows
    ]


class PredictionStore(ABC):
    """One open connection to the log. Writes are staged, then committed or rolled back by the caller."""

    conn: Any
    """The DB-API connection. SQL here marks parameters with `?`, whatever the driver's style."""

    def __init__(self, url: str) -> None:
        self.url = url

    @abstractmethod
    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any: ...

    @abstractmethod
    def stage(self, rows: Iterable[Row]) -> None:
        """Insert rows in an open transaction (waits for the write lock, up to the store's timeout)."""

    @abstractmethod
    def _lock_for_migration(self) -> None: ...

    @abstractmethod
    def _statements(self, migration: Migration) -> tuple[str, ...]: ...

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()

    def migrate(self) -> int:
        """Bring the table to SCHEMA_VERSION (every process may try at once); returns the version."""
        try:
            self._lock_for_migration()
            self._execute(
                "CREATE TABLE IF NOT EXISTS bitloop_schema (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = self._execute("SELECT MAX(version) FROM bitloop_schema").fetchone()[0] or 0
            if current > SCHEMA_VERSION:
                raise PredictionLogUnavailable(
                    f"the prediction log {redacted(self.url)} is at schema version {current}, newer than "
                    f"this bitloop's {SCHEMA_VERSION}: run a bitloop as new as the one that wrote it"
                )
            for migration in MIGRATIONS:
                if migration.version > current:
                    for statement in self._statements(migration):
                        self._execute(statement)
                    self._execute(
                        "INSERT INTO bitloop_schema (version, description, applied_at) VALUES (?, ?, ?)",
                        (migration.version, migration.description, time.time()),
                    )
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return SCHEMA_VERSION

    def stage_segment(self, rows: Iterable[Row], writer: str, seq: int) -> None:
        """Insert one segment's rows and record it as `writer`'s last, in the open transaction: a
        segment replayed after a crash is recognised by `committed_seq` and never written twice."""
        self.stage(rows)
        self._execute(
            "INSERT INTO bitloop_log_writers (writer, committed_seq, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (writer) DO UPDATE SET committed_seq = excluded.committed_seq, "
            "updated_at = excluded.updated_at",
            (writer, seq, time.time()),
        )

    def quarantine(self, refused: Iterable[tuple[Row, str]]) -> None:
        """Keep rows the store refused, with the reason, in the open transaction."""
        now = time.time()
        for row, reason in refused:
            self._execute(
                "INSERT INTO bitloop_quarantine (quarantined_at, reason, row_json) VALUES (?, ?, ?)",
                (now, reason[:2000], quarantine_text(row)),
            )

    def quarantined(self, limit: int = 1000) -> list[tuple[float, str, dict[str, Any]]]:
        """The newest quarantined rows: (when, why, the row as a dict), oldest first."""
        found = self._execute(
            "SELECT quarantined_at, reason, row_json FROM bitloop_quarantine ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        self.rollback()
        return [(float(at), str(reason), json.loads(text)) for at, reason, text in reversed(found)]

    @abstractmethod
    def refuses_row(self, err: Exception) -> bool:
        """Whether `err` came from what a row holds (a value the store cannot keep), not from the
        store itself (a connection lost, a disk full, a lock held too long)."""

    def committed_seq(self, writer: str) -> int:
        """The last segment `writer` committed; -1 when it committed none."""
        found = self._execute(
            "SELECT committed_seq FROM bitloop_log_writers WHERE writer = ?", (writer,)
        ).fetchone()
        self.rollback()
        return -1 if found is None else int(found[0])

    def expire(self, cutoff: float, chunk: int) -> int:
        """Delete at most `chunk` rows older than `cutoff` (Unix seconds), oldest first; returns how many.

        Writers silent since `cutoff` are forgotten too: a segment that old is past retention anyway.
        """
        try:
            deleted = self._execute(
                "DELETE FROM predictions WHERE id IN "
                "(SELECT id FROM predictions WHERE ts < ? ORDER BY ts LIMIT ?)",
                (cutoff, chunk),
            ).rowcount
            self._execute("DELETE FROM bitloop_log_writers WHERE updated_at < ?", (cutoff,))
            self._execute("DELETE FROM outcomes WHERE received_at < ?", (cutoff,))
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return int(deleted)

    def window(self, model_name: str, since: float, until: float, limit: int) -> list[dict[str, Any]]:
        found = self._execute(WINDOW_QUERY, (model_name, since, until, SHADOW, limit))
        rows = [self._decode(r[0]) for r in found.fetchall()]
        self.rollback()  # a read leaves no transaction open (PostgreSQL would hold its snapshot)
        return rows[::-1]

    def answered(self, model_name: str, version: str, limit: int) -> list[dict[str, Any]]:
        """The inputs of the newest `limit` records `version` answered (shadow rows left out)."""
        found = self._execute(
            "SELECT features FROM predictions WHERE model_name = ? AND model_version = ? AND variant <> ? "
            "ORDER BY ts DESC LIMIT ?",
            (model_name, version, SHADOW, limit),
        ).fetchall()
        self.rollback()  # a read leaves no transaction open
        return [self._decode(r[0]) for r in found]

    def rows(self) -> list[Row]:
        found = self._execute(SELECT_ALL).fetchall()
        self.rollback()
        return [
            Row(
                float(ts),
                request,
                name,
                version,
                variant,
                self._decode(features),
                self._decode(prediction),
                None if probabilities is None else self._decode(probabilities),
                int(row),
                entity,
            )
            for ts, request, name, version, variant, features, prediction, probabilities, row, entity in found
        ]

    def resolve(self, request_id: str | None, row: int, entity_id: str | None) -> tuple[str, int] | None:
        """The (request id, row) a true outcome is for: the answered prediction with that request id
        and row, or the newest answered prediction for the entity id; None while the log has none."""
        if request_id is not None:
            found = self._execute(
                "SELECT request_id, row_index FROM predictions WHERE request_id = ? AND row_index = ? "
                "AND variant <> ? LIMIT 1",
                (request_id, row, SHADOW),
            ).fetchone()
        else:
            found = self._execute(
                "SELECT request_id, row_index FROM predictions WHERE entity_id = ? AND variant <> ? "
                "ORDER BY ts DESC LIMIT 1",
                (entity_id, SHADOW),
            ).fetchone()
        return None if found is None else (str(found[0]), int(found[1]))

    def add_outcome(self, request_id: str, row: int, outcome: Any, received_at: float) -> str:
        """Store a prediction's true outcome once, in the open transaction: "recorded", "duplicate"
        (the same outcome is already stored) or "conflict" (another one is; it stays)."""
        inserted = self._execute(
            "INSERT INTO outcomes (request_id, row_index, outcome, received_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (request_id, row_index) DO NOTHING",
            (request_id, row, _json(outcome), received_at),
        ).rowcount
        if inserted:
            return "recorded"
        stored = self._execute(
            "SELECT outcome FROM outcomes WHERE request_id = ? AND row_index = ?", (request_id, row)
        ).fetchone()
        return "duplicate" if self._decode(stored[0]) == outcome else "conflict"

    def outcomes(self) -> list[tuple[str, int, Any, float]]:
        """Every stored outcome: (request id, row, outcome, received at), oldest first."""
        found = self._execute(
            "SELECT request_id, row_index, outcome, received_at FROM outcomes "
            "ORDER BY received_at, request_id, row_index"
        ).fetchall()
        self.rollback()
        return [(str(r), int(i), self._decode(o), float(t)) for r, i, o, t in found]

    def labelled(self, model_name: str, since: float, until: float, limit: int) -> list[LoggedPrediction]:
        """The newest `limit` predictions of a model in [since, until) with their outcomes, oldest first."""
        found = self._execute(LABELLED_QUERY, (model_name, since, until, limit)).fetchall()
        self.rollback()
        return [
            LoggedPrediction(
                float(ts),
                version,
                variant,
                self._decode(prediction),
                None if probabilities is None else self._decode(probabilities),
                None if outcome is None else self._decode(outcome),
                None if received is None else float(received),
            )
            for ts, version, variant, prediction, probabilities, outcome, received in reversed(found)
        ]

    def unlabelled(self, model_name: str, since: float, limit: int) -> list[str]:
        """Entity ids of answered predictions since `since` still without an outcome, newest first."""
        found = self._execute(
            "SELECT p.entity_id FROM predictions p LEFT JOIN outcomes o "
            "ON o.request_id = p.request_id AND o.row_index = p.row_index "
            "WHERE p.model_name = ? AND p.ts >= ? AND p.entity_id IS NOT NULL AND p.variant <> ? "
            "AND o.request_id IS NULL ORDER BY p.ts DESC LIMIT ?",
            (model_name, since, SHADOW, limit),
        ).fetchall()
        self.rollback()
        return list(dict.fromkeys(str(r[0]) for r in found))

    def claim_retrain(
        self, model_name: str, signal: str, now: float, cooldown_seconds: float
    ) -> tuple[str, float] | None:
        """Claim the model's retraining for `signal` unless another claim is younger than the
        cooldown; None when claimed, else the (signal, Unix time) of the claim that holds.

        One statement, so it is atomic on both stores: SQLite takes its write lock for it, and
        PostgreSQL re-checks the condition on the row a concurrent claim just updated. Two monitors
        that find drift together start one run between them."""
        try:
            claimed = self._execute(
                "INSERT INTO bitloop_retrain_claims (model_name, signal, claimed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (model_name) DO UPDATE SET signal = excluded.signal, "
                "claimed_at = excluded.claimed_at WHERE bitloop_retrain_claims.claimed_at <= ?",
                (model_name, signal, now, now - cooldown_seconds),
            ).rowcount
            holder = None
            if not claimed:
                found = self._execute(
                    "SELECT signal, claimed_at FROM bitloop_retrain_claims WHERE model_name = ?",
                    (model_name,),
                ).fetchone()
                holder = (str(found[0]), float(found[1]))
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return holder

    def count(self) -> int:
        total = int(self._execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
        self.rollback()
        return total

    @abstractmethod
    def _decode(self, value: Any) -> Any:
        """A JSON column's value as Python."""

    @abstractmethod
    def table_missing(self, err: Exception) -> bool:
        """Whether `err` says the predictions table does not exist yet (nobody wrote the log)."""


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


def insert_rows(url: str | Path, rows: Iterable[Row]) -> None:
    """Append rows in one transaction (what the model server's writer does in batches)."""
    store = open_store(url)
    try:
        store.stage(rows)
        store.commit()
    finally:
        store.close()


def _exists(url: str | Path) -> bool:
    return is_postgres(str(url)) or Path(str(url).removeprefix("sqlite:///")).exists()


def answered_records(url: str | Path, model_name: str, version: str, limit: int) -> list[dict[str, Any]]:
    """The inputs of the newest `limit` records `version` answered (shadow rows left out), newest
    first: what a version about to replace it must also answer."""
    if not _exists(url):
        return []
    store = open_store(url, read_only=True)
    try:
        return store.answered(model_name, version, limit)
    finally:
        store.close()


def read_features(
    url: str | Path,
    model_name: str,
    *,
    since: float | None = None,
    until: float | None = None,
    limit: int = 5000,
) -> pd.DataFrame:
    """The newest `limit` logged inputs of a model in [since, until) (Unix seconds), oldest first.

    Rows that shadow scoring logged a second time are left out. A log not created yet is an empty frame.
    """
    nothing: list[dict[str, Any]] = []
    return pd.DataFrame(
        _read(url, lambda store: store.window(model_name, since or 0.0, until or math.inf, limit), nothing)
    )


def _read(url: str | Path, read: Callable[[PredictionStore], T], empty: T) -> T:
    """`read` on a read-only connection; `empty` while no server has created the log yet."""
    if not _exists(url):
        return empty
    store = open_store(url, read_only=True)
    try:
        return read(store)
    except Exception as err:
        if store.table_missing(err):
            return empty
        raise
    finally:
        store.close()


def read_labelled(
    url: str | Path, model_name: str, *, since: float, until: float = math.inf, limit: int = 20_000
) -> list[LoggedPrediction]:
    """The newest `limit` predictions of a model in [since, until) with their true outcomes, oldest
    first (`core.quality`). A log not created yet has none."""
    nothing: list[LoggedPrediction] = []
    return _read(url, lambda store: store.labelled(model_name, since, until, limit), nothing)


def read_unlabelled(url: str | Path, model_name: str, *, since: float, limit: int = 100_000) -> list[str]:
    """Entity ids of a model's answered predictions since `since` with no outcome yet, newest
    first (the ground_truth DAG asks the world about them). A log not created yet has none."""
    nothing: list[str] = []
    return _read(url, lambda store: store.unlabelled(model_name, since, limit), nothing)


def read_rows(url: str | Path) -> list[Row]:
    """Every row, in the order written."""
    store = open_store(url, read_only=True)
    try:
        return store.rows()
    finally:
        store.close()


def count_rows(url: str | Path) -> int:
    store = open_store(url, read_only=True)
    try:
        return store.count()
    finally:
        store.close()
