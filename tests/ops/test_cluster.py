"""Past one machine on Kubernetes: MLflow's manifests and the values for Airflow's official chart.

No cluster or chart can run here: the manifests validate against the Kubernetes API schemas, and
the chart values are checked against what bitloop's own images and settings expect.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from core.settings import PipelineSettings
from tests.factories import PROJECT

BIN = Path(sys.executable).parent
K8S = PROJECT / "ops" / "k8s"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dockerfile_stage(target: str) -> str:
    text = (PROJECT / "ops" / "docker" / "Dockerfile").read_text()
    return text.split(f"FROM runtime AS {target}")[1].split("\nFROM ")[0]


def test_mlflow_manifests_validate_and_keep_every_secret_in_a_secret() -> None:
    kustomization = load(K8S / "mlflow" / "kustomization.yaml")
    files = [K8S / "mlflow" / name for name in kustomization["resources"]]
    checked = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", *map(str, files)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    docs = {load(f)["kind"]: load(f) for f in files}
    assert set(docs) == {"ConfigMap", "Deployment", "Service"}
    config = docs["ConfigMap"]["data"]
    assert urlparse(config["MLFLOW_ARTIFACTS_DESTINATION"]).scheme == "s3"
    backend = urlparse(config["MLFLOW_BACKEND_STORE_URI"])
    assert backend.scheme.startswith("postgresql")
    assert backend.password is None  # the password comes from PGPASSWORD, set from its Secret's file
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "$(MLFLOW_ARTIFACTS_DESTINATION)" in container["args"]
    # Each *_FILE the entrypoint reads lies in a mounted Secret that has that key.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    files_read = {e["name"]: e["value"] for e in container["env"] if e["name"].endswith("_FILE")}
    assert set(files_read) == {
        "PGPASSWORD_FILE",
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE",
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE",
    }
    for path in files_read.values():
        assert mounts.get(str(Path(path).parent)) in secrets, path
    entrypoint = (PROJECT / "ops" / "docker" / "secrets-env").read_text()
    assert all(name.removesuffix("_FILE") in entrypoint for name in files_read)
    # The model server's ConfigMap reaches this Service, with the admin's name this one creates.
    api = load(K8S / "configmap.yaml")["data"]
    host = urlparse(api["MLFLOW_TRACKING_URI"]).hostname
    assert host is not None
    assert host.split(".")[:2] == [docs["Service"]["metadata"]["name"], kustomization["namespace"]]
    assert api["MLFLOW_TRACKING_USERNAME"] == config["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert host in config["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_airflow_chart_values_run_the_pipeline_image_on_workers_that_share_no_disk() -> None:
    values = load(K8S / "airflow" / "values.yaml")
    assert values["executor"] == "CeleryExecutor"
    assert values["airflowVersion"] == version("apache-airflow")  # the version uv.lock installs
    assert values["images"]["airflow"]["repository"].endswith("/bitloop-pipeline")
    pipeline_image = dockerfile_stage("pipeline")
    assert f"AIRFLOW__CORE__DAGS_FOLDER={values['config']['core']['dags_folder']}" in pipeline_image
    assert f"USER {values['uid']}:{values['gid']}" in pipeline_image
    workers = values["workers"]
    assert workers["replicas"] >= 2
    assert workers["persistence"]["enabled"] is False
    # The environment is one the pipeline accepts: the remote hand-off through an S3 DVC remote.
    env = {e["name"]: e["value"] for e in values["env"]}
    settings = PipelineSettings(**{k: v for k, v in env.items() if k.startswith("BITLOOP_")})
    assert settings.stage_handoff == "remote"
    assert urlparse(settings.dvc_remote_url).scheme == "s3"
    assert version("dvc-s3")  # the pipeline image can reach it
    assert env["MLFLOW_TRACKING_URI"] == load(K8S / "configmap.yaml")["data"]["MLFLOW_TRACKING_URI"]
    from_secrets = {s["envName"] for s in values["secret"]}
    assert {"MLFLOW_TRACKING_PASSWORD", "BITLOOP_PREDICTION_LOG_URL", "AWS_SECRET_ACCESS_KEY"} <= from_secrets
    # Every credential is a Secret's name, never a value in this file.
    assert values["postgresql"]["enabled"] is False
    assert set(values["data"]) == {"metadataSecretName", "resultBackendSecretName", "brokerUrlSecretName"}
    assert values["redis"]["passwordSecretName"]
    assert not re.search(
        r"(?i)(password|secret|key)\s*:\s*['\"]?[A-Za-z0-9+/]{16,}",
        (K8S / "airflow" / "values.yaml").read_text(),
    )
    assert values["config"]["scheduler"]["task_instance_heartbeat_timeout"] <= 120
