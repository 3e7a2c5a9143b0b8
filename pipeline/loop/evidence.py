"""The rollout's evidence, gathered: what Prometheus and the prediction log say of each side since
the rollout started (`gather`). What cannot be had is named, and leaves its SLOs pending.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import httpx

from core.params import Params
from core.rollout import Rollout
from pipeline.loop.judgement import Evidence, Side, prediction_shift, quality_spread

if TYPE_CHECKING:
    from mlflow import MlflowClient


def _series(prometheus: str, query: str) -> list[tuple[dict[str, str], float]]:
    """One PromQL instant query: each series' labels and finite value."""
    answer = httpx.get(f"{prometheus.rstrip('/')}/api/v1/query", params={"query": query}, timeout=10.0)
    answer.raise_for_status()
    found = [(r["metric"], float(r["value"][1])) for r in answer.json()["data"]["result"]]
    return [(labels, value) for labels, value in found if math.isfinite(value)]


def _query(prometheus: str, query: str) -> float | None:
    """One PromQL instant query summed over its series; None when it has no (finite) value."""
    values = [value for _, value in _series(prometheus, query)]
    return sum(values) if values else None


Figures = tuple[float, float, float | None, tuple[tuple[float, float], ...] | None]
"""Records, failures, p95 model-call time and its histogram, of one side (`served_figures`)."""


def served_figures(prometheus: str, model: str, version: str, variant: str, seconds: float) -> Figures:
    """Records answered, records it failed to score, the p95 model-call time (s) and the calls'
    histogram of one side over the last `seconds`, summed over every replica Prometheus scrapes."""
    # The window is the rollout's own age, so that an earlier rollout's calls never count; a window
    # shorter than two scrapes has no value yet, and the decider waits.
    window = f"[{max(1, math.ceil(seconds))}s]"
    side = f'model="{model}",variant="{variant}",version="{version}"'
    records = _query(prometheus, f"sum(increase(bitloop_predictions_total{{{side}}}{window}))")
    failures = _query(
        prometheus,
        f"sum(increase(bitloop_prediction_failures_total{{{side}}}{window}))",
    )
    p95 = _query(
        prometheus,
        f"histogram_quantile(0.95, sum by (le) "
        f"(increase(bitloop_inference_duration_seconds_bucket{{{side}}}{window})))",
    )
    histogram = f"sum by (le) (increase(bitloop_inference_duration_seconds_bucket{{{side}}}{window}))"
    buckets = sorted((float(labels["le"]), value) for labels, value in _series(prometheus, histogram))
    return records or 0.0, failures or 0.0, p95, tuple(buckets) or None


def gather(
    rollout: Rollout,
    params: Params,
    client: MlflowClient,
    prometheus: str | None,
    prediction_log: str,
    now: datetime,
) -> Evidence:
    """Everything both sides showed since the rollout started; what cannot be had is named in
    `problems` and leaves its SLOs pending."""
    from core.predictions.access import read_labelled
    from core.quality import evaluate
    from core.registry import run_schema

    elapsed = rollout.elapsed_seconds(now)
    metric = params.promote.primary_metric(params.data.task)
    problems: list[str] = []
    figures: dict[str, Figures] = {}
    timed: Literal["yes", "unconfigured", "unreachable"] = "yes" if prometheus else "unconfigured"
    if prometheus:
        try:
            for variant, version in (("canary", rollout.version), ("champion", rollout.stable)):
                figures[variant] = served_figures(prometheus, rollout.model, version, variant, elapsed)
        except (httpx.HTTPError, KeyError, ValueError) as err:
            problems.append(f"Prometheus did not answer ({type(err).__name__}): errors and latency wait")
            timed, figures = "unreachable", {}

    rows = read_labelled(
        prediction_log, rollout.model, since=rollout.started_at.timestamp(), limit=params.quality.max_rows
    )
    canary_rows = [r for r in rows if r.version == rollout.version and r.variant == "canary"]
    stable_rows = [r for r in rows if r.version == rollout.stable and r.variant == "champion"]
    schema = run_schema(client, str(client.get_model_version(rollout.model, rollout.version).run_id))
    quality = {
        (q.version, q.variant): q
        for q in evaluate(
            canary_rows + stable_rows, schema.task, list(schema.classes), params.quality, params.promote, {}
        )
    }

    rows_of = {"canary": canary_rows, "champion": stable_rows}

    def side(variant: str, version: str) -> Side:
        # Without Prometheus the prediction log counts the answered records.
        records, failures, p95, buckets = figures.get(
            variant, (float(len(rows_of[variant])), 0.0, None, None)
        )
        found = quality.get((version, variant))
        return Side(
            records=records,
            failures=failures,
            p95_seconds=p95,
            latency_buckets=buckets,
            quality=None if found is None else found.realized.get(metric),
            labelled=0 if found is None else found.labelled,
            quality_spread=(
                0.0
                if found is None or metric not in found.realized
                else quality_spread(rows_of[variant], schema.task, list(schema.classes), metric)
            ),
        )

    return Evidence(
        canary=side("canary", rollout.version),
        stable=side("champion", rollout.stable),
        psi=prediction_shift(stable_rows, canary_rows, schema.task),
        psi_rows=(len(canary_rows), len(stable_rows)),
        elapsed_seconds=elapsed,
        metric=metric,
        timed=timed,
        problems=problems,
    )
