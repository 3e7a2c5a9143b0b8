"""Pluggable data sources, chosen by `data.source` in params.yaml."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
import pandas as pd

from core.params import DataParams
from pipeline.data.sources.bundled import bundled_task, load_bundled
from pipeline.data.sources.files import SourceError, load_table
from pipeline.data.sources.simulated import RANGES as SIMULATED_RANGES
from pipeline.data.sources.simulated import simulate_churn

__all__ = ["SourceError", "describe_batch", "expected_ranges", "load_batch"]


def describe_batch(
    data: DataParams, seed: int | None = None, drift: float | None = None, concept: float | None = None
) -> dict[str, Any]:
    """What identifies the batch a source would give now (recorded in the raw store).

    With a data-source service (`data.path`) and no explicit drift, the service's world decides:
    its drift and, when it has moved the concept apart, its concept. An explicit `concept` goes with
    an explicit `drift` (None: the relation follows the drift).
    """
    if data.source == "simulated":
        if drift is None:
            drift, concept = world_levels(data.path) if data.path else (data.drift, None)
        spec = {
            "source": "simulated",
            "rows": data.rows,
            "seed": data.seed if seed is None else seed,
            "drift": drift,
            "service": data.path,
        }
        return spec if concept is None else {**spec, "concept": concept}
    if data.source == "sklearn":
        return {"source": "sklearn", "name": data.name}
    return {"source": "csv", "path": data.path}


def world_levels(service: str) -> tuple[float, float | None]:
    """The drift and concept (None: it follows the drift) the data-source service draws batches with."""
    url = f"{service.rstrip('/')}/world"
    try:
        answer = httpx.get(url, timeout=10.0)
        answer.raise_for_status()
        world = answer.json()
        concept = world.get("concept")
        return float(world["drift"]), None if concept is None else float(concept)
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as err:
        raise SourceError(f"cannot read the data source's world at {url}: {err}") from None


def expected_ranges(data: DataParams) -> dict[str, tuple[float, float]]:
    """Value ranges the source guarantees (only the simulated source knows its own)."""
    return dict(SIMULATED_RANGES) if data.source == "simulated" else {}


def load_batch(
    data: DataParams, seed: int | None = None, drift: float | None = None, concept: float | None = None
) -> pd.DataFrame:
    """Read one batch from the configured source; seed, drift and concept override the simulated draw."""
    spec = describe_batch(data, seed, drift, concept)
    if data.source == "simulated":
        if data.path:
            levels = {"drift": spec["drift"]} | ({"concept": spec["concept"]} if "concept" in spec else {})
            query = urlencode({"n": spec["rows"], "seed": spec["seed"], **levels, "format": "parquet"})
            return load_table(f"{data.path.rstrip('/')}/batch?{query}")
        return simulate_churn(spec["rows"], spec["seed"], spec["drift"], spec.get("concept"))
    if data.source == "sklearn":
        if bundled_task(str(data.name)) != data.task:
            raise SourceError(
                f"dataset {data.name!r} is a {bundled_task(str(data.name))} task "
                f"but data.task is {data.task!r}"
            )
        return load_bundled(str(data.name), data.target)
    return load_table(str(data.path))
