"""No command of the pipeline's CLI shows a URL's password: every subcommand runs with credentials in
MLFLOW_TRACKING_URI, against a registry that answers and one that does not, and everything it
printed (its result, its error, the text of an exception it let through) is scanned."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from api.settings import ApiSettings
from core.settings import PipelineSettings
from pipeline.__main__ import _parser, main
from tests.factories import light_params
from tests.servers import free_port

pytestmark = pytest.mark.integration
SECRET = "s3cret-Pa55"
# What each subcommand needs to get as far as it can; serve-data and backtest never talk to MLflow.
ARGUMENTS = {
    "summary": ["--run-label", "x"],
    "drift": ["--label", "x"],
    "retrain-gate": ["--signal", "drift"],
    "batches": ["list"],
    "reproduce": ["--version", "1"],
    "rollout": ["status"],
}
NOT_MLFLOW = {"serve-data", "backtest"}


def subcommands() -> list[str]:
    found = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(set(found.choices) - NOT_MLFLOW)


def test_every_subcommand_is_run_here() -> None:
    assert {"champion", "rollout", "promote", "register", "rollback", "quality"} <= set(subcommands())


@pytest.mark.parametrize("reachable", [True, False], ids=["registry-up", "registry-down"])
def test_no_subcommand_prints_the_tracking_password(
    reachable: bool,
    mlflow_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(light_params(model={"name": "secret-churn"})))
    port = mlflow_uri.rsplit(":", 1)[1] if reachable else str(free_port())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bitloop:{SECRET}@127.0.0.1:{port}")
    monkeypatch.setenv("BITLOOP_PREDICTION_LOG_URL", str(tmp_path / "log.sqlite"))
    shown: dict[str, str] = {}
    for name in subcommands():
        if name in ("run", "repro", "ingest", "validate", "split", "train", "evaluate"):
            continue  # the stages before register never read the tracking URI (register and promote do)
        try:
            code = main(["--root", str(tmp_path), name, *ARGUMENTS.get(name, [])])
            raised = ""
        except (Exception, SystemExit) as err:  # a failure the CLI let through: its text counts too
            code, raised = -1, f"{type(err).__name__}: {err}"
        captured = capsys.readouterr()
        shown[name] = f"exit {code}\n{captured.out}{captured.err}{raised}"
    assert {name: text for name, text in shown.items() if SECRET in text} == {}
    if not reachable:
        for name in ("champion", "rollout", "promote"):
            assert f"MLflow is not reachable at http://bitloop:***@127.0.0.1:{port}" in shown[name], shown[
                name
            ]


def test_one_port_setting_reaches_every_command(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`BITLOOP_MLFLOW_PORT=5100 make up` moves the stack's MLflow; every `python -m pipeline` command
    without MLFLOW_TRACKING_URI then talks to that port, not :5000 (where another registry may be);
    an explicit MLFLOW_TRACKING_URI still wins."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(light_params(model={"name": "moved-churn"})))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("BITLOOP_MLFLOW_PORT", mlflow_uri.rsplit(":", 1)[1])
    main(["--root", str(tmp_path), "champion"])
    shown = capsys.readouterr()
    assert "not reachable" not in shown.out + shown.err, shown.err
    assert PipelineSettings().mlflow_tracking_uri == mlflow_uri
    assert ApiSettings().mlflow_tracking_uri == mlflow_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert PipelineSettings().mlflow_tracking_uri == "http://mlflow:5000"
    assert ApiSettings().mlflow_tracking_uri == "http://mlflow:5000"


def test_mlflows_pip_version_warning_is_not_printed_and_its_other_warnings_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MLflow's "Failed to resolve installed pip version", once per candidate in every `make repro`,
    says nothing about the pinned requirements; any other warning of that module still shows."""
    import logging

    from core.logs import configure_logging

    configure_logging()
    environment = logging.getLogger("mlflow.utils.environment")
    environment.addHandler(caplog.handler)  # MLflow's loggers may not propagate to the root
    try:
        environment.warning("Failed to resolve installed pip version. ``pip`` will be added to conda.yaml")
        environment.warning("Encountered an unexpected error while inferring pip requirements")
    finally:
        environment.removeHandler(caplog.handler)
    assert {r.getMessage()[:22] for r in caplog.records} == {"Encountered an unexpec"}
