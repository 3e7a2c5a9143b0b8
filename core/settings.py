"""Runtime settings of the pipeline, read from the environment (never from params.yaml)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PREDICTION_LOG_SETTING = "BITLOOP_PREDICTION_LOG_URL"
PREDICTION_LOG_DEFAULT = ".bitloop/predictions.sqlite"
HANDOFF_SETTING = "BITLOOP_STAGE_HANDOFF"
Handoff = Literal["workspace", "remote"]


def local_mlflow() -> str:
    """The local stack's MLflow, at its port setting (BITLOOP_MLFLOW_PORT, 5000 by default): a stack
    moved to another port (`BITLOOP_MLFLOW_PORT=5100 make up`) is the one every command finds."""
    return f"http://127.0.0.1:{os.environ.get('BITLOOP_MLFLOW_PORT', '5000')}"


def local_api() -> str:
    """The local stack's model server, at its port setting (BITLOOP_API_PORT, 8000 by default)."""
    return f"http://127.0.0.1:{os.environ.get('BITLOOP_API_PORT', '8000')}"


class PipelineSettings(BaseSettings):
    """Where the pipeline talks to; experiment parameters live in params.yaml instead."""

    model_config = SettingsConfigDict(extra="ignore", validate_by_name=True)

    mlflow_tracking_uri: str = Field(default_factory=local_mlflow)
    """The MLflow tracking server and model registry (env MLFLOW_TRACKING_URI; unset: the local
    stack's, at BITLOOP_MLFLOW_PORT)."""
    prediction_log_url: str = Field(PREDICTION_LOG_DEFAULT, validation_alias=PREDICTION_LOG_SETTING)
    """The model server's prediction log, which the drift monitor reads (SQLite path or postgresql:// URL)."""
    stage_handoff: Handoff = Field("workspace", validation_alias=HANDOFF_SETTING)
    """How a stage finds the earlier stages' outputs: in the project directory (`workspace`, one
    machine), or through the DVC remote (`remote`: workers that share no disk; pipeline/driver/handoff.py)."""
    dvc_remote_url: str = Field("", validation_alias="BITLOOP_DVC_REMOTE_URL")
    """The DVC remote every data version and stage output is pushed to, instead of .dvc/config's
    (e.g. `s3://bucket/bitloop`); empty: .dvc/config's."""
    api_url: str = Field(default_factory=local_api, validation_alias="BITLOOP_API_URL")
    """The model server the ground_truth DAG sends outcomes to (`POST /feedback`)."""
    api_key: SecretStr | None = Field(None, validation_alias="BITLOOP_API_API_KEY")
    """The model server's API key, when it has one."""
    prometheus_url: str = Field("", validation_alias="BITLOOP_PROMETHEUS_URL")
    """The Prometheus that scrapes every model server: the rollout decider reads each side's records,
    failures and model-call time there; empty: those SLOs wait (and a rollout times out)."""
    data_source_url: str = Field("", validation_alias="BITLOOP_DATA_SOURCE_URL")
    """The data-source service: training ingests from its world, the ground_truth DAG asks it for
    outcomes; empty: data.path of params.yaml."""
