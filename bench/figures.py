"""The figures `make bench` reports and `make bench-smoke` checks: how each is read from a run's
results, and the target it must meet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One row of docs/benchmarks.md's figures table: how it is read from a run's results, and the
    target it must meet, if it has one."""

    key: str
    label: str
    read: Callable[[dict[str, Any]], float]
    form: str  # how the value is printed: a format spec and a unit
    higher_is_better: bool = True
    target: float | None = None

    def value(self, r: dict[str, Any]) -> float:
        return self.read(r)

    def shown(self, value: float) -> str:
        spec, _, unit = self.form.partition(" ")
        return f"{value:{spec}}{' ' + unit if unit and unit != 'x' else unit}"

    def goal(self) -> str:
        if self.target is None:
            return ""
        return f"{'≥' if self.higher_is_better else '≤'} {self.shown(self.target)}"

    def met(self, value: float, bound: float | None = None) -> bool:
        """Whether `value` meets `bound` (the target unless given)."""
        bound = self.target if bound is None else bound
        if bound is None:
            raise ValueError(f"{self.label} has no target")
        return value >= bound if self.higher_is_better else value <= bound


def _rps(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r["single"][name]["64"]["rps"])


def _batch(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r["batch_1000_p50_ms"][name])


def _local(name: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r["in_process"][name])


FIGURES = (
    Figure(
        "c64_throughput_vs_mlflow",
        "throughput at concurrency 64, bitloop / mlflow serve",
        lambda r: _rps("bitloop")(r) / _rps("mlflow_serve")(r),
        ".1f x",
        target=30,
    ),
    Figure(
        "c64_sklearn_throughput_vs_mlflow",
        "throughput at concurrency 64, bitloop with the scikit-learn runtime / mlflow serve",
        lambda r: _rps("bitloop_sklearn")(r) / _rps("mlflow_serve")(r),
        ".1f x",
    ),
    Figure(
        "c64_throughput_vs_bare_ceiling",
        "throughput at concurrency 64, bitloop / bare FastAPI ceiling",
        lambda r: _rps("bitloop")(r) / _rps("bare_ceiling")(r),
        ".2f",
        target=0.5,
    ),
    Figure(
        "c64_throughput_vs_ceiling",
        "throughput at concurrency 64, bitloop / schema-validating ceiling",
        lambda r: _rps("bitloop")(r) / _rps("no_model_ceiling")(r),
        ".2f",
    ),
    Figure(
        "c64_onnx_vs_sklearn_runtime",
        "throughput at concurrency 64, ONNX runtime / scikit-learn runtime",
        lambda r: _rps("bitloop")(r) / _rps("bitloop_sklearn")(r),
        ".2f x",
    ),
    Figure(
        "c64_p99_ms",
        "p99 at concurrency 64, bitloop",
        lambda r: float(r["single"]["bitloop"]["64"]["p99_ms"]),
        ".1f ms",
        higher_is_better=False,
        target=25,
    ),
    Figure(
        "c1_p50_vs_in_process",
        "p50 at concurrency 1 over HTTP / in-process scikit-learn, 1 row",
        lambda r: float(r["single"]["bitloop"]["1"]["p50_ms"]) / _local("one_row_ms")(r),
        ".2f",
        higher_is_better=False,
        target=1,
    ),
    Figure(
        "batch_1000_vs_in_process",
        "1,000-row batch, bitloop / in-process scikit-learn",
        lambda r: _batch("bitloop")(r) / _local("batch_1000_ms")(r),
        ".2f x",
        higher_is_better=False,
        target=1.5,
    ),
    Figure(
        "batch_1000_vs_mlflow",
        "1,000-row batch, bitloop / mlflow serve",
        lambda r: _batch("bitloop")(r) / _batch("mlflow_serve")(r),
        ".2f x",
        higher_is_better=False,
        target=1,
    ),
    Figure(
        "batch_1000_columns_vs_in_process",
        "1,000-row batch as JSON columns, bitloop / in-process scikit-learn",
        lambda r: _batch("bitloop_columns")(r) / _local("batch_1000_ms")(r),
        ".2f x",
        higher_is_better=False,
    ),
    Figure(
        "batch_1000_arrow_vs_in_process",
        "1,000-row batch as an Arrow stream, bitloop / in-process scikit-learn",
        lambda r: _batch("bitloop_arrow")(r) / _local("batch_1000_ms")(r),
        ".2f x",
        higher_is_better=False,
        target=1.1,
    ),
    Figure(
        "in_process_onnx_speedup_one_row",
        "in process, scikit-learn / ONNX Runtime, 1 row",
        lambda r: _local("one_row_ms")(r) / _local("onnx_one_row_ms")(r),
        ".0f x",
    ),
    Figure(
        "in_process_onnx_speedup_batch_1000",
        "in process, scikit-learn / ONNX Runtime, 1,000 rows",
        lambda r: _local("batch_1000_ms")(r) / _local("onnx_batch_1000_ms")(r),
        ".1f x",
    ),
)


def ratios(r: dict[str, Any]) -> dict[str, float]:
    return {figure.key: figure.value(r) for figure in FIGURES}


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    """Each target's figure: met or not."""
    return {f.key: f.met(f.value(r)) for f in FIGURES if f.target is not None}


# The figures `make bench-smoke` checks: those the README states, the ceilings' (what the server
# adds to HTTP), and the scikit-learn runtime's (what micro-batching saves where a model call is dear).
SMOKE = (
    "c64_throughput_vs_mlflow",
    "c64_sklearn_throughput_vs_mlflow",
    "c64_onnx_vs_sklearn_runtime",
    "c64_throughput_vs_bare_ceiling",
    "c64_throughput_vs_ceiling",
    "batch_1000_vs_mlflow",
)
