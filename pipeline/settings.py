"""Runtime settings of the pipeline, read from the environment (never from params.yaml)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from mlflow import MlflowClient


TAG = "bitloop."
"""The prefix of every tag the pipeline sets on MLflow runs and model versions."""


class PipelineSettings(BaseSettings):
    """Where the pipeline talks to; experiment parameters live in params.yaml instead."""

    model_config = SettingsConfigDict(extra="ignore")

    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    """The MLflow tracking server and model registry (env MLFLOW_TRACKING_URI)."""


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer."""


def connect(settings: PipelineSettings, timeout: float = 5.0) -> MlflowClient:
    """Point MLflow at the tracking server after checking it answers (its client retries for minutes)."""
    import mlflow
    from mlflow import MlflowClient

    uri = settings.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        try:
            httpx.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
        except httpx.HTTPError as err:
            raise TrackingUnavailable(
                f"MLflow is not reachable at {uri} ({err}). Start the local stack with `make up`, "
                "or point MLFLOW_TRACKING_URI at your tracking server."
            ) from None
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)
