"""Canary rollouts under load: two model-server replicas, a real MLflow and Prometheus, the decider
judging on what Prometheus scraped (`make test-rollout`).

A good candidate is promoted through its canary with no failed request, its live quality judged on
the outcomes sent as it runs; one that raises on a slice of inputs, one many times slower, one whose
predictions are shifted and one whose live outcomes show it worse are each rolled back with the
reason recorded, and no client request fails; a replica restarted mid-rollout serves the same
split; with MLflow down the split stays as it was and /ready says so.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline

from core.params import Params, parse_params
from core.rollout import Terms, start
from core.settings import PipelineSettings
from pipeline.data.sources.simulated import churn_probability
from pipeline.loop.decider import decide
from pipeline.stages.promote import expected_shift
from tests.api.conftest import Trained, holdout_records, train_model
from tests.api.test_canary import blind, linear
from tests.api.test_faults import metric, register_version
from tests.factories import light_params
from tests.ops.test_monitoring import require_binaries
from tests.servers import free_port, mlflow_command, serve, stop

pytestmark = [pytest.mark.rollout, pytest.mark.integration, pytest.mark.slow]
NAME = "rollout-churn"
REPLICAS = 2


@dataclass
class Stack:
    trained: Trained
    uri: str
    prometheus: str
    replicas: list[str]
    log: Path
    stable: str
    work: Path
    api_env: dict[str, str]
    ports: list[int]
    stack: ExitStack
    mlflow: subprocess.Popen[bytes]
    servers: list[Any] = field(default_factory=list)

    def register(self, model: Pipeline) -> str:
        return register_version(self.uri, NAME, model, self.trained)

    def params(self, min_requests: int = 300) -> Params:
        return parse_params(light_params(model={"name": NAME}, rollout={"min_requests": min_requests}))

    def settings(self) -> PipelineSettings:
        return PipelineSettings(mlflow_tracking_uri=self.uri, prometheus_url=self.prometheus)


def replica(work: Path, port: int, env: dict[str, str]) -> Any:
    return serve(
        [sys.executable, "-m", "api"],
        f"http://127.0.0.1:{port}/health",
        work / f"api-{port}",
        {**env, "BITLOOP_API_PORT": str(port)},
        timeout=60,
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binaries()
    work = tmp_path_factory.mktemp("rollout")
    mlflow_port = free_port()
    with ExitStack() as stack:
        command, mlflow_env = mlflow_command(work / "mlflow", mlflow_port)
        uri = f"http://127.0.0.1:{mlflow_port}"
        mlflow = stack.enter_context(serve(command, f"{uri}/health", work / "mlflow", mlflow_env))
        trained = train_model(work / "project", uri, NAME, rollout={"share": 0.0})
        stable = register_version(uri, NAME, linear(trained), trained)  # candidates share its runtime
        MlflowClient(uri).set_registered_model_alias(NAME, "champion", stable)
        ports = [free_port() for _ in range(REPLICAS)]
        env = {
            "MLFLOW_TRACKING_URI": uri,
            "BITLOOP_API_MODEL_NAME": NAME,
            "BITLOOP_PREDICTION_LOG_URL": str(work / "predictions.sqlite"),
            "BITLOOP_API_RELOAD_INTERVAL_SECONDS": "0.5",
            "BITLOOP_API_REGISTRY_TIMEOUT_SECONDS": "1",
            "BITLOOP_API_WORKERS": "1",
        }
        servers = [stack.enter_context(replica(work, port, env)) for port in ports]
        prometheus_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "bitloop-api",
                    "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}],
                }
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = f"http://127.0.0.1:{prometheus_port}"
        stack.enter_context(
            serve(
                [
                    "prometheus",
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                f"{prometheus}/-/ready",
                work / "prometheus",
            )
        )
        yield Stack(
            trained,
            uri,
            prometheus,
            [f"http://127.0.0.1:{p}" for p in ports],
            work / "predictions.sqlite",
            stable,
            work,
            env,
            ports,
            stack,
            mlflow,
            servers,
        )


class Load:
    """Clients sending single records with entity ids to every replica in turn, from threads; the
    answers are collected and checked by the test, not in the threads."""

    def __init__(self, live: Stack, entities: int = 3000) -> None:
        self.records = holdout_records(live.trained, 300)
        self.replicas = live.replicas
        self.entities = entities
        self.answers: list[tuple[str, int, str | None, str | None]] = []
        self.answered: list[tuple[str, int]] = []
        """(request id, record index) of every answered request, for its outcome."""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(6)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311  # traffic, not secrets
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                entity = f"e{rng.randrange(self.entities)}"
                base = self.replicas[rng.randrange(len(self.replicas))]
                index = rng.randrange(300)
                try:
                    answer = client.post(f"{base}/predict", params={"id": entity}, json=self.records[index])
                    body = answer.json() if answer.status_code == 200 else {}
                    self.answers.append(
                        (entity, answer.status_code, body.get("variant"), body.get("model_version"))
                    )
                    if answer.status_code == 200:
                        self.answered.append((body["request_id"], index))
                except httpx.HTTPError as err:
                    self.answers.append((entity, 0, type(err).__name__, None))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def failed(self) -> list[tuple[str, int, str | None, str | None]]:
        return [a for a in self.answers if a[1] != 200]


def send_outcomes(live: Stack, load: Load, sent: int) -> int:
    """Tell a replica the true outcome of every request answered since the first `sent`; returns how
    many have been sent now. The outcomes are the holdout's labels of the records the clients sent."""
    labels = pd.read_parquet(live.trained.workspace.test_file)[live.trained.schema.target].head(300)
    answered = list(load.answered)
    for begin in range(sent, len(answered), 500):
        items = [
            {"request_id": request, "outcome": labels.iloc[index].item()}
            for request, index in answered[begin : begin + 500]
        ]
        answer = httpx.post(f"{live.replicas[0]}/feedback", json={"outcomes": items}, timeout=30)
        assert answer.status_code == 200, answer.text
    return len(answered)


