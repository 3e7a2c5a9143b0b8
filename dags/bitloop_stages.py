"""What the bitloop DAGs share: the assets that link them and the call into the pipeline's CLI.

Not a DAG file (see .airflowignore). Airflow puts the DAG folder on sys.path, so the DAG files
import it as `bitloop_stages`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

DRIFT = Asset(name="bitloop_drift", uri="bitloop://monitoring/dataset-drift")
"""Updated by the drift monitor when live traffic has drifted from the champion's reference."""
CHAMPION = Asset(name="bitloop_champion", uri="bitloop://registry/champion")
"""Updated whenever a training run finishes its promotion decision."""
EXIT_INVALID_DATA = 3  # the pipeline CLI's exit code for a bad batch (pipeline.__main__.EXIT_INVALID_DATA)
DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def run_stage(stage: str, *args: str) -> str:
    """Run `python -m pipeline <stage>` in the pipeline's environment; its JSON output goes to XCom.

    The interpreter is BITLOOP_PIPELINE_PYTHON and the project BITLOOP_PROJECT_DIR, so the
    pipeline may live in another environment than Airflow.
    """
    python = os.environ.get("BITLOOP_PIPELINE_PYTHON", sys.executable)
    project = os.environ.get("BITLOOP_PROJECT_DIR", str(Path(__file__).resolve().parents[1]))
    command = [python, "-m", "pipeline", "--root", project, stage, *args]
    log.info("running %s", " ".join(command))
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    for line in done.stderr.splitlines():
        log.info(line)
    if done.returncode == EXIT_INVALID_DATA:
        raise AirflowFailException(f"stage {stage} rejected the data (no retry):\n{done.stderr[-4000:]}")
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} failed with exit code {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout
