"""Pictures of the running system for the README (`make screenshots`), saved in docs/img/.

Starts the local stack when it is not up (and stops it afterwards), makes sure the training DAG
has a successful run, sends prediction traffic so Prometheus has a request rate, runs `make test`
for its summary, and drives headless Chromium through every UI. PNGs are shrunk with pngquant
when it is installed. A picture that cannot be taken here (Grafana without a server) is reported,
and the one already in docs/img/ is left alone.
"""

from __future__ import annotations

import argparse
import html
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pandas as pd

from ops.local.airflow_api import airflow_client, run_training_dag
from ops.local.settings import PROJECT, StackSettings, airflow_secrets
from ops.local.stack import down, up

IMAGES = PROJECT / "docs" / "img"
VIEWPORT = {"width": 1440, "height": 900}
REQUEST_RATE = 'sum by (route) (rate(bitloop_http_requests_total{route=~"/predict.*"}[1m]))'


def note(text: str) -> None:
    print(text, flush=True)


@contextmanager
def running_stack(settings: StackSettings) -> Iterator[None]:
    """The stack, started here when it is not up already (and then stopped again)."""
    api = f"http://127.0.0.1:{settings.api_port}"
    try:
        already = httpx.get(f"{api}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        already = False
    if not already:
        note("starting the stack (make up)")
        up(settings)
    try:
        yield
    finally:
        if not already:
            down(settings)


def successful_training_run(settings: StackSettings) -> str:
    """The newest successful training run, running the DAG once when there is none."""
    with airflow_client(settings) as airflow:
        runs = airflow.get(
            "/api/v2/dags/training/dagRuns",
            params={"state": "success", "order_by": "-run_after", "limit": 1},
        ).json()["dag_runs"]
    if runs:
        return str(runs[0]["dag_run_id"])
    note("no successful training run yet: running the training DAG")
    return run_training_dag(settings)


def send_traffic(settings: StackSettings, seconds: float) -> None:
    """Single-record predictions for `seconds`, so Prometheus sees a request rate."""
    source = f"http://127.0.0.1:{settings.data_source_port}"
    api = f"http://127.0.0.1:{settings.api_port}"
    with httpx.Client(timeout=30) as client:
        csv = client.get(f"{source}/batch", params={"n": 400, "seed": 7}).text
        frame = pd.read_csv(io.StringIO(csv)).drop(columns=["customer_id", "churned"])
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        deadline = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < deadline:
            client.post(f"{api}/predict", json=records[sent % len(records)]).raise_for_status()
            sent += 1
            time.sleep(0.05)
        client.post(f"{api}/predict/batch", json={"records": records[:200]}).raise_for_status()
    note(f"sent {sent} predictions and a batch of 200 in {seconds:.0f} s")


PROGRESS = re.compile(r"\[\s*\d+%\]$")  # pytest's "[ 58%]" at the end of a progress line


def make_test_summary(log: Path | None) -> str:
    """The test files, their results and the final count of a passing `make test` (this log, or a new run)."""
    if log is not None:
        text = log.read_text()
    else:
        note("running make test for its summary (about 6 minutes)")
        done = subprocess.run(["make", "test"], cwd=PROJECT, capture_output=True, text=True, check=False)
        text = done.stdout + done.stderr
    lines = text.splitlines()
    final = next((line for line in reversed(lines) if re.search(r"\d+ passed", line)), "")
    if not final or re.search(r"\d+ (failed|error)", final):
        raise SystemExit(f"make test did not pass; not taking its picture:\n{text[-3000:]}")
    shown, skipping = ["$ make test"], False
    for line in lines[next(i for i, line in enumerate(lines) if line.startswith("collected")) :]:
        if "warnings summary" in line:
            skipping = True
        elif skipping and line.startswith("-- Docs:"):
            skipping = False
        elif not skipping and PROGRESS.fullmatch(line.strip()):
            # pytest wraps a long line of dots and puts its percentage alone on the next line
            shown[-1] = PROGRESS.sub(line.strip(), shown[-1])
        elif not skipping and line.strip():
            shown.append(line)
        if line == final:
            break
    return "\n".join(shown)


def shrink(path: Path) -> None:
    if shutil.which("pngquant") is None:
        return
    subprocess.run(
        [
            "pngquant",
            "--force",
            "--skip-if-larger",
            "--strip",
            "--quality=70-95",
            "--output",
            str(path),
            str(path),
        ],
        check=False,
    )


class Camera:
    """One headless Chromium page per picture, saved under docs/img/."""

    def __init__(self, browser: Any, out: Path, only: set[str] | None = None) -> None:
        self.browser, self.out, self.only = browser, out, only
        self.taken: list[str] = []

    def wanted(self, name: str) -> bool:
        return self.only is None or name in self.only

    def shoot(
        self,
        name: str,
        url: str,
        ready: Callable[[Any], None],
        cookies: list[dict[str, Any]] | None = None,
        init_script: str | None = None,
    ) -> None:
        if not self.wanted(name):
            return
        context = self.browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        if cookies:
            context.add_cookies(cookies)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        page.goto(url)
        ready(page)
        page.wait_for_timeout(800)  # let charts finish their transitions
        path = self.out / f"{name}.png"
        page.screenshot(path=str(path))
        context.close()
        shrink(path)
        self.taken.append(f"{path.relative_to(PROJECT)} ({path.stat().st_size // 1024} KiB)")
        note(f"  saved {path.relative_to(PROJECT)}")

    def render_text(self, name: str, text: str) -> None:
        if not self.wanted(name):
            return
        body = f"<pre>{html.escape(text)}</pre>"
        style = (
            "<style>body{margin:0;background:#1e1e1e}pre{margin:0;padding:18px 22px;color:#e6e6e6;"
            "font:14px/1.45 'DejaVu Sans Mono',monospace;white-space:pre-wrap}</style>"
        )
        context = self.browser.new_context(viewport={"width": 1100, "height": 200}, device_scale_factor=1)
        page = context.new_page()
        page.set_content(style + body)
        path = self.out / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        context.close()
        shrink(path)
        self.taken.append(f"{path.relative_to(PROJECT)} ({path.stat().st_size // 1024} KiB)")
        note(f"  saved {path.relative_to(PROJECT)}")


def shoot_everything(camera: Camera, settings: StackSettings, run_id: str, grafana: str | None) -> list[str]:
    """Every picture; returns the ones that could not be taken, with the reason."""
    from mlflow import MlflowClient

    from core.params import load_params
    from core.registry import CHAMPION, alias_version

    model = load_params(PROJECT / "params.yaml").model.name
    mlflow = f"http://127.0.0.1:{settings.mlflow_port}"
    api = f"http://127.0.0.1:{settings.api_port}"
    airflow = f"http://127.0.0.1:{settings.airflow_port}"
    prometheus = f"http://127.0.0.1:{settings.prometheus_port}"
    experiment = MlflowClient(mlflow).get_experiment_by_name(model)
    if experiment is None:
        raise SystemExit(f"MLflow has no experiment {model!r}: has the training DAG run?")

    champion = alias_version(MlflowClient(mlflow), model, CHAMPION)
    if champion is None:
        raise SystemExit(f"model {model!r} has no @champion: has the training DAG promoted one?")

    def mlflow_shows(text: str) -> Callable[[Any], None]:
        def ready(page: Any) -> None:
            page.get_by_text(text, exact=False).first.wait_for()
            assistant = page.get_by_role("button", name="Close")  # the side panel MLflow opens
            if assistant.count():
                assistant.first.click()
            mode = page.get_by_text("Model training", exact=True)
            if mode.count():
                mode.first.click()
            page.wait_for_timeout(1500)

        return ready

    def mlflow_start(page: Any) -> None:  # what a first visit shows, before the view is switched
        page.get_by_text("Information about UI telemetry").first.wait_for()
        page.wait_for_timeout(1500)

    camera.shoot("mlflow-start", f"{mlflow}/", mlflow_start)
    camera.shoot(
        "mlflow-runs",
        f"{mlflow}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
        mlflow_shows("training-summary"),
    )
    camera.shoot(
        "mlflow-model",
        f"{mlflow}/#/models/{model}/versions/{champion.version}?workflowType=machine_learning",
        mlflow_shows("candidate_"),
    )
    with airflow_client(settings) as client:
        token = client.headers["Authorization"].removeprefix("Bearer ")
    airflow_cookie = [{"name": "_token", "value": token, "url": airflow}]
    camera.shoot(
        "airflow-training-graph",
        f"{airflow}/dags/training/runs/{quote(run_id)}",
        lambda page: page.locator(".react-flow__node").first.wait_for(),
        cookies=airflow_cookie,
        init_script="localStorage.setItem('default_dag_view', JSON.stringify('graph'))",
    )
    camera.shoot("api-docs", f"{api}/docs", lambda page: page.locator(".opblock").first.wait_for())

    def predicted(page: Any) -> None:
        page.wait_for_selector("#submit:not([disabled])")
        page.click("#submit")
        page.wait_for_selector("#answer:not([hidden])")

    camera.shoot("prediction-page", f"{api}/", predicted)
    graph = f"{prometheus}/graph?g0.expr={quote(REQUEST_RATE)}&g0.tab=0&g0.range_input=5m"
    camera.shoot(
        "prometheus-request-rate",
        graph,
        lambda page: page.wait_for_selector(".rickshaw_graph svg, .graph-chart canvas"),
    )

    missing = []
    if grafana is None:
        missing.append(
            "grafana-service.png: no Grafana server here (the local stack has none); with the compose "
            "stack up, run `make screenshots GRAFANA_URL=http://127.0.0.1:3000`"
        )
    else:
        camera.shoot(
            "grafana-service",
            f"{grafana.rstrip('/')}/d/bitloop-service/?orgId=1&from=now-15m&to=now&kiosk",
            lambda page: page.locator(".react-grid-item").first.wait_for(),
        )
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(prog="make screenshots", description=__doc__)
    parser.add_argument(
        "--test-log", type=Path, help="take the make test summary from this log, not a new run"
    )
    parser.add_argument("--grafana-url", default=os.environ.get("GRAFANA_URL") or None)
    parser.add_argument("--traffic-seconds", type=float, default=75.0)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="take only these pictures, e.g. make-test")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("make screenshots needs Chromium: apt-get install chromium (and pngquant to shrink)")
    settings = StackSettings()
    IMAGES.mkdir(parents=True, exist_ok=True)
    only = set(args.only) if args.only else None
    summary = make_test_summary(args.test_log) if only is None or "make-test" in only else ""

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        camera = Camera(browser, IMAGES, only)
        missing: list[str] = []
        if only is None or only - {"make-test"}:
            with running_stack(settings):
                airflow_secrets(settings)
                run_id = successful_training_run(settings)
                send_traffic(settings, args.traffic_seconds)
                missing = shoot_everything(camera, settings, run_id, args.grafana_url)
        camera.render_text("make-test", summary)
        browser.close()
    note("\ntaken:\n  " + "\n  ".join(camera.taken))
    if missing:
        note("not taken:\n  " + "\n  ".join(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
