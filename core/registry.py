"""The MLflow contract in one place: the tracking connection, the aliases, the tags and artefact
names bitloop writes, and reading what a registered version carries.

Every module that talks to the registry goes through here, the model server included, so a name
is spelled once and a missing alias means the same thing everywhere. Light to import: MLflow is
imported inside the functions that use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from core.artifacts import CALIBRATION_ARTIFACT as CALIBRATION_ARTIFACT  # part of the contract: re-exported
from core.artifacts import COMPILED_ARTIFACT as COMPILED_ARTIFACT
from core.artifacts import PROFILE_ARTIFACT as PROFILE_ARTIFACT
from core.artifacts import RECORD_DIR as RECORD_DIR
from core.artifacts import SCHEMA_ARTIFACT as SCHEMA_ARTIFACT
from core.calibration import Calibration
from core.errors import ServiceUnavailable
from core.logs import redact
from core.profile import ReferenceProfile
from core.schema import DatasetSchema
from core.settings import PipelineSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION, CHALLENGER, PREVIOUS, CANARY = "champion", "challenger", "previous", "canary"
ALIASES = (CHAMPION, CANARY, CHALLENGER, PREVIOUS)
SERVED_ALIASES = (CHAMPION, CANARY, CHALLENGER)
"""The aliases the model server answers with (the canary's share, A/B and shadow)."""

TAG = "bitloop."
"""The prefix of every tag bitloop sets on MLflow runs and model versions."""
GIT_COMMIT_TAG = "mlflow.source.git.commit"
COMPILED_TAG = TAG + "compiled."
"""The prefix of the compilation's outcome and parity figures on a run and its model versions."""


class Tags:
    """The tags bitloop sets; `TAG + name` for the few built from a metric's name."""

    CANDIDATE = TAG + "candidate"
    FINGERPRINT = TAG + "fingerprint"
    TRAINED_ON = TAG + "trained_on"
    """The model file, schema and exact train/test rows a version was fitted and scored on: a run whose
    data version changed (a withdrawal, say) but whose rows did not registers nothing new."""
    DATA_VERSION = TAG + "data_version"
    DATA_MD5 = TAG + "data_md5"
    TASK = TAG + "task"
    SCHEMA = TAG + "schema"
    MODEL_URI = TAG + "model_uri"
    METRIC = TAG + "metric."
    DECISION = TAG + "decision"
    DECISION_REASON = TAG + "decision_reason"
    KIND = TAG + "kind"
    SUMMARY_OF = TAG + "summary_of"
    DRIFT_OF = TAG + "drift_of"
    DATASET_DRIFT = TAG + "dataset_drift"
    CHAMPION_VERSION = TAG + "champion_version"
    CANARY_VERSION = TAG + "canary_version"
    """On a training summary run: the version its promotion started a rollout for."""
    ROLLOUT_OUTCOME = TAG + "rollout.outcome"
    ROLLOUT_REASON = TAG + "rollout.reason"
    # A rollout's terms, on the canary's version (core.rollout.Terms).
    ROLLOUT_SHARE = TAG + "rollout.share"
    ROLLOUT_MIN_REQUESTS = TAG + "rollout.min_requests"
    ROLLOUT_MAX_MINUTES = TAG + "rollout.max_minutes"
    ROLLOUT_EXPECTED_PSI = TAG + "rollout.expected_psi"
    ROLLOUT_STABLE = TAG + "rollout.stable"
    ROLLOUT_STARTED_AT = TAG + "rollout.started_at"
    ROLLOUT_FIGURES = TAG + "rollout.figures"
    """On the canary's version: the evidence its rollout was decided on (JSON)."""
    ROLLOUT_LAST = TAG + "rollout.last"
    """On the registered model: the last rollout's outcome, reason and time (JSON)."""
    RETRAIN_LAST_TRIGGER = TAG + "retrain.last_trigger"
    """On the registered model: when each retraining trigger last started a run (the cooldown)."""


# What MLflow answers for a model or alias that does not exist (the code varies by server version).
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


class TrackingUnavailable(ServiceUnavailable, RuntimeError):
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
                redact(
                    f"MLflow is not reachable at {uri} ({err}). Start the local stack with `make up`, "
                    "or point MLFLOW_TRACKING_URI at your tracking server."
                )
            ) from None
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def fail_fast_client(uri: str, timeout_seconds: float) -> MlflowClient:
    """A client for a long-running server: no retries, a short timeout; it asks again on its next tick.

    MLflow reads these settings from the environment, so they hold for the whole process.
    """
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_seconds)))
    return MlflowClient(uri)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind `name@alias`, or None when the model or the alias does not exist.

    Any other failure (the server down, a permission) raises: it is not the same as "none yet".
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in MISSING:
            return None
        raise


def download_model(client: MlflowClient, name: str, version: str, dst: Path) -> Path:
    """A registered version's model folder, downloaded from the client's own server into `dst`.

    Read it with `core.serialization.load_sklearn_model`, never with MLflow's loaders.
    """
    import mlflow

    location = client.get_model_version_download_uri(name, version)
    return Path(
        mlflow.artifacts.download_artifacts(location, dst_path=str(dst), tracking_uri=client.tracking_uri)
    )


def _artifact(client: MlflowClient, run_id: str, path: str) -> Any:
    """One JSON artefact of a run, from the client's own server (MLflow's global URI may differ)."""
    return json.loads(run_file(client, run_id, path))


def run_file(client: MlflowClient, run_id: str, path: str) -> bytes:
    """One artefact of a run as bytes, from the client's own server."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="bitloop-artifact-") as scratch:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=scratch, tracking_uri=client.tracking_uri
        )
        return Path(local).read_bytes()


def run_schema(client: MlflowClient, run_id: str) -> DatasetSchema:
    """The feature schema logged with a training run."""
    return DatasetSchema.model_validate(_artifact(client, run_id, SCHEMA_ARTIFACT))


def run_calibration(client: MlflowClient, run_id: str) -> Calibration:
    """The calibration map a classifier's evaluation fitted on its holdout (`core.calibration`)."""
    return Calibration.model_validate(_artifact(client, run_id, CALIBRATION_ARTIFACT))


def run_profile(client: MlflowClient, run_id: str) -> ReferenceProfile:
    """The reference profile logged with a training run (what drift detection compares against)."""
    return ReferenceProfile.model_validate(_artifact(client, run_id, PROFILE_ARTIFACT))
