"""Deployment files are valid: the compose stack, the Kubernetes manifests, the CI workflow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.factories import PROJECT
from tests.tools import compose_client, require

BIN = Path(sys.executable).parent
SECRETS = (
    "POSTGRES_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "GRAFANA_ADMIN_PASSWORD",
)


def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [*compose_client(), "--project-directory", str(PROJECT), "-f", "docker-compose.yml", *args],
        cwd=PROJECT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_file_is_valid_and_documents_every_secret() -> None:
    values = dict.fromkeys(SECRETS, "test-only-secret")
    checked = compose("config", env=values)
    assert checked.returncode == 0, checked.stderr
    config = yaml.safe_load(checked.stdout)
    example = (PROJECT / ".env.example").read_text()
    for secret in SECRETS:
        assert f"\n{secret}=\n" in example, secret
    services = config["services"]
    for name, service in services.items():
        assert "healthcheck" in service, name
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:{port['published']}"
            assert published.startswith("127.0.0.1:"), (name, port)
    ours = {n for n, s in services.items() if s["image"].startswith("bitloop-")}
    assert ours >= {"api", "mlflow", "datasource", "airflow-init", "airflow-api", "airflow-scheduler"}
    third_party = [s["image"] for n, s in services.items() if n not in ours]
    assert all(":" in image and not image.endswith(":latest") for image in third_party), third_party
    assert set(config["volumes"]) >= {"postgres", "mlflow-artifacts", "prometheus", "grafana", "predictions"}


def test_compose_refuses_to_start_without_its_secrets() -> None:
    for missing in SECRETS:
        values = {s: "x" for s in SECRETS if s != missing}
        checked = compose("config", "-q", env=values)
        assert checked.returncode != 0
        assert missing in checked.stderr


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    kustomization = yaml.safe_load((PROJECT / "ops" / "k8s" / "kustomization.yaml").read_text())
    files = [str(PROJECT / "ops" / "k8s" / name) for name in kustomization["resources"]]
    kinds = {yaml.safe_load(Path(f).read_text())["kind"] for f in files}
    assert kinds == {"Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
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
    for target in ("lint", "test", "test-stack", "test-compose", "repro-check"):
        assert re.search(rf"make {target}$", runs, flags=re.MULTILINE), target
    assert "actionlint" in runs  # upstream, where its binary can be fetched
    assert "pip-audit" in runs
    assert workflow["env"]["CI"] == "true"
    assert set(workflow["jobs"]["images"]["needs"]) == {"lint", "test", "stack", "compose"}


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