def roll_out(
    live: Stack,
    candidate: str,
    share: float = 0.5,
    timeout: float = 120.0,
    expected_psi: float = 0.0,
    outcomes: bool = False,
) -> tuple[dict[str, Any], Load]:
    """Start a rollout of `candidate`, load both replicas, and run the decider until it decides; with
    `outcomes`, every answer's true outcome reaches /feedback before each decision."""
    client = MlflowClient(live.uri)
    client.set_registered_model_alias(NAME, "champion", live.stable)
    start(client, NAME, candidate, live.stable, Terms(share, 300, 10.0, expected_psi=expected_psi))
    params, settings = live.params(), live.settings()
    deadline = time.monotonic() + timeout
    sent = 0
    with Load(live) as load:
        while True:
            time.sleep(2.0)
            if outcomes:
                sent = send_outcomes(live, load, sent)
                time.sleep(0.2)  # the log's flush interval: the outcomes are stored
            verdict = decide(params, settings, str(live.log))
            if verdict["action"] != "wait":
                break
            assert time.monotonic() < deadline, f"undecided after {timeout:g} s: {verdict}"
    return verdict, load


def test_a_good_candidate_is_promoted_through_its_canary_with_no_failed_request(live: Stack) -> None:
    """Outcomes arrive for both sides as it runs: the canary's live quality is judged, and holds."""
    good = live.register(linear(live.trained))
    verdict, load = roll_out(live, good, outcomes=True)
    assert verdict["action"] == "promote", verdict
    assert load.failed() == []
    assert {(v, ver) for _, _, v, ver in load.answers} == {("champion", live.stable), ("canary", good)}
    checks = {c["slo"]: c["status"] for c in verdict["checks"]}
    assert checks == {"errors": "pass", "latency": "pass", "predictions": "pass", "quality": "pass"}
    assert MlflowClient(live.uri).get_model_version_by_alias(NAME, "champion").version == good


def wrong_world(trained: Trained) -> Pipeline:
    """The linear candidate fitted on labels of another concept (the simulator's turned relation):
    its predictions look much like the stable version's, its ranking of these customers is worse."""
    train = pd.read_parquet(trained.workspace.train_file)
    features = train[trained.schema.feature_names]
    complete = features.fillna(features[list(trained.schema.numeric)].median())
    rng = np.random.default_rng(3)
    target = trained.schema.target
    turned = pd.Series(rng.random(len(train)) < churn_probability(complete, 1.0), index=train.index)
    return linear(trained, train.assign(**{target: turned.astype(train[target].dtype)}))


def test_a_candidate_worse_on_live_outcomes_is_rolled_back_for_its_quality(live: Stack) -> None:
    """The shift its predictions showed on the holdout is allowed (as promote would record it), so
    only the outcomes can tell: its live ROC AUC falls short of the stable version's."""
    model = wrong_world(live.trained)
    test = pd.read_parquet(live.trained.workspace.test_file)
    expected = expected_shift(linear(live.trained), model, test, live.trained.schema, 0.5, 300)
    bad = live.register(model)
    verdict, load = roll_out(live, bad, expected_psi=expected, outcomes=True)
    assert verdict["action"] == "rollback", (verdict["reason"], verdict["checks"])
    assert verdict["reason"].startswith("quality SLO failed"), verdict["reason"]
    assert load.failed() == []
    assert MlflowClient(live.uri).get_model_version_by_alias(NAME, "champion").version == live.stable


