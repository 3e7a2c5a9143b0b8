"""Deployment files are valid: the compose stack, the Kubernetes manifests, the CI workflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from api.settings import ApiSettings
from ops.local.compose import API_KEY_SECRET, COMPOSE_SECRETS, write_compose_secrets
from tests.factories import PROJECT
from tests.tools import compose_client, require

BIN = Path(sys.executable).parent


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose_client(), "--project-directory", str(PROJECT), "-f", "docker-compose.yml", *args],
        cwd=PROJECT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_file_is_valid_and_hands_every_secret_over_as_a_file(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    write_compose_secrets(secrets_dir)
    (secrets_dir / API_KEY_SECRET).write_text("test-only-api-key")
    values = {p.name: p.read_text() for p in secrets_dir.iterdir()}
    # The same values in the environment too, under the names compose used to read them from, so
    # a service that still interpolated one would show it in the rendered configuration.
    leftovers = {name.upper(): value for name, value in values.items()} | {
        "BITLOOP_API_API_KEY": values[API_KEY_SECRET]
    }
    checked = compose("config", env={"BITLOOP_SECRETS_DIR": str(secrets_dir), **leftovers})
    assert checked.returncode == 0, checked.stderr
    config = yaml.safe_load(checked.stdout)
    # Every secret is a file from the secrets directory; none of their values is in the rendered
    # configuration, i.e. in any service's environment, command or URL.
    assert set(config["secrets"]) == {*COMPOSE_SECRETS, API_KEY_SECRET}
    for name, secret in config["secrets"].items():
        assert Path(secret["file"]) == secrets_dir / name
    assert [name for name, value in values.items() if value in checked.stdout] == []
    example = (PROJECT / ".env.example").read_text()
    for secret in (*COMPOSE_SECRETS, API_KEY_SECRET):
        assert f"#   {secret} " in example, secret
    services = config["services"]
    for name, service in services.items():
        assert "healthcheck" in service, name
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port['published']}"
            assert published.startswith("127.0.0.1:"), (name, port)
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|API_KEY", key):  # only ever a file, or a command reading one
                assert key.endswith(("_FILE", "_CMD")), (name, key)
                assert "/run/secrets/" in str(value) or str(value).startswith("/opt/airflow/auth/"), (
                    name,
                    key,
                )
    ours = {n for n, s in services.items() if s["image"].startswith("bitloop-")}
    assert ours >= {"api", "mlflow", "datasource", "airflow-init", "airflow-api", "airflow-scheduler"}
    third_party = [s["image"] for n, s in services.items() if n not in ours]
    assert all(":" in image and not image.endswith(":latest") for image in third_party), third_party
    assert set(config["volumes"]) >= {"postgres", "mlflow-artifacts", "prometheus", "grafana"}
    # MLflow asks for a login; the pipeline and the model server log in as its admin.
    assert services["mlflow"]["command"][2:4] == ["--app-name", "basic-auth"]
    for name in ("api", "airflow-scheduler"):
        environment = services[name]["environment"]
        assert (
            environment["MLFLOW_TRACKING_USERNAME"]
            == services["mlflow"]["environment"]["MLFLOW_AUTH_ADMIN_USERNAME"]
        )
        assert environment["MLFLOW_TRACKING_PASSWORD_FILE"] == "/run/secrets/mlflow_admin_password"


def haproxy_sections() -> dict[str, list[str]]:
    """ops/haproxy/haproxy.cfg as {section header: its directives}, comments left out."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in (PROJECT / "ops" / "haproxy" / "haproxy.cfg").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        if not raw.startswith(" "):
            current = sections.setdefault(line, [])
        else:
            current.append(line)
    return sections


