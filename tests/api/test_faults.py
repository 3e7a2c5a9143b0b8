"""The model server under uvicorn against faults: poison records under load, versions that load but
cannot predict, stalled bodies, a full disk under the prediction log, leaked credentials."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from core.params import CandidateParams
from core.predictions.access import count_rows, read_rows
from core.serialization import trusted_types
from pipeline.stages.models import build_pipeline
from pipeline.stages.register import pip_requirements
from tests.api.conftest import Trained, api_server, sample_record
from tests.api.traffic import Traffic, wait_for
from tests.servers import free_port, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def register_version(uri: str, name: str, estimator: Any, trained: Trained, fmt: str = "skops") -> str:
    """Log a fitted scikit-learn model with `trained`'s feature schema and reference profile."""
    mlflow.set_tracking_uri(uri)
    example = pd.read_parquet(trained.workspace.test_file)[trained.schema.feature_names].head(5)
    with mlflow.start_run():
        mlflow.log_dict(trained.schema.model_dump(mode="json"), "feature_schema.json")
        mlflow.log_artifact(str(trained.workspace.profile_file))
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            input_example=example,
            pip_requirements=pip_requirements(),
            serialization_format=fmt,
            skops_trusted_types=trusted_types(estimator) if fmt == "skops" else None,
        )
    return str(mlflow.register_model(info.model_uri, name).version)


def fitted(trained: Trained, **encoder: Any) -> Pipeline:
    """The linear candidate fitted on `trained`'s training split, with encoder parameters changed."""
    frame = pd.read_parquet(trained.workspace.train_file)
    model = build_pipeline(CandidateParams(kind="linear"), trained.schema, 7, 20)
    model.set_params(**{f"preprocess__categorical__onehotencoder__{k}": v for k, v in encoder.items()})
    return model.fit(frame[trained.schema.feature_names], frame[trained.schema.target])


