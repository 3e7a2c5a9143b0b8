"""`make bench-smoke`: bitloop (each runtime) against `mlflow models serve` and the no-model
ceilings, side by side in one run, three short passes. It fails when the median of a figure the
last `make bench` stated (docs/benchmarks.md) falls to half of it: wide enough for the noise of
one shared machine, narrow enough for a real regression (a synchronous log write per request, a
model call per request instead of micro-batches). No absolute time is checked.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.figures import FIGURES, SMOKE, Figure  # noqa: E402
from bench.serving import (  # noqa: E402
    Champion,
    batch_bodies,
    champion,
    check_runtimes,
    servers,
    single_targets,
    timed_posts,
    wrk,
)


def stated_figures(report: str) -> dict[str, float]:
    """The figures docs/benchmarks.md (the last `make bench`) states, by key."""
    values = {}
    for figure in FIGURES:
        match = re.search(rf"^\| {re.escape(figure.label)} \| ([\d.]+)", report, flags=re.MULTILINE)
        if match:
            values[figure.key] = float(match.group(1))
    return values


def smoke_floor(figure: Figure, stated: float) -> float:
    """Half as good as stated: the bound a smoke run fails past, wide enough for any noise seen on
    one machine (docs/benchmarks.md shows three runs' spread) and narrow enough for a real regression."""
    return stated / 2 if figure.higher_is_better else stated * 2


def smoke_round(urls: dict[str, str], model: Champion, seconds: int) -> dict[str, Any]:
    """One pass over every server: 64 connections for `seconds`, then 20 sequential 1,000-row batches."""
    single = {}
    for name, (url, body) in single_targets(urls, model).items():
        measured = wrk(url, body, 64, seconds)
        if measured["errors"]:
            raise RuntimeError(f"{name} answered {measured['errors']:.0f} requests with an error: {measured}")
        single[name] = {"64": measured}
    as_records, as_mlflow = batch_bodies(model)
    batch = {
        "bitloop": timed_posts(f"{urls['api']}/predict/batch", as_records, 20),
        "mlflow_serve": timed_posts(f"{urls['mlflow']}/invocations", as_mlflow, 20),
    }
    return {"single": single, "batch_1000_p50_ms": batch}


def smoke(stated: dict[str, float], seconds: int, rounds: int, workers: int) -> list[dict[str, Any]]:
    """`rounds` passes over bitloop (each runtime), `mlflow models serve` and the ceilings, in one run,
    and each smoke figure per pass, next to the stated figure and the floor."""
    figures = [f for f in FIGURES if f.key in SMOKE]
    missing = [f.label for f in figures if f.key not in stated]
    if missing:
        raise LookupError(f"docs/benchmarks.md states no {missing}: run `make bench` first")
    with tempfile.TemporaryDirectory(prefix="bitloop-smoke-") as scratch:
        work = Path(scratch)
        with champion(work) as model, servers(work, model.uri, workers) as (urls, _):
            check_runtimes(urls)
            for url, body in single_targets(urls, model).values():
                wrk(url, body, 8, 1)  # warm up
            passes = []
            for number in range(1, rounds + 1):
                passes.append(smoke_round(urls, model, seconds))
                print(f"pass {number} of {rounds} done", flush=True)
    return [smoke_check(f, stated[f.key], [f.value(measured) for measured in passes]) for f in figures]


def smoke_check(figure: Figure, stated: float, runs: list[float]) -> dict[str, Any]:
    """A figure's smoke verdict: the median of its runs against half of what is stated."""
    median = statistics.median(runs)
    floor = smoke_floor(figure, stated)
    return {
        "key": figure.key,
        "label": figure.label,
        "stated": stated,
        "floor": floor,
        "runs": runs,
        "median": median,
        "passed": figure.met(median, floor),
    }


def smoke_report(checked: list[dict[str, Any]]) -> str:
    by_key = {f.key: f for f in FIGURES}
    rows = ["| figure | stated | fails past | runs | median | verdict |", "|---|---:|---:|---|---:|---|"]
    for c in checked:
        f = by_key[c["key"]]
        rows.append(
            f"| {c['label']} | {f.shown(c['stated'])} | {f.shown(c['floor'])} | "
            f"{', '.join(f.shown(v) for v in c['runs'])} | {f.shown(c['median'])} | "
            f"{'passed' if c['passed'] else '**FAILED**'} |"
        )
    return "\n".join(rows)


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install wrk` (Debian/Ubuntu) or `nix develop`", file=sys.stderr)
        return 2
    stated = stated_figures((PROJECT / "docs" / "benchmarks.md").read_text())
    checked = smoke(stated, seconds=3, rounds=3, workers=2)
    (PROJECT / "bench" / "results").mkdir(exist_ok=True)
    (PROJECT / "bench" / "results" / "smoke.json").write_text(json.dumps(checked, indent=2) + "\n")
    print(smoke_report(checked))
    failed = [c["label"] for c in checked if not c["passed"]]
    if failed:
        print(f"bench-smoke failed: {failed} fell to half of what docs/benchmarks.md states", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
