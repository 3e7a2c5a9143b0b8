"""How long the drift window takes to read from a large prediction log: the window query served by
the (model_name, ts) index against the former query (ORDER BY id over the ts index alone), side by
side on the same file. `.venv/bin/python bench/drift_window.py --rows 250000`
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from core.predictions.backends import SqliteStore, open_store  # noqa: E402
from core.predictions.tables import WINDOW_QUERY  # noqa: E402

FORMER_QUERY = (
    "SELECT features FROM predictions WHERE model_name = ? AND variant IN (?, ?)"
    " AND ts >= ? AND ts < ? ORDER BY id DESC LIMIT ?"
)


def best_of(conn: sqlite3.Connection, sql: str, args: tuple[object, ...], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        conn.execute(sql, args).fetchall()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=250_000, help="rows in the log, all within the window")
    parser.add_argument("--limit", type=int, default=5000, help="rows the window reads (drift.max_rows)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        store = open_store(Path(scratch) / "predictions.sqlite")  # the table as the model server makes it
        if not isinstance(store, SqliteStore):
            raise TypeError("a SQLite path gives a SQLite store")
        conn = store.conn
        now = time.time()
        features = json.dumps({"age": 41, "region": "north", "monthly_charges": 94.5, "tenure_months": 5})
        step = 3000 / args.rows
        conn.executemany(
            "INSERT INTO predictions (ts, request_id, model_name, model_version, variant, features, "
            "prediction) VALUES (?, ?, 'm', '1', 'champion', ?, '1')",
            ((now - 3000 + i * step, f"r{i}", features) for i in range(args.rows)),
        )
        conn.commit()
        window = (now - 3600, now + 1)
        indexed = best_of(conn, WINDOW_QUERY, ("m", *window, "champion", "challenger", args.limit))
        conn.execute("DROP INDEX predictions_model_ts")
        former = best_of(conn, FORMER_QUERY, ("m", "champion", "challenger", *window, args.limit))
        conn.close()
    print(
        f"{args.rows:,} rows, newest {args.limit:,} of the last hour: former query {former * 1000:.1f} ms, "
        f"indexed {indexed * 1000:.1f} ms ({former / indexed:.0f}x)"
    )


if __name__ == "__main__":
    main()