def metric_of(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metric(base: str, line_start: str) -> float:
    return metric_of(httpx.get(f"{base}/metrics").text, line_start)


def test_poison_records_under_load_fail_alone_with_a_422_naming_the_field(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    """Unseen categories crash this model (its encoder refuses unknowns) and 1e300 cannot be held:
    neither may fail a valid request that shares its micro-batch, nor reset a connection."""
    name = "poison-churn"
    version = register_version(mlflow_uri, name, fitted(churn_model, handle_unknown="error"), churn_model)
    MlflowClient(mlflow_uri).set_registered_model_alias(name, "champion", version)
    record = sample_record(churn_model.schema)
    poison: list[tuple[dict[str, Any], str]] = [
        ({"region": "atlantis"}, "region"),
        ({"monthly_charges": 1e300}, "monthly_charges"),
    ]
    bad_answers: list[tuple[int, Any, str]] = []
    env = {"BITLOOP_API_CLOSED_CATEGORIES": "false", "BITLOOP_API_MICRO_BATCH_MAX_WAIT_MS": "5"}
    with api_server(tmp_path, mlflow_uri, name, **env) as base:
        stop = threading.Event()

        def poisoner() -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                i = 0
                while not stop.is_set():
                    change, field = poison[i % 2]
                    try:
                        response = client.post("/predict", json=record | change)
                        bad_answers.append((response.status_code, response.json()["detail"], field))
                    except httpx.HTTPError as err:
                        bad_answers.append((-1, repr(err), field))
                    i += 1
                    time.sleep(0.02)

        thread = threading.Thread(target=poisoner)
        with Traffic(base, record, clients=8) as traffic:
            thread.start()
            wait_for(lambda: len(traffic.answers) > 1500 and len(bad_answers) > 60, timeout=120)
            stop.set()
            thread.join()
        unscorable = metric(base, 'bitloop_prediction_failures_total{cause="input"')
        calls = metric(base, f'bitloop_inference_batch_rows_count{{model="{name}",variant="champion"}}')
        single = metric(
            base, f'bitloop_inference_batch_rows_bucket{{le="1.0",model="{name}",variant="champion"}}'
        )
    failed = [a for a in traffic.answers if a[0] != 200]
    assert failed == [], failed[:5]
    assert all(status == 422 for status, _, _ in bad_answers), bad_answers[:5]
    for _, detail, field in bad_answers:
        assert [e["loc"] for e in detail] == [["body", field]]
    assert unscorable == sum(field == "region" for *_, field in bad_answers)
    assert calls > single  # valid requests really shared model calls with the poison


def test_a_version_that_loads_but_cannot_predict_never_serves(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    """A pipeline fitted on a column the schema does not have, logged with the champion's schema."""
    name = "unpredictable-churn"
    client = MlflowClient(mlflow_uri)
    good = register_version(mlflow_uri, name, fitted(churn_model), churn_model)
    client.set_registered_model_alias(name, "champion", good)
    frame = pd.read_parquet(churn_model.workspace.train_file).rename(columns={"age": "customer_age"})
    frame = frame.fillna({"customer_age": 40.0, "tenure_months": 12.0})
    wrong = Pipeline(
        [
            (
                "preprocess",
                ColumnTransformer([("numeric", "passthrough", ["customer_age", "tenure_months"])]),
            ),
            ("model", LogisticRegression()),
        ]
    ).fit(frame, frame[churn_model.schema.target])
    broken = register_version(mlflow_uri, name, wrong, churn_model)
    record = sample_record(churn_model.schema)
    with api_server(tmp_path, mlflow_uri, name) as base, Traffic(base, record) as traffic:
        wait_for(lambda: len(traffic.answers) > 100)
        client.set_registered_model_alias(name, "champion", broken)
        wait_for(lambda: metric(base, f'bitloop_model_reloads_total{{model="{name}",result="failure"') == 1.0)
        count = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) > count + 100)
        ready = httpx.get(f"{base}/ready")
        info = httpx.get(f"{base}/model").json()
        loaded = metric(base, f'bitloop_model_loaded{{model="{name}"}} ')
        time.sleep(1.5)  # several registry checks later the refusal is not retried nor recounted
        assert metric(base, f'bitloop_model_reloads_total{{model="{name}",result="failure"') == 1.0
    assert [a for a in traffic.answers if a != (200, good)] == []
    assert ready.status_code == 200
    assert ready.json()["model_version"] == good
    assert f"@champion version {broken} was refused: it cannot predict" in ready.json()["detail"]
    assert info["version"] == good
    assert info["refused"] == [
        {
            "variant": "champion",
            "version": broken,
            "reason": "it cannot predict its own input example and reference sample",
        }
    ]
    assert loaded == 1.0


def test_a_pickled_champion_is_refused_and_never_unpickled(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    """Whoever can move @champion cannot make the server run a pickle: only skops files load."""
    name = "pickled-churn"
    client = MlflowClient(mlflow_uri)
    good = register_version(mlflow_uri, name, fitted(churn_model), churn_model)
    client.set_registered_model_alias(name, "champion", good)
    pickled = register_version(mlflow_uri, name, fitted(churn_model), churn_model, fmt="cloudpickle")
    with api_server(tmp_path, mlflow_uri, name) as base:
        wait_for(lambda: httpx.get(f"{base}/ready").status_code == 200)
        client.set_registered_model_alias(name, "champion", pickled)
        wait_for(lambda: metric(base, f'bitloop_model_reloads_total{{model="{name}",result="failure"') == 1.0)
        ready = httpx.get(f"{base}/ready").json()
        log = (tmp_path / "server.log").read_text()
    assert ready["model_version"] == good
    assert f"@champion version {pickled} was refused: it is not a skops file" in ready["detail"]
    assert "only the skops format is loaded" in log
    assert "Traceback" not in log


def test_a_failing_champion_is_reported_not_ready(make_client: Any, churn_model: Trained) -> None:
    """Faults the model causes after it passed its sample (cannot be produced on demand) are fed in."""
    client = make_client(churn_model.name, max_error_ratio=0.2)
    champion = client.app.state.bitloop.manager.champion
    champion.faults.add(100, 10)
    assert client.get("/ready").status_code == 200
    champion.faults.add(100, 40)
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert "failed 25% of the 200 records" in ready.json()["detail"]


def raw_request(port: int, head: str, body: bytes, wait: float) -> tuple[bytes, float]:
    """Send a request whose body stops short, then read what the server answers and when."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


def test_stalled_bodies_are_cut_off_and_connections_survive_errors(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    env = {"BITLOOP_API_BODY_TIMEOUT_SECONDS": "1"}
    with api_server(tmp_path, mlflow_uri, churn_model.name, **env) as base:
        port = int(base.rsplit(":", 1)[1])
        head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400"
        answer, seconds = raw_request(port, head, b'{"age": 4', wait=15)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 1 s" in answer
        assert seconds < 5
        # One keep-alive connection through a 415, a 422 and two good answers: never reset.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        good = httpx.Request("POST", "/", json=sample_record(churn_model.schema)).content
        statuses = []
        for body, kind in ((good, "application/json"), (good, "text/plain"), (b"{", "application/json")):
            connection.request("POST", "/predict", body=body, headers={"Content-Type": kind})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.request("POST", "/predict", body=good, headers={"Content-Type": "application/json"})
        statuses.append(connection.getresponse().status)
        connection.close()
    assert statuses == [200, 415, 422, 200]


def test_an_internal_error_is_a_500_that_keeps_the_connection(tmp_path: Path) -> None:
    """Starlette's handler re-raises after answering and uvicorn then drops the connection."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    from api.main import InternalErrorMiddleware

    async def crash(_: Any) -> Any:
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/", crash)], middleware=[Middleware(InternalErrorMiddleware)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=10)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        answers = []
        for _ in range(3):
            connection.request("GET", "/")
            response = connection.getresponse()
            answers.append((response.status, response.getheader("connection"), response.read()))
        connection.close()
    finally:
        server.should_exit = True
        thread.join()
    assert answers == [(500, None, b'{"detail":"internal error: the server logged it"}')] * 3


@contextmanager
def tiny_filesystem(path: Path, size: str = "2m", *options: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (needs root, as this machine and CI run)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs (CI must run as root): {mount.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def readiness(base: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{base}/ready").json()
    return answer


def test_a_full_disk_degrades_the_log_counts_every_lost_row_and_never_blocks_shutdown(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    disk = tmp_path / "disk"
    record = sample_record(churn_model.schema)
    with tiny_filesystem(disk):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "BITLOOP_API_MODEL_NAME": churn_model.name,
            "BITLOOP_API_PORT": str(port),
            "BITLOOP_PREDICTION_LOG_URL": str(disk / "predictions.sqlite"),
            # The spill is on the full disk too: memory is all that is left.
            "BITLOOP_API_PREDICTION_LOG_SPILL_DIR": str(disk / "spill"),
            "BITLOOP_API_PREDICTION_LOG_MAX_PENDING_ROWS": "300",
            "BITLOOP_API_PREDICTION_LOG_SHUTDOWN_SECONDS": "2",
        }
        with serve([sys.executable, "-m", "api"], f"{base}/health", tmp_path, env, timeout=60) as process:
            answered = 0
            with httpx.Client(base_url=base, timeout=10) as client:

                def send(batches: int) -> None:
                    nonlocal answered
                    for _ in range(batches):
                        response = client.post("/predict/batch", json={"records": [record] * 50})
                        assert response.status_code == 200, response.text
                        answered += 50

                send(2)
                wait_for(lambda: readiness(base)["prediction_log"]["pending_rows"] == 0)
                filler = fill(disk)
                send(2)
                wait_for(lambda: readiness(base)["prediction_log"]["status"] == "degraded")
                send(8)  # beyond the 300 rows the log may hold in memory
                degraded = httpx.get(f"{base}/ready")
                dropped = metric(base, "bitloop_prediction_log_dropped_rows_total ")
                filler.unlink()
                wait_for(
                    lambda: (
                        readiness(base)["prediction_log"]
                        == {
                            "status": "ok",
                            "detail": "writing",
                            "pending_rows": 0,
                            "spilled_rows": 0,
                            "dropped_rows": dropped,
                            "quarantined_rows": 0,
                        }
                    )
                )
                assert count_rows(disk / "predictions.sqlite") + dropped == answered
                filler = fill(disk)
                send(2)
                wait_for(lambda: readiness(base)["prediction_log"]["status"] == "degraded")
            started = time.monotonic()
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
            stopped_in = time.monotonic() - started
        log = (tmp_path / "server.log").read_text()
        filler.unlink()
        lost = int(re.findall(r"rows lost at shutdown .*lost=(\d+)", log)[-1])
        assert count_rows(disk / "predictions.sqlite") + dropped + lost == answered
    assert degraded.status_code == 200  # the default: keep answering, say so, count the losses
    body = degraded.json()
    assert body["ready"] is True
    assert body["prediction_log"]["status"] == "degraded"
    assert "the prediction log is degraded" in body["detail"]
    assert dropped >= 100
    assert lost == 100
    assert stopped_in < 10


def server_env(tmp_path: Path, mlflow_uri: str, model: Trained) -> tuple[str, Path, dict[str, str]]:
    """A model server's base URL, prediction log and environment, its log in `tmp_path`."""
    port = free_port()
    log = tmp_path / "predictions.sqlite"
    env = {
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "BITLOOP_API_MODEL_NAME": model.name,
        "BITLOOP_API_PORT": str(port),
        "BITLOOP_PREDICTION_LOG_URL": str(log),
    }
    return f"http://127.0.0.1:{port}", log, env


def test_a_server_killed_with_sigkill_logs_every_answer_once_it_is_back(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    base, log, env = server_env(tmp_path, mlflow_uri, churn_model)
    record = sample_record(churn_model.schema)
    answered = []
    # An hour between flushes: every answer is still unwritten when the server dies.
    lazy = {
        "BITLOOP_API_PREDICTION_LOG_FLUSH_MS": "3600000",
        "BITLOOP_API_PREDICTION_LOG_FLUSH_ROWS": "100000",
    }
    with serve([sys.executable, "-m", "api"], f"{base}/health", tmp_path, env | lazy, timeout=60) as process:
        with httpx.Client(base_url=base, timeout=10) as client:
            for _ in range(40):
                response = client.post("/predict", json=record)
                assert response.status_code == 200, response.text
                answered.append(response.json()["request_id"])
        assert count_rows(log) == 0
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    with serve([sys.executable, "-m", "api"], f"{base}/health", tmp_path, env, timeout=60):
        wait_for(lambda: count_rows(log) == 40, timeout=30)
        assert readiness(base)["prediction_log"]["dropped_rows"] == 0
    assert sorted(r.request_id for r in read_rows(log)) == sorted(answered)
    assert not list((tmp_path / ".bitloop" / "prediction-spill").glob("*.jsonl"))


def test_sigterm_turns_ready_off_serves_through_the_drain_then_logs_every_answer(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    base, log, env = server_env(tmp_path, mlflow_uri, churn_model)
    env["BITLOOP_API_DRAIN_SECONDS"] = "3"
    with serve([sys.executable, "-m", "api"], f"{base}/health", tmp_path, env, timeout=60) as process:
        with Traffic(base, sample_record(churn_model.schema)) as traffic:
            wait_for(lambda: len(traffic.answers) >= 50)
            os.killpg(process.pid, signal.SIGTERM)
            began = time.monotonic()
            wait_for(lambda: httpx.get(f"{base}/ready").status_code == 503, timeout=5)
            draining = httpx.get(f"{base}/ready").json()
            time.sleep(1)  # load balancers' health checks notice; clients are still answered
        process.wait(30)
        stopped_in = time.monotonic() - began
    statuses = [status for status, _ in traffic.answers]
    assert draining["detail"].startswith("draining")
    assert set(statuses) == {200}, [a for a in traffic.answers if a[0] != 200][:3]
    assert count_rows(log) == len(statuses)  # what was in flight was answered, then written
    assert 3 <= stopped_in < 15


def test_refuse_mode_answers_503_while_the_log_cannot_be_written(
    tmp_path: Path, make_client: Any, churn_model: Trained
) -> None:
    with tiny_filesystem(tmp_path / "disk") as disk:
        client = make_client(
            churn_model.name,
            log_failure="refuse",
            prediction_log_url=str(disk / "p.sqlite"),
            prediction_log_flush_ms=1,
        )
        record = sample_record(churn_model.schema)
        filler = fill(disk)
        assert client.post("/predict/batch", json={"records": [record] * 100}).status_code == 200
        wait_for(lambda: client.get("/ready").status_code == 503)
        refused = client.post("/predict", json=record)
        filler.unlink()
        wait_for(lambda: client.get("/ready").status_code == 200)
        assert client.post("/predict", json=record).status_code == 200
        client.__exit__(None, None, None)
    assert refused.status_code == 503
    assert "BITLOOP_API_LOG_FAILURE=refuse" in refused.json()["detail"]


def test_an_unwritable_state_directory_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "ro", "64k", "ro") as readonly:
        for target in (readonly / "predictions.sqlite", tmp_path / "server.log" / "predictions.sqlite"):
            (tmp_path / "server.log").touch()
            result = subprocess.run(
                [sys.executable, "-m", "api"],
                env={**os.environ, "BITLOOP_PREDICTION_LOG_URL": str(target), "BITLOOP_API_MODEL_NAME": "m"},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode != 0
            assert re.search(
                f"cannot (open|write) the prediction log {re.escape(str(target))}", result.stderr
            )
            assert "BITLOOP_PREDICTION_LOG_URL" in result.stderr
            assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key", [None, ""])
def test_a_server_that_requires_a_key_refuses_to_start_without_one(tmp_path: Path, key: str | None) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "BITLOOP_API_API_KEY"},
        "BITLOOP_API_REQUIRE_API_KEY": "true",
        "BITLOOP_PREDICTION_LOG_URL": str(tmp_path / "predictions.sqlite"),
        "BITLOOP_API_MODEL_NAME": "m",
        **({} if key is None else {"BITLOOP_API_API_KEY": key}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "api"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "BITLOOP_API_API_KEY is empty or unset" in result.stderr
    assert "Traceback" not in result.stderr


def test_credentials_never_appear_in_answers_or_logs(
    tmp_path: Path, mlflow_uri: str, churn_model: Trained
) -> None:
    secret = "pa55-" + os.urandom(6).hex()
    reachable = mlflow_uri.replace("http://", f"http://bitloop:{secret}@")
    down = f"http://bitloop:{secret}@127.0.0.1:{free_port()}"
    texts: list[str] = []
    record = sample_record(churn_model.schema)
    for uri in (reachable, down):
        workdir = tmp_path / ("up" if uri == reachable else "down")
        with api_server(workdir, uri, churn_model.name) as base:
            time.sleep(1.5)  # several registry checks, which fail when the registry is down
            for method, path in (("GET", "/ready"), ("GET", "/model"), ("GET", "/drift?fresh=true")):
                texts.append(httpx.request(method, f"{base}{path}").text)
            texts.append(httpx.post(f"{base}/predict", json=record).text)
            texts.append(httpx.post(f"{base}/admin/reload").text)
            texts.append(httpx.get(f"{base}/metrics").text)
            if uri == down:
                assert httpx.get(f"{base}/ready").status_code == 503
        texts.append((workdir / "server.log").read_text())
    everything = "\n".join(texts)
    assert secret not in everything
    assert "bitloop:***@" in everything  # the URL was logged, with its password masked
    assert "registry has been unreachable since" in everything


def test_a_schema_fuzzer_finds_no_server_error(tmp_path: Path, mlflow_uri: str, churn_model: Trained) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    errors: list[str] = []
    calls: list[str] = []
    with api_server(tmp_path, mlflow_uri, churn_model.name) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=30,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                def fuzz(case: Any) -> None:
                    calls.append(case.path)
                    response = case.call(base_url=base, timeout=30)
                    if response.status_code >= 500:
                        errors.append(
                            f"{case.method} {case.path} {case.body!r:.200} -> {response.text[:200]}"
                        )

                try:
                    fuzz()
                except Unsatisfiable:  # nothing invalid to send to a route without parameters
                    assert mode is GenerationMode.NEGATIVE
    assert len(operations) >= 8  # every route the OpenAPI schema documents
    assert {"/predict", "/predict/batch"} <= set(calls)
    assert len(calls) > 200
    assert errors == []


def test_a_version_that_refuses_what_its_predecessor_answered_never_serves(
    make_client: Any, mlflow_uri: str, churn_model: Trained, tmp_path: Path
) -> None:
    """Its own sample holds only values seen in training, so it passes that check; the traffic the
    champion answered holds a region it has never seen, which its encoder refuses. It is refused
    with the share in /model and /ready, and the champion keeps serving; a version that answers that
    traffic replaces it, its figures in /model."""
    name = "strict-successor"
    registry = MlflowClient(mlflow_uri)
    first = register_version(mlflow_uri, name, fitted(churn_model), churn_model)
    registry.set_registered_model_alias(name, "champion", first)
    log = tmp_path / "successor.sqlite"
    client = make_client(
        name, closed_categories=False, prediction_log_url=str(log), prediction_log_flush_ms=5.0
    )
    record = sample_record(churn_model.schema)
    for i in range(100):
        answer = client.post("/predict", json=record | ({"region": "atlantis"} if i % 4 == 0 else {}))
        assert answer.status_code == 200, answer.text
    wait_for(lambda: count_rows(log) == 100, 10)

    strict = register_version(mlflow_uri, name, fitted(churn_model, handle_unknown="error"), churn_model)
    registry.set_registered_model_alias(name, "champion", strict)
    assert client.post("/admin/reload").json()["changed"] is False
    info = client.get("/model").json()
    assert info["version"] == first
    (refusal,) = info["refused"]
    assert refusal["version"] == strict
    assert f"refuses 25 of the 100 records version {first} answered most recently (25.0%" in refusal["reason"]
    assert (
        f"@champion version {strict} was refused: it refuses 25 of the 100"
        in client.get("/ready").json()["detail"]
    )

    # A refused version is tried again after 5 minutes (the README's figure), not before.
    manager = client.app.state.bitloop.manager
    refused_at = manager.refusals["champion"].at
    failures = f'bitloop_model_reloads_total{{model="{name}",result="failure",variant="champion"}}'

    def attempts_after(seconds: float) -> float:
        manager.clock = lambda: refused_at + seconds
        client.portal.call(manager.refresh)
        return metric_of(client.get("/metrics").text, failures)

    before = metric_of(client.get("/metrics").text, failures)
    assert attempts_after(299) == before  # still refused, not loaded again
    assert attempts_after(301) == before + 1  # tried again, and refused again
    assert client.get("/model").json()["version"] == first

    tolerant = register_version(mlflow_uri, name, fitted(churn_model), churn_model)
    registry.set_registered_model_alias(name, "champion", tolerant)
    assert client.post("/admin/reload").json()["changed"] is True
    info = client.get("/model").json()
    assert (info["version"], info["refused"]) == (tolerant, [])
    assert info["traffic_check"].startswith(f"refuses 0 of the 100 records version {first} answered")
