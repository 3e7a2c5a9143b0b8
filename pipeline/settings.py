"""Runtime settings of the pipeline, read from the environment (never from params.yaml)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PREDICTION_LOG_SETTING = "BITLOOP_PREDICTION_LOG_URL"
PREDICTION_LOG_DEFAULT = ".bitloop/predictions.sqlite"


class PipelineSettings(BaseSettings):
    """Where the pipeline talks to; experiment parameters live in params.yaml instead."""

    model_config = SettingsConfigDict(extra="ignore", validate_by_name=True)

    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    """The MLflow tracking server and model registry (env MLFLOW_TRACKING_URI)."""
    prediction_log_url: str = Field(PREDICTION_LOG_DEFAULT, validation_alias=PREDICTION_LOG_SETTING)
    """The model server's prediction log, which the drift monitor reads (SQLite path or postgresql:// URL)."""
