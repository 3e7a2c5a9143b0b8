"""Prometheus metrics of the model server (base units, `_total` counters, `bitloop_` prefix)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY

from core.rollout import INFERENCE_BUCKETS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter("bitloop_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "bitloop_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
IN_PROGRESS = Gauge(
    "bitloop_http_requests_in_progress",
    "HTTP requests being answered",
    ["method", "route"],
    multiprocess_mode="livesum",
)
PREDICTIONS = Counter(
    "bitloop_predictions_total",
    "Predictions made, by predicted class ('value' for regression)",
    ["model", "version", "variant", "prediction"],
)
# A regression target can be in any units, and a histogram has one bucket list: predictions are
# observed as their position in the training target's range, which is exported beside them.
POSITION_BUCKETS = tuple(round(i * 0.05, 2) for i in range(21))
PREDICTED_POSITION = Histogram(
    "bitloop_prediction_position",
    "Regression predictions as a share of the training target's range (0 its minimum, 1 its maximum)",
    ["model", "variant"],
    buckets=POSITION_BUCKETS,
)
TARGET_RANGE = Gauge(
    "bitloop_prediction_target_range",
    "The served regression model's training-target minimum and maximum",
    ["model", "variant", "bound"],
    multiprocess_mode="mostrecent",
)
INFERENCE = Histogram(
    "bitloop_inference_duration_seconds",
    "Time of one model call (a micro-batch)",
    ["model", "version", "variant"],
    buckets=INFERENCE_BUCKETS,
)
BATCH_ROWS = Histogram(
    "bitloop_inference_batch_rows", "Rows per model call", ["model", "variant"], buckets=BATCH_BUCKETS
)
MODEL_INFO = Gauge(
    "bitloop_model_info",
    "1 for the model version being served, and the runtime answering for it (onnx or sklearn)",
    ["model", "version", "variant", "runtime"],
    multiprocess_mode="max",
)
MODEL_VERSION = Gauge(
    "bitloop_model_version",
    "Registry version number served by each variant (0: none); a step is a promotion or rollback",
    ["model", "variant"],
    multiprocess_mode="max",
)
MODEL_LOADED = Gauge(
    "bitloop_model_loaded",
    "1 when the model's champion can predict: loaded, or unloaded past the memory budget and loaded "
    "again on its next request",
    ["model"],
    multiprocess_mode="min",
)
MODEL_RESIDENT = Gauge(
    "bitloop_model_resident",
    "1 while the model's versions are in memory; 0 once unloaded past BITLOOP_API_MAX_LOADED_MODELS",
    ["model"],
    multiprocess_mode="max",
)
MODEL_UNLOADS = Counter(
    "bitloop_model_unloads_total", "Models unloaded as the least recently used past the budget", ["model"]
)
COLD_LOADS = Histogram(
    "bitloop_model_cold_load_seconds",
    "Time a request waited for its unloaded model to load again",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
ROLLOUT_SHARE = Gauge(
    "bitloop_rollout_share",
    "Share of traffic the canary of a rollout answers (0: no rollout under way)",
    ["model"],
    multiprocess_mode="max",
)
ROLLOUT_LAST = Gauge(
    "bitloop_rollout_last_timestamp_seconds",
    "When the last rollout ended, with its outcome (promoted, rolled_back, aborted) and version",
    ["model", "version", "outcome"],
    multiprocess_mode="max",
)
REGISTRY_REACHABLE = Gauge(
    "bitloop_registry_reachable",
    "1 when the last registry check answered; 0 while the registry is unreachable and the loaded "
    "versions, and a rollout's split, stay as they are",
    ["model"],
    multiprocess_mode="livemin",
)
CANARY_FALLBACKS = Counter(
    "bitloop_canary_fallbacks_total",
    "Records the canary failed on that the stable version answered instead",
    ["model", "version"],
)
RELOADS = Counter("bitloop_model_reloads_total", "Model swap attempts", ["model", "variant", "result"])
LOG_ROWS = Counter("bitloop_prediction_log_rows_total", "Rows committed to the prediction log")
LOG_LAG = Histogram(
    "bitloop_prediction_log_lag_seconds",
    "Time from a prediction to its row being committed",
    buckets=LATENCY_BUCKETS,
)
LOG_QUEUE = Gauge(
    "bitloop_prediction_log_queue_rows",
    "Rows waiting to be written to the prediction log, in memory or on disk",
    multiprocess_mode="livesum",
)
LOG_SPILLED = Gauge(
    "bitloop_prediction_log_spilled_rows",
    "Rows waiting to be written to the prediction log on disk only, past the memory budget",
    multiprocess_mode="livesum",
)
LOG_DROPPED = Counter(
    "bitloop_prediction_log_dropped_rows_total",
    "Answered predictions never written to the log (its memory budget was full, or shutdown timed out)",
)
LOG_QUARANTINED = Counter(
    "bitloop_prediction_log_quarantined_rows_total",
    "Answered predictions the log's store refused for what they hold, kept in its quarantine table",
)
LOG_WRITE_FAILURES = Counter(
    "bitloop_prediction_log_write_failures_total", "Failed prediction log writes (each one is retried)"
)
LOG_DEGRADED = Gauge(
    "bitloop_prediction_log_degraded",
    "1 while writes to the prediction log fail and rows wait in memory",
    multiprocess_mode="max",
)
LOG_EXPIRED = Counter(
    "bitloop_prediction_log_expired_rows_total", "Rows deleted from the prediction log by retention"
)
PREDICTION_FAILURES = Counter(
    "bitloop_prediction_failures_total",
    "Records the model could not score: cause 'input' (answered 422) or 'model' (answered 500)",
    ["model", "version", "variant", "cause"],
)
FEEDBACK = Counter(
    "bitloop_feedback_outcomes_total",
    "True outcomes received by POST /feedback: recorded, invalid (refused, the others in its request "
    "recorded), duplicate, conflict (another outcome is stored) or unknown (no answered prediction found)",
    ["model", "status"],
)
BODY_TIMEOUTS = Counter("bitloop_request_body_timeouts_total", "Requests whose body did not arrive in time")

# Drift of the served champion's live inputs (a sliding window of the prediction log).
DRIFT_SCORE = Gauge(
    "bitloop_drift_score",
    "Per-feature drift statistic: p-value for ks/chi2 (drift below the threshold), "
    "distance for wasserstein/jensenshannon (drift at or above it)",
    ["model", "feature", "method"],
    multiprocess_mode="mostrecent",
)
DRIFT_THRESHOLD = Gauge(
    "bitloop_drift_threshold",
    "The threshold the feature's drift score is compared with",
    ["model", "feature", "method"],
    multiprocess_mode="mostrecent",
)
FEATURE_DRIFTED = Gauge(
    "bitloop_feature_drift_detected",
    "1 when the feature's live values drift from the reference",
    ["model", "feature"],
    multiprocess_mode="mostrecent",
)
FEATURE_PSI = Gauge(
    "bitloop_feature_psi",
    "Population stability index of the feature against the reference",
    ["model", "feature"],
    multiprocess_mode="mostrecent",
)
DATASET_DRIFT = Gauge(
    "bitloop_dataset_drift",
    "1 when the share of drifted features reaches the threshold",
    ["model"],
    multiprocess_mode="mostrecent",
)
DRIFT_SHARE = Gauge(
    "bitloop_drift_share",
    "Share of the tested features that drift",
    ["model"],
    multiprocess_mode="mostrecent",
)
DRIFT_SHARE_THRESHOLD = Gauge(
    "bitloop_drift_share_threshold",
    "Dataset drift threshold on the drift share",
    ["model"],
    multiprocess_mode="mostrecent",
)
DRIFT_ROWS = Gauge(
    "bitloop_drift_window_rows",
    "Live rows in the last drift evaluation",
    ["model"],
    multiprocess_mode="mostrecent",
)
DRIFT_MIN_ROWS = Gauge(
    "bitloop_drift_min_rows",
    "Live rows the drift window needs before any verdict (drift.min_samples)",
    ["model"],
    multiprocess_mode="mostrecent",
)
DRIFT_EVALUATED = Gauge(
    "bitloop_drift_last_evaluation_timestamp_seconds",
    "Unix time of the last drift evaluation",
    ["model"],
    multiprocess_mode="mostrecent",
)


def render() -> tuple[bytes, str]:
    """The exposition text; aggregates every worker when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# Live quality from true outcomes (a sliding window of the prediction log joined with /feedback).
