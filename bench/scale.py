"""Scale figures (`make bench-scale` → docs/scale.md): how cost grows with data, measured here.

1. Training: the default pipeline (every stage of params.yaml's pipeline, every candidate, an
   MLflow server on SQLite) on one simulated batch of 10k, 100k and 1M rows, each level in its
   own process: wall time per stage and the process's peak RSS.
2. Drift: `python -m pipeline drift` (what the drift_monitor DAG runs) over a prediction log
   holding 1M rows in the window, on SQLite and on PostgreSQL: wall time and peak RSS.
3. Prediction-log writes, SQLite against PostgreSQL: rows/s of 512-row transactions, and rows/s
   through the model server's writer (one row per append, spill included) until all are committed.
4. Model-server RSS under steady load (wrk, 8 connections) for `--soak-minutes` (30).

`.venv/bin/python -m bench.scale [--rows 10000 100000 1000000] [--soak-minutes 30]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = PROJECT / "bench" / "results" / "scale.json"
MODEL = "bench-scale"
WRITE_ROWS = 200_000
DRIFT_ROWS = 1_000_000


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    """Run `command`; its stdout, wall seconds and peak RSS in MiB (its own, from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=PROJECT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True
    )
    out = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}")
    return out, seconds, usage.ru_maxrss / 1024


def train_level(rows: int, root: Path, uri: str) -> dict[str, Any]:
    """One training level in this process (called in a child): seconds per stage."""
    from core.params import parse_params
    from core.settings import PipelineSettings
    from pipeline.driver.run import STAGES, run_stage
    from tests.factories import deep_update, make_workspace, project_params

    raw = deep_update(project_params(), {"model": {"name": f"{MODEL}-{rows}"}, "data": {"rows": rows}})
    workspace, _ = make_workspace(root, raw)
    params, settings = parse_params(raw), PipelineSettings(mlflow_tracking_uri=uri)
    stages = {}
    for name in STAGES:
        started = time.perf_counter()
        run_stage(name, params, workspace, settings)
        stages[name] = round(time.perf_counter() - started, 1)
    return {
        "rows": rows,
        "stages": stages,
        "schema": str(workspace.schema_file),
        "test": str(workspace.test_file),
    }


def training(levels: list[int], work: Path, uri: str) -> list[dict[str, Any]]:
    results = []
    for rows in levels:
        command = [sys.executable, "-m", "bench.scale", "--train-level", str(rows), "--work", str(work)]
        out, seconds, peak = measured(command, {"MLFLOW_TRACKING_URI": uri})
        level = json.loads(out.strip().splitlines()[-1])
        results.append({**level, "seconds": round(seconds, 1), "peak_rss_mib": round(peak)})
        print(f"training {rows} rows: {seconds:.0f} s, peak {peak:.0f} MiB", file=sys.stderr)
    return results


def feature_rows(level: dict[str, Any], count: int, ts: float) -> Iterator[list[Any]]:
    """`count` prediction-log rows whose features are the level's holdout records, in chunks."""
    from core.predictions.rows import Row

    schema = json.loads(Path(level["schema"]).read_text())
    names = [f["name"] for f in schema["features"]]
    test = pd.read_parquet(level["test"])[names]
    records = json.loads(test.to_json(orient="records"))
    chunk = 10_000
    for start in range(0, count, chunk):
        yield [
            Row(
                ts,
                f"r{i}",
                f"{MODEL}-{level['rows']}",
                "1",
                "champion",
                records[i % len(records)],
                0,
                {"0": 0.5},
            )
            for i in range(start, min(start + chunk, count))
        ]


def fill_log(url: str, level: dict[str, Any], count: int) -> None:
    from core.predictions.backends import open_store

    store = open_store(url)
    for rows in feature_rows(level, count, time.time() - 60):
        store.stage(rows)
        store.commit()
    store.close()


def drift(level: dict[str, Any], logs: dict[str, str], work: Path, uri: str) -> list[dict[str, Any]]:
    results = []
    for name, url in logs.items():
        fill_log(url, level, DRIFT_ROWS)
        command = [
            sys.executable, "-m", "pipeline", "--root", str(work / f"train-{level['rows']}"),
            "drift", "--label", f"bench-{name}", "--log", url,
        ]  # fmt: skip
        out, seconds, peak = measured(command, {"MLFLOW_TRACKING_URI": uri})
        report = json.loads(out)
        results.append(
            {"store": name, "rows_in_window": DRIFT_ROWS, "rows_read": report.get("rows"),
             "seconds": round(seconds, 1), "peak_rss_mib": round(peak)}
        )  # fmt: skip
        print(f"drift over {DRIFT_ROWS} rows on {name}: {seconds:.1f} s, {peak:.0f} MiB", file=sys.stderr)
    return results