def test_compose_replicas_sit_behind_a_load_balancer_that_routes_only_to_ready_ones(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    write_compose_secrets(secrets_dir)
    rendered = compose("config", env={"BITLOOP_SECRETS_DIR": str(secrets_dir), "BITLOOP_API_PORT": "18000"})
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    # The model server publishes nothing (replicas would collide); the balancer publishes its port.
    assert "ports" not in services["api"]
    [port] = services["lb"]["ports"]
    mapping = port.split(":")[-2:] if isinstance(port, str) else [port["published"], port["target"]]
    assert [str(p).removesuffix("/tcp") for p in mapping] == ["18000", "8000"]
    assert services["lb"]["depends_on"]["api"]["condition"] == "service_healthy"
    config = haproxy_sections()
    assert "bind :8000" in config["frontend api"]
    # Ready replicas take the traffic; with none ready (no champion yet) a live one still answers.
    assert "use_backend api if { nbsrv(api) gt 0 }" in config["frontend api"]
    assert "default_backend api_alive" in config["frontend api"]
    assert "http-check send meth GET uri /health" in config["backend api_alive"]
    backend = config["backend api"]
    assert "http-check send meth GET uri /ready" in backend
    assert "http-check expect status 200" in backend
    [template] = [d for d in backend if d.startswith("server-template")]
    assert template.split()[-1] == f"api:{api_image_env('BITLOOP_API_PORT')}"
    [defaults] = [d for d in backend if d.startswith("default-server")]
    assert {"check", "resolvers"} <= set(defaults.split())
    # Replicas are looked up again by name, so `--scale` needs no reload.
    resolver = defaults.split()[defaults.split().index("resolvers") + 1]
    assert f"resolvers {resolver}" in config
    retry = config["defaults"]
    assert "option redispatch 1" in retry
    assert {"conn-failure", "empty-response"} <= set(
        next(d for d in retry if d.startswith("retry-on")).split()
    )
    # A stopping replica turns not ready for longer than one health-check interval, and the engine
    # waits for its drain and its log's flush before it kills it.
    drain = float(services["api"]["environment"]["BITLOOP_API_DRAIN_SECONDS"])
    interval = float(defaults.split()[defaults.split().index("inter") + 1].removesuffix("s"))
    assert drain >= 2 * interval
    grace = float(str(services["api"]["stop_grace_period"]).removesuffix("s"))
    assert grace > drain + ApiSettings().prediction_log_shutdown_seconds
    # Prometheus finds every replica by the same name.
    scrape = yaml.safe_load((PROJECT / "ops" / "prometheus" / "prometheus.compose.yml").read_text())
    [job] = [j for j in scrape["scrape_configs"] if j["job_name"] == "bitloop-api"]
    assert job["dns_sd_configs"] == [{"names": ["api"], "type": "A", "port": 8000, "refresh_interval": "15s"}]


def test_missing_secrets_are_generated_once_and_kept_private(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    assert write_compose_secrets(directory) == [*COMPOSE_SECRETS, API_KEY_SECRET]
    first = {p.name: p.read_text() for p in directory.iterdir()}
    assert first[API_KEY_SECRET] == ""  # an open /predict unless the operator writes a key
    assert len({v for k, v in first.items() if k != API_KEY_SECRET}) == len(COMPOSE_SECRETS)
    assert all(len(v) >= 32 for k, v in first.items() if k != API_KEY_SECRET)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # the containers' users read the files
    (directory / "airflow_jwt_secret").unlink()
    assert write_compose_secrets(directory) == ["airflow_jwt_secret"]  # the others are kept
    assert (directory / "postgres_password").read_text() == first["postgres_password"]
    (directory / "grafana_admin_password").write_text("\n")
    with pytest.raises(SystemExit, match="grafana_admin_password is empty"):
        write_compose_secrets(directory)


def test_the_entrypoint_exports_each_named_secret_file_and_nothing_else(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret value\n")
    entrypoint = PROJECT / "ops" / "docker" / "secrets-env"
    env = {
        "PATH": os.environ["PATH"],
        "MLFLOW_TRACKING_PASSWORD_FILE": str(secret),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "/opt/airflow/auth/passwords.json",
    }
    shown = subprocess.run(
        [str(entrypoint), "python3", "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    seen = json.loads(shown.stdout)
    assert seen["MLFLOW_TRACKING_PASSWORD"] == "s3cret value"
    assert "MLFLOW_TRACKING_PASSWORD_FILE" not in seen
    # A *_FILE setting that names a path for its program is left alone.
    assert seen["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == "/opt/airflow/auth/passwords.json"
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS" not in seen
    missing = subprocess.run(
        [str(entrypoint), "true"],
        env={**env, "PGPASSWORD_FILE": str(tmp_path / "absent")}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert missing.returncode == 64
    assert f"PGPASSWORD_FILE is {tmp_path / 'absent'}" in missing.stderr


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    kustomization = yaml.safe_load((PROJECT / "ops" / "k8s" / "kustomization.yaml").read_text())
    files = [str(PROJECT / "ops" / "k8s" / name) for name in kustomization["resources"]]
    kinds = {yaml.safe_load(Path(f).read_text())["kind"] for f in files}
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    checked = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", *files], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    deployment = yaml.safe_load((PROJECT / "ops" / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]


def api_image_env(name: str) -> str:
    """A variable the api image's Dockerfile stage sets."""
    stage = (PROJECT / "ops" / "docker" / "Dockerfile").read_text().split("FROM runtime AS api")[1]
    found = re.search(rf"\b{name}=(\S+)", stage.split("\nFROM ")[0])
    assert found, f"the api image does not set {name}"
    return found[1]


def test_kubernetes_replicas_drain_and_share_one_prediction_log_when_given_its_secret() -> None:
    deployment = yaml.safe_load((PROJECT / "ops" / "k8s" / "deployment.yaml").read_text())
    budget = yaml.safe_load((PROJECT / "ops" / "k8s" / "pdb.yaml").read_text())
    hpa = yaml.safe_load((PROJECT / "ops" / "k8s" / "hpa.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # One pod at a time may be evicted, and there are always two: a drain never empties the Service.
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert hpa["spec"]["minReplicas"] >= 2
    # SIGTERM comes after the preStop sleep, and the grace period covers the sleep plus the log's flush.
    shutdown = ApiSettings().prediction_log_shutdown_seconds
    assert (
        pod["terminationGracePeriodSeconds"]
        > container["lifecycle"]["preStop"]["sleep"]["seconds"] + shutdown
    )
    env = {e["name"]: e for e in container["env"]}
    log_url = env["BITLOOP_PREDICTION_LOG_URL"]["valueFrom"]["secretKeyRef"]
    assert (log_url["name"], log_url["key"], log_url["optional"]) == ("bitloop-prediction-log", "url", True)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    spill = Path(api_image_env("BITLOOP_API_PREDICTION_LOG_SPILL_DIR"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[str(spill.parent)]]  # writable, and outlives a container restart


def test_the_kubernetes_api_key_is_required_unless_the_operator_opts_out() -> None:
    k8s = PROJECT / "ops" / "k8s"
    container = yaml.safe_load((k8s / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    env = {e["name"]: e for e in container["containers"][0]["env"]}
    reference = env["BITLOOP_API_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "bitloop-api", "key": "api-key"}  # not optional: no Secret, no pod
    config = yaml.safe_load((k8s / "configmap.yaml").read_text())["data"]
    assert config["BITLOOP_API_REQUIRE_API_KEY"] == "true"  # an empty key stops the server
    opt_out = yaml.safe_load((PROJECT / "ops" / "k8s-open" / "kustomization.yaml").read_text())
    assert opt_out["resources"] == ["../k8s"]
    patches = "\n".join(p["patch"] for p in opt_out["patches"])
    assert "op: remove\n  path: /spec/template/spec/containers/0/env" in patches
    assert 'path: /data/BITLOOP_API_REQUIRE_API_KEY\n  value: "false"' in patches


def test_the_kubernetes_server_logs_in_to_mlflow_with_a_required_secret_file() -> None:
    k8s = PROJECT / "ops" / "k8s"
    pod = yaml.safe_load((k8s / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret = volumes["mlflow-credentials"]["secret"]
    assert secret["secretName"] == "bitloop-mlflow"
    assert "optional" not in secret  # no Secret, no pod
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    directory = mounts["mlflow-credentials"]["mountPath"]
    config = yaml.safe_load((k8s / "configmap.yaml").read_text())["data"]
    assert config["MLFLOW_TRACKING_PASSWORD_FILE"] == f"{directory}/{secret['items'][0]['path']}"
    assert config["MLFLOW_TRACKING_USERNAME"]
    # The entrypoint that turns the file into MLFLOW_TRACKING_PASSWORD is the image's.
    assert 'ENTRYPOINT ["secrets-env"]' in (PROJECT / "ops" / "docker" / "Dockerfile").read_text()
    assert '"/usr/local/bin/secrets-env"' in (PROJECT / "flake.nix").read_text()


def workflows() -> list[Path]:
    found = sorted((PROJECT / ".github" / "workflows").glob("*.yml"))
    assert found
    return found


def test_github_workflows_match_githubs_schema() -> None:
    """Offline: the workflow schema check-jsonschema ships (upstream actionlint runs in the workflow)."""
    schema = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]
    checked = subprocess.run([*schema, *map(str, workflows())], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_schema_check_fails_on_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text(workflows()[0].read_text().replace("runs-on:", "runs_on:", 1))
    checked = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 1


def test_every_action_is_pinned_by_commit_and_every_suite_runs() -> None:
    workflow = yaml.safe_load(workflows()[0].read_text())
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses
    for use in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", use), f"{use} is not pinned by commit"
    runs = "\n".join(step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"])
    for target in (t for t in suites() if t != "setup"):  # every suite .ci/run runs (setup: in each)
        assert re.search(rf"make {target}$", runs, flags=re.MULTILINE), target
    test = workflow["jobs"]["test"]["steps"]
    installed = " ".join(step.get("run", "") for step in test)
    assert "postgresql" in installed  # the prediction log's tests start a real server
    assert all(
        step["run"].startswith("sudo ") for step in test if re.search(r"make test", step.get("run", ""))
    )
    stack = next(
        job
        for job in workflow["jobs"].values()
        if any("make test-stack" in s.get("run", "") for s in job["steps"])
    )
    assert (
        any(step.get("env", {}).get("STACK") == "local" for step in stack["steps"])
        or stack.get("env", {}).get("STACK") == "local"
    )
    assert "actionlint" in runs  # upstream, where its binary can be fetched
    assert "pip-audit" in runs
    assert workflow["env"]["CI"] == "true"
    assert set(workflow["jobs"]["images"]["needs"]) == {"lint", "test", "stack", "compose"}


def suites() -> list[str]:
    """The make targets .ci/run runs (its `timed NAME make TARGET` lines)."""
    text = (PROJECT / ".ci" / "run").read_text()
    found = re.findall(r"^timed ([a-z0-9-]+)", text, flags=re.MULTILINE)
    assert found, "no suites found in .ci/run"
    return found


def test_the_flake_parses() -> None:
    """Nix cannot fetch nixpkgs here, so evaluation happens elsewhere; the syntax is checked here."""
    require("nix-instantiate", install="apt-get install nix-bin")
    checked = subprocess.run(
        ["nix-instantiate", "--parse", str(PROJECT / "flake.nix")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    for output in ("api-image", "pipeline-image", "mlflow-image", "datasource-image", "devShells"):
        assert output.split("-image")[0] in checked.stdout, output


def test_uv_lock_matches_pyproject() -> None:
    uv = [found] if (found := shutil.which("uv")) else ["python3", "-m", "uv"]
    checked = subprocess.run(
        [*uv, "lock", "--check"], cwd=PROJECT, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