LIVE_QUALITY = Gauge(
    "bitloop_live_quality",
    "A metric of a version's labelled predictions in the quality window (quality.min_labelled on)",
    ["model", "metric", "version", "variant"],
    multiprocess_mode="mostrecent",
)
ESTIMATED_QUALITY = Gauge(
    "bitloop_estimated_quality",
    "A classifier's accuracy or ROC AUC expected from its probabilities, before labels (CBPE)",
    ["model", "metric", "version", "variant"],
    multiprocess_mode="mostrecent",
)
QUALITY_LIMIT = Gauge(
    "bitloop_live_quality_limit",
    "The worst acceptable live value of a metric: the floor (promote.floors) or the version's holdout "
    "figure less quality.max_drop (primary metric); better says which way is better",
    ["model", "metric", "version", "kind", "better"],
    multiprocess_mode="mostrecent",
)
HOLDOUT_QUALITY = Gauge(
    "bitloop_holdout_quality",
    "A served version's metric on its holdout at registration",
    ["model", "metric", "version", "variant"],
    multiprocess_mode="mostrecent",
)
LABEL_COVERAGE = Gauge(
    "bitloop_label_coverage_ratio",
    "Share of a version's predictions in the quality window with a true outcome",
    ["model", "version", "variant"],
    multiprocess_mode="mostrecent",
)
LABEL_LAG = Gauge(
    "bitloop_label_lag_seconds",
    "Median time from a prediction to its true outcome in the quality window",
    ["model", "version", "variant"],
    multiprocess_mode="mostrecent",
)
LABELLED = Gauge(
    "bitloop_labelled_predictions",
    "Predictions with a true outcome in the quality window",
    ["model", "version", "variant"],
    multiprocess_mode="mostrecent",
)
QUALITY_EVALUATED = Gauge(
    "bitloop_quality_last_evaluation_timestamp_seconds",
    "Unix time of the last live-quality evaluation",
    ["model"],
    multiprocess_mode="mostrecent",
)
