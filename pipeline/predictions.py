"""The prediction-log table: its schema, the row, the one insert and the readers.

The model server writes it (through the bounded queue in `api/predlog.py`); the drift code of the
model server and of the drift monitor reads it; tests write and read it through the same
functions. SQLite in WAL mode, so one writer and any number of readers work at once.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

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
CREATE INDEX IF NOT EXISTS predictions_model_ts ON predictions (model_name, ts);
"""
SERVED_VARIANTS = ("champion", "challenger")
"""Rows that answered a request; "shadow" rows repeat inputs that were already logged."""

# Served newest first by the (model_name, ts) index: no sort, and at most `limit` rows are read.
WINDOW_QUERY = (
    "SELECT features FROM predictions WHERE model_name = ? AND ts >= ? AND ts < ?"
    " AND variant IN (?, ?) ORDER BY ts DESC LIMIT ?"
)
INSERT = (
    "INSERT INTO predictions (ts, request_id, model_name, model_version, variant, features, prediction, "
    "probabilities) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
COLUMNS = "ts, request_id, model_name, model_version, variant, features, prediction, probabilities"


@dataclass(frozen=True)
class Row:
    """One answered record. A dataclass, not a validated model: rows are built on the request path."""

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


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the log at `path`, created with its table and indexes when new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def insert_rows(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    """Append rows in one transaction (sqlite3.Error when the file cannot take them)."""
    try:
        stage_rows(conn, rows)
    except sqlite3.Error:
        conn.rollback()
        raise
    conn.commit()


def stage_rows(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    """Insert rows in an open transaction; the caller commits or rolls back."""
    compact = (",", ":")
    values = [
        (
            r.ts,
            r.request_id,
            r.model_name,
            r.model_version,
            r.variant,
            json.dumps(r.features, separators=compact),
            json.dumps(r.prediction),
            None if r.probabilities is None else json.dumps(r.probabilities, separators=compact),
        )
        for r in rows
    ]
    conn.executemany(INSERT, values)


def read_features(
    path: Path,
    model_name: str,
    *,
    since: float | None = None,
    until: float | None = None,
    limit: int = 5000,
) -> pd.DataFrame:
    """The newest `limit` logged inputs of a model in [since, until) (Unix seconds), oldest first.

    Rows that shadow scoring logged a second time are left out. A missing log is an empty frame.
    """
    if not path.exists():
        return pd.DataFrame()
    args = (model_name, since or 0.0, until or math.inf, *SERVED_VARIANTS, limit)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        rows = conn.execute(WINDOW_QUERY, args).fetchall()
    finally:
        conn.close()
    return pd.DataFrame([json.loads(r[0]) for r in reversed(rows)])


def read_rows(path: Path) -> list[Row]:
    """Every row, in the order written."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        found = conn.execute(f"SELECT {COLUMNS} FROM predictions ORDER BY id").fetchall()  # noqa: S608
    return [
        Row(
            ts,
            request,
            name,
            version,
            variant,
            json.loads(features),
            json.loads(prediction),
            None if probabilities is None else json.loads(probabilities),
        )
        for ts, request, name, version, variant, features, prediction, probabilities in found
    ]


def count_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])
