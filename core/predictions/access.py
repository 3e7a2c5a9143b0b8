"""Open, do one thing, close: the readers the drift code, the quality code and the CLI call
with the log's URL, and the writer the tests use. A log that does not exist yet reads as empty."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from core.predictions.backends import open_store
from core.predictions.rows import LoggedPrediction, Row, is_postgres
from core.predictions.store import PredictionStore

T = TypeVar("T")


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
