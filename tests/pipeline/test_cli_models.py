"""`--model` chooses which declared model a command works on; an unknown one is a readable error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.errors import EXIT_USAGE
from tests.factories import PROJECT, light_params, make_workspace


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "--root", str(root), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        timeout=120,
    )


def test_commands_work_on_the_model_they_are_given(tmp_path: Path) -> None:
    wine = {"data": {"source": "sklearn", "name": "wine", "target": "cultivar", "id_column": None}}
    make_workspace(tmp_path, light_params(model={"name": "cli-churn"}, models={"cli-wine": wine}))

    ingested = cli(tmp_path, "ingest", "--model", "cli-wine")
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["version"] == "v1"
    assert (tmp_path / "data" / "cli-wine" / "raw").is_dir()
    assert not (tmp_path / "data" / "cli-churn").exists()  # the default model was not touched
    listed = cli(tmp_path, "batches", "list", "--model", "cli-wine")
    assert listed.returncode == 0, listed.stderr
    assert [batch["rows"] for batch in json.loads(listed.stdout)] == [178]  # scikit-learn's wine

    unknown = cli(tmp_path, "ingest", "--model", "cli-iris")
    assert unknown.returncode == EXIT_USAGE
    assert "declares no model 'cli-iris'; it declares cli-churn, cli-wine" in unknown.stderr
    assert "Traceback" not in unknown.stderr
