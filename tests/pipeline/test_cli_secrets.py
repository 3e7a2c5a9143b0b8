"""No command of the pipeline's CLI shows a URL's password: every subcommand runs with credentials in
MLFLOW_TRACKING_URI, against a registry that answers and one that does not, and everything it
printed (its result, its error, the text of an exception it let through) is scanned."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

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
