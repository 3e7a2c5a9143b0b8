"""Benchmark: one model server serving three models, against the same server serving one.

The same champion (bench/serving.py's histogram gradient boosting on the simulated churn data) is
registered under three names, so the only difference between the two servers is the number of
models: what serving several costs in throughput and memory, not what different models cost.
Three wrk processes (22 + 21 + 21 connections) drive the one-model server's /predict, then one
each of the three-model server's /models/<name>/predict routes. A third server holds at most
one model in memory (BITLOOP_API_MAX_LOADED_MODELS=1): requests that alternate between models
each wait for a cold load, timed against requests to the model already loaded. Results go to
bench/results/models.json and docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.scale import rss_kib  # noqa: E402
from bench.serving import BIN, MODEL, champion, worker_rss_mib, wrk  # noqa: E402
from tests.servers import free_port, serve  # noqa: E402

NAMES = (MODEL, f"{MODEL}-b", f"{MODEL}-c")
CONNECTIONS = 64


def _register_copies(uri: str) -> None:
    """The champion under the other two names, as their champion."""
    registry = MlflowClient(uri)
    for name in NAMES[1:]:
        copied = registry.copy_model_version(f"models:/{MODEL}@champion", name)
        registry.set_registered_model_alias(name, "champion", copied.version)


def _server(
    stack: ExitStack, work: Path, uri: str, label: str, models: tuple[str, ...], budget: int
) -> tuple[str, int]:
    port = free_port()
    process = stack.enter_context(
        serve(
            [sys.executable, "-m", "api"],
            f"http://127.0.0.1:{port}/ready",
            work / label,
            {
                "MLFLOW_TRACKING_URI": uri,
                "PATH": f"{BIN}:{os.environ['PATH']}",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "BITLOOP_API_MODELS": ",".join(models),
                "BITLOOP_API_MAX_LOADED_MODELS": str(budget),
                "BITLOOP_API_PORT": str(port),
                "BITLOOP_API_WORKERS": "1",
                "BITLOOP_PREDICTION_LOG_URL": str(work / f"predictions-{label}.sqlite"),
                "BITLOOP_API_PREDICTION_LOG_SPILL_DIR": str(work / f"spill-{label}"),
                "BITLOOP_LOG_LEVEL": "WARNING",
            },
            timeout=180,
        )
    )
    return f"http://127.0.0.1:{port}", process.pid


def _together(targets: list[tuple[str, Path, int]], seconds: int) -> list[dict[str, float]]:
    """wrk against every (url, body, connections) at once."""
    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(lambda t: wrk(t[0], t[1], t[2], seconds), targets))


def _rss_mib(pid: int) -> float:
    """The serving process's resident memory (one uvicorn worker: the server process itself)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return worker_rss_mib(pid) if children else rss_kib(pid) / 1024


def _timed(url: str, body: bytes) -> float:
    started = time.perf_counter()
    answer = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
    answer.raise_for_status()
    return (time.perf_counter() - started) * 1000


def run(seconds: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bitloop-bench-models-") as scratch:
        work = Path(scratch)
        with champion(work) as model:
            _register_copies(model.uri)
            body = model.one.read_bytes()
            with ExitStack() as stack:
                one, one_pid = _server(stack, work, model.uri, "one", NAMES[:1], 0)
                three, three_pid = _server(stack, work, model.uri, "three", NAMES, 0)
                budget, _ = _server(stack, work, model.uri, "budget", NAMES, 1)
                routes = [f"{three}/models/{name}/predict" for name in NAMES]
                for url in (f"{one}/predict", *routes):
                    wrk(url, model.one, 8, 2)  # warm up
                results: dict[str, Any] = {"one": {}, "three": {}}
                split = [22, 21, 21]
                for round_ in range(rounds):  # alternated, so that a slow minute hits both
                    # Three wrk processes either way: the load generators cost the same on both sides.
                    for side, urls in (("one", [f"{one}/predict"] * 3), ("three", routes)):
                        each = _together(
                            [(u, model.one, c) for u, c in zip(urls, split, strict=True)], seconds
                        )
                        results[side][str(round_)] = {
                            "rps": sum(e["rps"] for e in each),
                            "p50_ms": max(e["p50_ms"] for e in each),
                            "p99_ms": max(e["p99_ms"] for e in each),
                            "errors": sum(e["errors"] for e in each),
                            "per_route_rps": [e["rps"] for e in each],
                        }
                    print(round_, results["one"][str(round_)], results["three"][str(round_)], flush=True)
                results["worker_rss_mib"] = {"one": _rss_mib(one_pid), "three": _rss_mib(three_pid)}
                cold = [_timed(f"{budget}/models/{NAMES[i % 3]}/predict", body) for i in range(1, 31)]
                warm = [_timed(f"{budget}/models/{NAMES[0]}/predict", body) for _ in range(30)]
                listed = httpx.get(f"{budget}/models").json()
                results["cold_load"] = {
                    "cold_p50_ms": statistics.median(cold),
                    "cold_max_ms": max(cold),
                    "warm_p50_ms": statistics.median(warm),
                    "cold_loads": sum(m["cold_loads"] for m in listed["models"]),
                    "unloads": sum(m["unloads"] for m in listed["models"]),
                }
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    results["settings"] = {"seconds": seconds, "rounds": rounds, "connections": CONNECTIONS, "workers": 1}
    return results


def summary(r: dict[str, Any]) -> dict[str, float]:
    one = statistics.median(v["rps"] for v in r["one"].values())
    three = statistics.median(v["rps"] for v in r["three"].values())
    rss = r["worker_rss_mib"]
    return {
        "one_rps": one,
        "three_rps": three,
        "throughput_ratio": three / one,
        "one_p99_ms": statistics.median(v["p99_ms"] for v in r["one"].values()),
        "three_p99_ms": statistics.median(v["p99_ms"] for v in r["three"].values()),
        "mib_per_extra_model": (rss["three"] - rss["one"]) / 2,
        "errors": sum(v["errors"] for part in ("one", "three") for v in r[part].values()),
    }


def markdown(r: dict[str, Any]) -> str:
    s, m, cold = summary(r), r["machine"], r["cold_load"]
    rounds = "\n".join(
        f"| {i} | {r['one'][i]['rps']:,.0f} | {r['three'][i]['rps']:,.0f} "
        f"({' + '.join(f'{x:,.0f}' for x in r['three'][i]['per_route_rps'])}) | "
        f"{r['one'][i]['p99_ms']:.1f} | {r['three'][i]['p99_ms']:.1f} |"
        for i in r["one"]
    )
    return "\n".join(
        [
            "# Many models on one server",
            "",
            "Written by `make bench` (`bench/models.py`); the figures below are its last run.",
            "",
            f"Machine: {m['cpus']} CPUs ({m['processor']}), {m['platform']}, Python {m['python']}. "
            "The servers and wrk share the machine; all bind 127.0.0.1; one uvicorn worker each.",
            "",
            "The same champion is registered under three names, so the three-model server differs from "
            "the one-model server only in how many models it serves. Three wrk processes send single "
            f"records at {CONNECTIONS} connections in all (22 + 21 + 21) for {r['settings']['seconds']} s "
            "a round: all three to the one-model server's `/predict`, then one to each of the three-model "
            "server's `/models/<name>/predict` routes; rounds alternate.",
            "",
            "| round | one model, req/s | three models, req/s (each) | one, p99 ms | three, p99 ms |",
            "|---|---:|---:|---:|---:|",
            rounds,
            "",
            f"- **Throughput**: three models at once answer {s['three_rps']:,.0f} req/s against "
            f"{s['one_rps']:,.0f} for one (median of rounds): a ratio of {s['throughput_ratio']:.2f}. "
            f"Failed requests: {s['errors']}.",
            f"- **Memory**: the worker holds {r['worker_rss_mib']['one']:.0f} MiB serving one model and "
            f"{r['worker_rss_mib']['three']:.0f} MiB serving three: about "
            f"{s['mib_per_extra_model']:.0f} MiB per model loaded beyond the first.",
            f"- **Cold loads** (`BITLOOP_API_MAX_LOADED_MODELS=1`, requests alternating between the "
            f"three models, so each waits for its model to load): median {cold['cold_p50_ms']:.0f} ms, "
            f"at most {cold['cold_max_ms']:.0f} ms, against {cold['warm_p50_ms']:.1f} ms for a request "
            f"to the model already loaded ({cold['cold_loads']} cold loads, {cold['unloads']} unloads).",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one model, then three")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install wrk` (Debian/Ubuntu) or `nix develop`", file=sys.stderr)
        return 2
    results = run(args.seconds, args.rounds)
    out = PROJECT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "models.json").write_text(json.dumps(results | {"summary": summary(results)}, indent=2) + "\n")
    (PROJECT / "docs" / "models.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
