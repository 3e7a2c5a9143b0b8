"""Runtime settings of the model server, from the environment (prefix BITLOOP_API_)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.params import (
    DriftParams,
    Params,
    ParamsError,
    PromoteParams,
    QualityParams,
    load_models,
    load_params,
)
from core.settings import PREDICTION_LOG_DEFAULT, PREDICTION_LOG_SETTING, local_mlflow


class ApiSettings(BaseSettings):
    """Where the model comes from, how it is served, and the limits that protect the server."""

    model_config = SettingsConfigDict(env_prefix="BITLOOP_API_", extra="ignore", validate_by_name=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1)] = 1
    mlflow_tracking_uri: str = Field(default_factory=local_mlflow, validation_alias="MLFLOW_TRACKING_URI")
    model_name: str | None = None
    """The default model: what /predict, /model and the other routes without a model name answer
    for; defaults to model.name in params_file."""
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """The registered models to serve, comma-separated, each under /models/<name>/...; empty: every
    model params_file declares (or the one BITLOOP_API_MODEL_NAME names, when it names another)."""
    max_loaded_models: Annotated[int, Field(ge=0)] = 0
    """At most this many models' versions in memory: past it the least recently used model is
    unloaded, and loaded again when it is next asked for; 0: no limit."""
    params_file: Path = Path("params.yaml")
    api_key: SecretStr | None = None
    """When set (not empty), /predict* and /admin/* need the header X-API-Key with this value."""
    require_api_key: bool = False
    """Refuse to start without an API key (the Kubernetes manifests set it: a pod never runs open)."""
    reload_interval_seconds: Annotated[float, Field(gt=0)] = 10.0
    registry_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    max_batch_rows: Annotated[int, Field(ge=1)] = 1000
    max_body_bytes: Annotated[int, Field(ge=1024)] = 2 * 1024 * 1024
    body_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    """A request body that has not fully arrived after this long is refused with 408."""
    max_error_ratio: Annotated[float, Field(gt=0, le=1)] = 0.25
    """A served version failing more than this share of records over a minute is reported not ready."""
    closed_categories: bool = True
    """Reject categories the model never saw in training (422) instead of scoring them as unknown."""
    micro_batch_max_size: Annotated[int, Field(ge=1)] = 64
    micro_batch_max_wait_ms: Annotated[float, Field(ge=0)] = 2.0
    inference_threads: Annotated[int, Field(ge=1)] = 1
    runtime: Literal["auto", "compiled", "sklearn"] = "auto"
    """What answers: auto = a version's ONNX graph when it passed parity, else scikit-learn; compiled =
    refuse a version without one; sklearn = always the scikit-learn pipeline."""
    prediction_log_url: str = Field(PREDICTION_LOG_DEFAULT, validation_alias=PREDICTION_LOG_SETTING)
    """The prediction log: a SQLite file path, or a postgresql:// URL every replica can share."""
    prediction_log_flush_rows: Annotated[int, Field(ge=1)] = 512
    prediction_log_flush_ms: Annotated[float, Field(gt=0)] = 50.0
    """The longest an answered prediction waits to be written: what a SIGKILL can lose."""
    prediction_log_max_pending_rows: Annotated[int, Field(ge=1)] = 100_000
    """Rows held in memory while the log cannot be written; beyond them rows wait on disk only."""
    prediction_log_spill_dir: Path | None = Path(".bitloop/prediction-spill")
    """Where each answered row is written before its answer leaves, until the log has it (a SIGKILL
    loses nothing); a server's segments left there are written by the next server to start on it.
    Empty: no spill, rows wait in memory only."""
    prediction_log_spill_max_bytes: Annotated[int, Field(ge=0)] = 1 << 30
    """Disk one server process may fill with rows the log has not taken; past it rows are dropped, counted."""
    prediction_log_shutdown_seconds: Annotated[float, Field(ge=0)] = 10.0
    """How long shutdown waits for the log to be written before it reports what it could not write."""
    prediction_log_retention_days: Annotated[float, Field(ge=0)] = Field(
        30.0, validation_alias="BITLOOP_PREDICTION_LOG_RETENTION_DAYS"
    )
    """Rows older than this are deleted, a few at a time; 0 keeps every row."""
    drain_seconds: Annotated[float, Field(ge=0)] = 0.0
    """After SIGTERM, how long /ready answers 503 while requests are still served, so a load
    balancer's health checks take the replica out before it stops; 0 stops at once."""
    log_failure: Literal["degrade", "refuse"] = "degrade"
    """When the log cannot keep up: keep answering and count dropped rows, or refuse predictions (503)."""
    challenger_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Share of /predict traffic answered by @challenger (A/B); 0 disables."""
    shadow: bool = False
    """Also score @challenger on every request without changing the response."""
    drift_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    """How often live inputs are compared with the champion's reference profile."""
    drift_window_seconds: Annotated[float, Field(gt=0)] = 3600.0
    """How far back the drift window reaches (at most drift.max_rows of params.yaml rows)."""

    quality_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    """How often live quality is computed from the prediction log and the outcomes sent to /feedback."""
    quality_window_seconds: Annotated[float, Field(gt=0)] = 86400.0
    """How far back the quality window reaches, in prediction time (at most quality.max_rows rows):
    longer than outcomes take to arrive."""

    @field_validator("models", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("api_key", "prediction_log_spill_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def startup_problem(self) -> str | None:
        """Why the server must not start with these settings, if it must not."""
        if self.require_api_key and self.api_key is None:
            return (
                "BITLOOP_API_REQUIRE_API_KEY is set but BITLOOP_API_API_KEY is empty or unset: give the "
                "server its key (Kubernetes: the Secret bitloop-api, key api-key), or opt out explicitly "
                "with BITLOOP_API_REQUIRE_API_KEY=false"
            )
        return None

    def monitoring_config(self, model: str | None = None) -> tuple[DriftParams, QualityParams, PromoteParams]:
        """A served model's `drift`, `quality` and `promote` sections of params.yaml (a model declared
        under `models:` has its own; any other model the default's), read once; their defaults when
        the file cannot be read. `model`: the default model."""
        models = self.declared_models()
        if not models:
            return DriftParams(), QualityParams(), PromoteParams()
        params = models.get(model or self.resolved_model_name(), next(iter(models.values())))
        return params.drift, params.quality, params.promote

    def served_models(self) -> list[str]:
        """The models this server serves, the default one first: BITLOOP_API_MODELS, else the one
        BITLOOP_API_MODEL_NAME names, else every model params_file declares."""
        default = self.resolved_model_name()
        if self.models:
            chosen = self.models
        elif self.model_name:
            chosen = [self.model_name]
        else:
            chosen = list(self.declared_models()) or [default]
        return [default, *(name for name in dict.fromkeys(chosen) if name != default)]

    def declared_models(self) -> dict[str, Params]:
        """Every model params_file declares, the default first; none when it cannot be read."""
        try:
            return load_models(self.params_file)
        except ParamsError:
            return {}

    def resolved_model_name(self) -> str:
        """The default model: BITLOOP_API_MODEL_NAME, else the first of BITLOOP_API_MODELS, else
        params.yaml's model.name."""
        if self.model_name:
            return self.model_name
        if self.models:
            return self.models[0]
        try:
            return load_params(self.params_file).model.name
        except ValueError as err:
            raise RuntimeError(f"set BITLOOP_API_MODEL_NAME or provide params.yaml ({err})") from None
