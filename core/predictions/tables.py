"""The prediction log's tables: their columns, the versioned migrations that create and change
them (recorded in bitloop_schema), and the queries the readers share."""

from __future__ import annotations

from dataclasses import dataclass

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