@pytest.fixture(scope="module")
def candidates(live: Stack) -> dict[str, tuple[Pipeline, float]]:
    """One bad candidate per SLO, fitted once for the module (the forest takes most of a minute),
    each with the prediction shift its rollout allows."""
    train = pd.read_parquet(live.trained.workspace.train_file)
    slow = linear(live.trained)
    # 1,500 shallow trees: about ten times the linear model's call, a small artifact (~4 MB).
    slow.steps[-1] = ("model", RandomForestClassifier(n_estimators=1500, max_depth=4, random_state=0))
    slow.fit(train[live.trained.schema.feature_names], train[live.trained.schema.target])
    # A forest's probabilities spread unlike the linear model's: its rollout allows the shift its
    # holdout shows, as promotion records it, so that only its latency can fail it (otherwise the
    # prediction check, which needs fewer records to be sure, may fail it first).
    test = pd.read_parquet(live.trained.workspace.test_file)
    allowed = expected_shift(linear(live.trained), slow, test, live.trained.schema, 0.5, 300)
    return {
        "errors": (blind(live.trained), 0.0),
        "latency": (slow, allowed),
        "predictions": (linear(live.trained, shift=3.0), 0.0),
    }


@pytest.mark.parametrize("slo", ["errors", "latency", "predictions"])
def test_a_bad_candidate_is_rolled_back_with_its_reason_and_no_failed_request(
    live: Stack, candidates: dict[str, tuple[Pipeline, float]], slo: str
) -> None:
    model, allowed = candidates[slo]
    bad = live.register(model)
    verdict, load = roll_out(live, bad, expected_psi=allowed)
    assert verdict["action"] == "rollback", (verdict["reason"], verdict["checks"])
    assert verdict["reason"].startswith(f"{slo} SLO failed"), verdict["reason"]
    assert load.failed() == []  # the canary's failures were answered by the stable version
    client = MlflowClient(live.uri)
    assert client.get_model_version_by_alias(NAME, "champion").version == live.stable
    tags = client.get_model_version(NAME, bad).tags
    assert tags["bitloop.rollout.outcome"] == "rolled_back"
    assert tags["bitloop.decision_reason"] == verdict["reason"]
    deadline = time.monotonic() + 10
    while any(httpx.get(f"{r}/model").json()["rollout"] for r in live.replicas):
        assert time.monotonic() < deadline, "a replica still serves the rolled-back canary"
        time.sleep(0.5)


def sides(base: str, ids: list[str], record: dict[str, Any]) -> dict[str, str]:
    return {i: httpx.post(f"{base}/predict", params={"id": i}, json=record).json()["variant"] for i in ids}


def test_a_restarted_replica_resumes_the_split_and_mlflow_down_freezes_it(live: Stack) -> None:
    client = MlflowClient(live.uri)
    candidate = live.register(linear(live.trained))
    client.set_registered_model_alias(NAME, "champion", live.stable)
    start(client, NAME, candidate, live.stable, Terms(0.5, 10**6, 60.0))
    record = holdout_records(live.trained, 1)[0]
    ids = [f"sticky-{i}" for i in range(60)]
    deadline = time.monotonic() + 10
    while not all(httpx.get(f"{r}/model").json()["rollout"] for r in live.replicas):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    before = [sides(r, ids, record) for r in live.replicas]
    assert before[0] == before[1]
    assert set(before[0].values()) == {"champion", "canary"}

    # Restart the second replica: it reads the same terms and serves the same split.
    stop(live.servers[1])
    live.servers[1] = live.stack.enter_context(replica(live.work, live.ports[1], live.api_env))
    assert httpx.get(f"{live.replicas[1]}/model").json()["rollout"]["canary_version"] == candidate
    assert sides(live.replicas[1], ids, record) == before[0]

    # MLflow down: both replicas keep the split as it is, and say so.
    reachable = f'bitloop_registry_reachable{{model="{NAME}"}}'
    assert [metric(b, reachable) for b in live.replicas] == [1.0, 1.0]
    with mlflow_down(live):
        time.sleep(2.0)
        for base in live.replicas:
            assert sides(base, ids, record) == before[0]
            ready = httpx.get(f"{base}/ready").json()
            assert "the registry has been unreachable" in ready["detail"]
            assert metric(base, reachable) == 0.0
    deadline = time.monotonic() + 10
    while any(metric(b, reachable) != 1.0 for b in live.replicas):
        assert time.monotonic() < deadline, "a replica still reports the registry unreachable"
        time.sleep(0.5)
    client.delete_registered_model_alias(NAME, "canary")


@contextmanager
def mlflow_down(live: Stack) -> Iterator[None]:
    """MLflow stops answering for a while: its process group stopped (SIGSTOP), then continued."""
    group = os.getpgid(live.mlflow.pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)
