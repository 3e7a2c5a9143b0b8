"""An Airflow home per test session (SQLite metadata DB) whose DAG folder is the project's dags/."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.factories import PROJECT

DAGS = PROJECT / "dags"
# Airflow puts the DAG folder on sys.path when it parses DAG files; the tests do the same.
if str(DAGS) not in sys.path:
    sys.path.append(str(DAGS))
# Airflow reads its configuration when first imported: set it before any test module imports it.
_HOME = Path(tempfile.mkdtemp(prefix="bitloop-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
    return _HOME


def asset_events(dag_id: str, run_id: str) -> list[Any]:
    """The asset events a DAG run emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(AssetEvent).where(
                    AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id
                )
            )
        )


def starts_training(event: Any) -> bool:
    """Whether the training DAG's schedule fires on this asset event: its asset is one the training
    DAG is scheduled on, so the scheduler queues a training run for it (`dag.test()` runs no
    scheduler, so the tests check the link the scheduler follows)."""
    from airflow.dag_processing.dagbag import DagBag

    training = DagBag(dag_folder=str(DAGS / "training.py")).get_dag("training")
    assert training is not None, "the training DAG did not load"
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        asset = session.get(AssetModel, event.asset_id)
        assert asset is not None, f"no asset {event.asset_id}"
        name = asset.name
    condition = training.timetable.asset_condition
    return name in {asset.name for asset in getattr(condition, "objects", (condition,))}