def writes(level: dict[str, Any], logs: dict[str, str], work: Path) -> list[dict[str, Any]]:
    from api.predlog import PredictionLog
    from core.predictions.backends import open_store

    rows = [row for chunk in feature_rows(level, WRITE_ROWS, time.time()) for row in chunk]
    results = []
    for name, url in logs.items():
        store = open_store(url)
        started = time.perf_counter()
        for start in range(0, len(rows), 512):
            store.stage(rows[start : start + 512])
            store.commit()
        batched = len(rows) / (time.perf_counter() - started)
        store.close()
        writer = PredictionLog(url, spill_dir=work / f"spill-{name}")
        started = time.perf_counter()
        for row in rows:
            writer.append([row])
        while writer.status().pending_rows:
            time.sleep(0.01)
        served = len(rows) / (time.perf_counter() - started)
        writer.close()
        results.append(
            {"store": name, "batched_rows_per_s": round(batched), "writer_rows_per_s": round(served)}
        )
        print(
            f"log writes on {name}: {batched:.0f} rows/s batched, {served:.0f} via the writer",
            file=sys.stderr,
        )
    return results


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def soak(level: dict[str, Any], work: Path, uri: str, minutes: float) -> dict[str, Any]:
    from tests.servers import free_port, serve

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "BITLOOP_API_MODEL_NAME": f"{MODEL}-{level['rows']}",
        "BITLOOP_API_PORT": str(port),
        "BITLOOP_PREDICTION_LOG_URL": str(work / "soak.sqlite"),
        "BITLOOP_PREDICTION_LOG_RETENTION_DAYS": "0",
    }
    schema = json.loads(Path(level["schema"]).read_text())
    names = [f["name"] for f in schema["features"]]
    record = json.loads(pd.read_parquet(level["test"])[names].head(1).to_json(orient="records"))[0]
    body = work / "record.json"
    body.write_text(json.dumps(record))
    samples: list[tuple[float, int]] = []
    with serve(
        [str(BIN / "python"), "-m", "api"], f"{base}/ready", work / "soak", env, timeout=120
    ) as server:
        load = subprocess.Popen(
            [
                "wrk",
                "-t2",
                "-c8",
                f"-d{int(minutes * 60)}s",
                "-s",
                str(PROJECT / "bench/post.lua"),
                f"{base}/predict",
            ],
            env={**os.environ, "BENCH_BODY": str(body)},
            stdout=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        while load.poll() is None:
            samples.append((round(time.monotonic() - started), rss_kib(server.pid)))
            time.sleep(30)
        out = load.stdout.read() if load.stdout else ""
    rates = [line for line in out.splitlines() if line.startswith("Requests/sec")]
    window = max(len(samples) // 6, 1)
    first = sum(kib for _, kib in samples[:window]) / window
    last = sum(kib for _, kib in samples[-window:]) / window
    return {
        "minutes": minutes,
        "requests_per_s": float(rates[0].split()[-1]) if rates else None,
        "rss_mib_first_sixth": round(first / 1024),
        "rss_mib_last_sixth": round(last / 1024),
        "rss_mib_max": round(max(kib for _, kib in samples) / 1024),
        "growth": round(last / first - 1, 3),
        "samples": samples,
    }


@contextmanager
def mlflow(work: Path) -> Iterator[str]:
    from tests.servers import mlflow_server

    with mlflow_server(work / "mlflow") as uri:
        yield uri


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def write_markdown(results: dict[str, Any], path: Path = PROJECT / "docs" / "scale.md") -> None:
    machine = results["machine"]
    lines = [
        "# Scale",
        "",
        "Generated by `make bench-scale` (bench/scale.py); every figure below comes from one run.",
        "",
        f"Machine: {machine['cpus']} CPUs ({machine['arch']}), {machine['memory_gib']} GiB, "
        f"{machine['system']}, Python {machine['python']}. Everything runs on 127.0.0.1.",
        "",
        "## Training: the default pipeline on one simulated batch",
        "",
        "Every stage of `dvc.yaml` as `make repro` runs them (ingest, validate, split, train with the "
        "three candidates of params.yaml, evaluate, register, promote), an MLflow server on SQLite; "
        "each level in its own process.",
        "",
        "| rows | total s | s per 1,000 rows | train s | evaluate s | register s | other stages s | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in results["training"]:
        stages = level["stages"]
        other = sum(v for k, v in stages.items() if k not in ("train", "evaluate", "register"))
        lines.append(
            f"| {level['rows']:,} | {level['seconds']:.0f} | {1000 * level['seconds'] / level['rows']:.3f} "
            f"| {stages['train']:.0f} | {stages['evaluate']:.0f} | {stages['register']:.0f} | {other:.0f} "
            f"| {level['peak_rss_mib']:,} |"
        )
    first, last = results["training"][0], results["training"][-1]
    growth = last["seconds"] / first["seconds"]
    linear = growth <= 1.1 * last["rows"] / first["rows"]  # no faster than the rows, give or take 10%
    lines += [
        "",
        f"From {first['rows']:,} to {last['rows']:,} rows ({last['rows'] / first['rows']:g} times the rows) the "
        f"time grows {growth:.1f} times. Goal: linear, and a million rows in under 10 minutes on 2 cores: "
        f"{verdict(linear and (last['rows'] < 1_000_000 or last['seconds'] < 600))}.",
        "",
        f"## Drift over {DRIFT_ROWS:,} logged predictions",
        "",
        "`python -m pipeline drift` (the drift_monitor DAG's task) over a log whose last hour holds "
        f"{DRIFT_ROWS:,} rows; it reads the newest `drift.max_rows` of them through the (model, time) index.",
        "",
        "| log | rows read | s | peak RSS MiB |",
        "|---|---:|---:|---:|",
    ]
    for run in results["drift"]:
        lines.append(
            f"| {run['store']} | {run['rows_read']} | {run['seconds']:.1f} | {run['peak_rss_mib']:,} |"
        )
    fine = all(run["seconds"] < 30 and run["peak_rss_mib"] < 1024 for run in results["drift"])
    lines += [
        "",
        f"Goal: under 30 s and under 1 GiB: {verdict(fine)}.",
        "",
        f"## Prediction-log writes ({WRITE_ROWS:,} rows)",
        "",
        "Batched: 512-row transactions straight into the table. Writer: the model server's writer, one row "
        "per append as requests make them (each row to the spill file first), timed until every row is committed.",
        "",
        "| log | batched rows/s | writer rows/s |",
        "|---|---:|---:|",
    ]
    for run in results["writes"]:
        lines.append(f"| {run['store']} | {run['batched_rows_per_s']:,} | {run['writer_rows_per_s']:,} |")
    fine = all(run["batched_rows_per_s"] >= 20_000 for run in results["writes"])
    lines += ["", f"Goal: at least 20,000 rows/s batched on both: {verdict(fine)}."]
    soaked = results["soak"]
    lines += [
        "",
        f"## Model-server memory over {soaked['minutes']:g} minutes of steady load",
        "",
        f"wrk, 8 connections, single-record `/predict` ({soaked['requests_per_s']} req/s on average), one "
        "uvicorn worker, SQLite log; RSS sampled every 30 s.",
        "",
        "| first sixth MiB | last sixth MiB | max MiB | growth |",
        "|---:|---:|---:|---:|",
        f"| {soaked['rss_mib_first_sixth']} | {soaked['rss_mib_last_sixth']} | {soaked['rss_mib_max']} "
        f"| {soaked['growth']:+.1%} |",
        "",
        f"Goal: flat within 10%: {verdict(abs(soaked['growth']) <= 0.10)}.",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--train-level", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(PROJECT))
    if args.train_level:
        level = train_level(
            args.train_level, args.work / f"train-{args.train_level}", os.environ["MLFLOW_TRACKING_URI"]
        )
        print(json.dumps(level))
        return 0
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: `apt-get install {tool}` or `nix develop`", file=sys.stderr)
            return 1
    from tests.servers import postgres_server

    with tempfile.TemporaryDirectory(prefix="bitloop-scale-") as scratch, ExitStack() as stack:
        work = Path(scratch)
        uri = stack.enter_context(mlflow(work))
        postgres = stack.enter_context(postgres_server())
        results: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "arch": platform.machine(),
                "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
                "system": platform.platform(),
                "python": platform.python_version(),
            }
        }
        results["training"] = training(sorted(args.rows), work, uri)
        smallest = results["training"][0]
        logs = {"SQLite": str(work / "drift.sqlite"), "PostgreSQL": postgres.url}
        results["drift"] = drift(smallest, logs, work, uri)
        logs = {"SQLite": str(work / "writes.sqlite"), "PostgreSQL": postgres.url}
        results["writes"] = writes(smallest, logs, work)
        results["soak"] = soak(smallest, work, uri, args.soak_minutes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    write_markdown(results)
    print(f"wrote {RESULTS.relative_to(PROJECT)} and docs/scale.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
