"""One open connection to the prediction log (`PredictionStore`): staged writes, migrations,
the quarantine, expiry, outcomes, the retraining claim and the reads, in SQL both backends share."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import orjson

from core.predictions.rows import (
    SHADOW,
    LoggedPrediction,
    PredictionLogUnavailable,
    Row,
    quarantine_text,
    redacted,
)
from core.predictions.tables import (
    LABELLED_QUERY,
    MIGRATIONS,
    SCHEMA_VERSION,
    SELECT_ALL,
    WINDOW_QUERY,
    Migration,
)

ROW_REFUSALS: tuple[type[Exception], ...] = (ValueError, TypeError, OverflowError)
"""What a driver raises for a value it cannot send (a NUL, a lone surrogate, an integer too large):
row-specific on every store, beside each store's own data and integrity errors."""


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

    def resolve(
        self, model_name: str, request_id: str | None, row: int, entity_id: str | None
    ) -> tuple[str, int] | None:
        """The (request id, row) a true outcome is for: the answered prediction of model `model_name`
        with that request id and row, or its newest answered prediction for the entity id (an entity
        another model scored too keeps each model's outcomes apart); None while the log has none."""
        if request_id is not None:
            found = self._execute(
                "SELECT request_id, row_index FROM predictions WHERE request_id = ? AND row_index = ? "
                "AND model_name = ? AND variant <> ? LIMIT 1",
                (request_id, row, model_name, SHADOW),
            ).fetchone()
        else:
            found = self._execute(
                "SELECT request_id, row_index FROM predictions WHERE entity_id = ? AND model_name = ? "
                "AND variant <> ? ORDER BY ts DESC LIMIT 1",
                (entity_id, model_name, SHADOW),
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
