"""Runtime settings of the pipeline, read from the environment (never from params.yaml)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class PipelineSettings(BaseSettings):
    """Where the pipeline talks to; experiment parameters live in params.yaml instead."""

    model_config = SettingsConfigDict(extra="ignore")

    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    """The MLflow tracking server and model registry (env MLFLOW_TRACKING_URI)."""
