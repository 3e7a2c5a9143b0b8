"""What a training run records about where it came from: the code's commit and the environment.

`register` logs both with every candidate; `reproduce` compares them when it rebuilds a version.
"""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import distributions
from pathlib import Path

from core.registry import RECORD_DIR


def git_commit(root: Path) -> str:
    """The commit the code ran at, with '-dirty' when the work tree's code has changes. params.yaml
    is left out: a run records its parameters itself, and `reproduce` retrains with those, so the
    edit the README asks for (params.yaml) leaves the code's commit exact."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)params.yaml",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


@cache  # reading ~250 distributions' metadata takes most of a second; a process's environment is fixed
def environment_lock() -> str:
    """The running environment, one `name==version` per installed distribution, sorted."""
    pins = sorted(
        {f"{d.metadata['Name'].lower()}=={d.version}" for d in distributions() if d.metadata["Name"]}
    )
    return "\n".join(pins) + "\n"


def log_reproduction_record(root: Path) -> None:
    """What `python -m pipeline reproduce` needs: the params, the DVC lock of this run and its environment."""
    import mlflow

    mlflow.log_artifact(str(root / "params.yaml"), artifact_path=RECORD_DIR)
    if (root / "dvc.lock").is_file():  # absent when the stages ran outside DVC (`python -m pipeline run`)
        mlflow.log_artifact(str(root / "dvc.lock"), artifact_path=RECORD_DIR)
    mlflow.log_text(environment_lock(), f"{RECORD_DIR}/environment.txt")
