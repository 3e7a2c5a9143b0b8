"""Typed view of `params.yaml`, the single home of experiment parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import InvalidInput

Task = Literal["classification", "regression"]
HIGHER_IS_BETTER = {
    "accuracy": True,
    "f1": True,
    "roc_auc": True,
    "log_loss": False,
    "brier": False,
    "ece": False,
    "rmse": False,
    "mae": False,
    "r2": True,
}


class ParamsError(InvalidInput, ValueError):
    """`params.yaml` is missing, malformed or inconsistent."""


RowPolicy = Literal["drop", "reject"]
"""What validation does with a row it finds a problem in: leave it out (counted), or refuse the batch."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: Literal["simulated", "sklearn", "csv"] = "simulated"
    path: str | None = None
    name: str | None = None
    target: str
    task: Task
    id_column: str | None = None
    rows: Annotated[int, Field(gt=0)] = 4000
    seed: int = 1
    drift: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    @model_validator(mode="after")
    def _source_needs(self) -> DataParams:
        if self.source == "csv" and not self.path:
            raise ValueError("data.source is 'csv' but data.path is empty: give a file path or URL")
        if self.source == "sklearn" and not self.name:
            raise ValueError("data.source is 'sklearn' but data.name is empty: e.g. 'diabetes'")
        return self


class ModelParams(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


class ValidateParams(_Section):
    min_rows: Annotated[int, Field(ge=1)] = 50
    max_missing_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    max_invalid_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    max_duplicate_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    min_class_rows: Annotated[int, Field(ge=1)] = 10
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    range_tolerance: Annotated[float, Field(ge=0.0)] = 1.0
    """Learned ranges are widened by this many times their width on each side (never below 0 for a
    column that has never been negative)."""
    unlabelled: RowPolicy = "drop"
    unparseable: RowPolicy = "drop"
    out_of_range: RowPolicy = "drop"
    duplicate_ids: RowPolicy = "drop"


class SplitParams(_Section):
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    salt: str = "bitloop"


class CandidateParams(BaseModel):
    """One candidate model: its kind plus the estimator's own keyword arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: Literal["linear", "random_forest", "hist_gradient_boosting"]

    @property
    def estimator_params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainParams(_Section):
    seed: int = 42
    max_categories: Annotated[int, Field(ge=2)] = 25
    candidates: Annotated[dict[str, CandidateParams], Field(min_length=1)]


class EvaluateParams(_Section):
    importance_repeats: Annotated[int, Field(ge=1)] = 5


class PromoteParams(_Section):
    metric: str = "auto"
    margin: Annotated[float, Field(ge=0.0)] = 0.0
    floors: dict[Task, dict[str, float]] = Field(default_factory=dict)
    recent_rows: Annotated[int, Field(ge=1)] | None = 500
    """Candidate and champion are compared on the holdout rows of the newest batches, whole batches
    newest first until at least this many rows (None: the whole holdout)."""

    def primary_metric(self, task: Task) -> str:
        if self.metric != "auto":
            return self.metric
        return "roc_auc" if task == "classification" else "rmse"


class DriftParams(_Section):
    """Drift detection defaults: per-feature tests, and when the whole dataset counts as drifted."""

    min_samples: Annotated[int, Field(ge=10)] = 200
    """Rows (non-missing values per feature) needed before any verdict."""
    large_sample: Annotated[int, Field(ge=10)] = 1000
    """Up to this many values: KS / chi-squared p-values; above it: Wasserstein / Jensen-Shannon."""
    p_value: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    distance_threshold: Annotated[float, Field(gt=0.0)] = 0.1
    drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    """Dataset drift when at least this share of the tested features drift."""
    max_rows: Annotated[int, Field(ge=10)] = 5000
    """Newest prediction-log rows compared per evaluation."""


class QualityParams(_Section):
    """Live quality from true outcomes (the model server's /performance, gauges and alerts)."""

    min_labelled: Annotated[int, Field(ge=1)] = 100
    """Labelled predictions a version needs before its realized figures are reported (and logged
    ones before its estimated figures are)."""
    max_drop: Annotated[float, Field(ge=0.0)] = 0.05
    """Alert when the primary metric (promote.metric) is worse than the version's holdout figure
    by more than this; promote.floors apply to live figures as well."""
    max_rows: Annotated[int, Field(ge=10)] = 20_000
    """Newest prediction-log rows read per evaluation."""


Signal = Literal["drift", "quality", "schedule"]


class RetrainParams(_Section):
    """When training runs, and on what: the retraining policy."""

    triggers: tuple[Signal, ...] = ("drift", "quality", "schedule")
    """The signals that start training: dataset drift (drift_monitor), live quality past its limits
    (ground_truth), the training DAG's own schedule. A manual run always runs."""
    cooldown_hours: Annotated[float, Field(ge=0.0)] = 1.0
    """At most one drift- or quality-triggered run per this many hours; 0: no cooldown."""
    window_batches: Annotated[int, Field(ge=1)] | None = 2
    """Train on the newest this many accepted batches (null: all of them), so a shifted world is
    learned in a bounded number of retrains instead of being outvoted by old data."""


class RolloutSlo(_Section):
    """What a canary must show against the stable version on the same traffic."""

    max_error_ratio_increase: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    """The canary's share of records it failed to score may exceed the stable version's by this much."""
    max_latency_ratio: Annotated[float, Field(ge=1.0)] = 2.0
    """The canary's p95 model-call time may be at most this many times the stable version's."""
    min_latency_increase_ms: Annotated[float, Field(ge=0.0)] = 10.0
    """...unless it is slower by less than this: 2x of 2 ms is noise on a busy machine, 2x of 200 ms
    is not."""
    max_psi: Annotated[float, Field(gt=0.0)] = 0.2
    """Population stability index of the canary's predictions against the stable version's."""
    max_quality_drop: Annotated[float, Field(ge=0.0)] = 0.02
    """Live promote.metric may be this much worse than the stable version's (once both have
    quality.min_labelled outcomes; skipped, and said so, before)."""


class RolloutParams(_Section):
    """How a new champion earns its traffic: a canary share, judged against the stable version."""

    share: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Share of traffic the canary answers; 0: a promotion moves all traffic at once."""
    min_requests: Annotated[int, Field(ge=1)] = 500
    """Records the canary must answer before it can be promoted."""
    max_minutes: Annotated[float, Field(gt=0.0)] = 60.0
    """A rollout still undecided after this long is rolled back."""
    slo: RolloutSlo = Field(default_factory=RolloutSlo)


class Params(_Section):
    data: DataParams
    model: ModelParams
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    split: SplitParams = Field(default_factory=SplitParams)
    train: TrainParams
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    promote: PromoteParams = Field(default_factory=PromoteParams)
    drift: DriftParams = Field(default_factory=DriftParams)
    quality: QualityParams = Field(default_factory=QualityParams)
    retrain: RetrainParams = Field(default_factory=RetrainParams)
    rollout: RolloutParams = Field(default_factory=RolloutParams)

    @model_validator(mode="after")
    def _metric_known(self) -> Params:
        metric = self.promote.primary_metric(self.data.task)
        task_metrics = TASK_METRICS[self.data.task]
        if metric not in task_metrics:
            raise ValueError(
                f"promote.metric {metric!r} is not a {self.data.task} metric "
                f"(choose one of {sorted(task_metrics)})"
            )
        for name in self.promote.floors.get(self.data.task, {}):
            if name not in task_metrics:
                raise ValueError(
                    f"promote.floors.{self.data.task}.{name} is not a "
                    f"{self.data.task} metric (choose from {sorted(task_metrics)})"
                )
        return self


TASK_METRICS: dict[Task, tuple[str, ...]] = {
    "classification": ("accuracy", "f1", "roc_auc", "log_loss", "brier", "ece"),
    "regression": ("rmse", "mae", "r2"),
}


def parse_params(raw: dict[str, Any], origin: str = "params.yaml") -> Params:
    """Validate a params mapping, turning pydantic errors into one readable message."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']}")
        raise ParamsError(f"{origin} is invalid:\n" + "\n".join(lines)) from None


def load_params(path: Path, model: str | None = None) -> Params:
    """Read and validate `params.yaml`: the params of `model`, by default the default one (`model.name`)."""
    declared = load_models(path)
    if model is None:
        return next(iter(declared.values()))
    if model not in declared:
        raise ParamsError(f"{path} declares no model {model!r}; it declares {', '.join(declared)}")
    return declared[model]


def load_models(path: Path) -> dict[str, Params]:
    """Every model `params.yaml` declares, by registered name, the default model first."""
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the project directory or pass --root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of sections (data, model, train, ...)")
    return declared_models(raw, origin=str(path))


# --- many models ----------------------------------------------------------------------------------

MODEL_SECTIONS = tuple(field.alias or name for name, field in Params.model_fields.items() if name != "model")
"""The sections a declared model may override (every one but `model`: its name is its key)."""
REPLACED_WHOLE = {("train", "candidates"), ("validate", "ranges"), ("promote", "floors")}
"""Named sets a model declares as a whole: its own candidates, ranges and floors, never the defaults'
with its own added."""


def _merged(defaults: dict[str, Any], override: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """`defaults` with `override` laid over it key by key; a mapping in both is merged, except the named
    sets of REPLACED_WHOLE, and anything else in `override` replaces the default."""
    merged = dict(defaults)
    for key, value in override.items():
        here = (*path, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and here not in REPLACED_WHOLE:
            merged[key] = _merged(merged[key], value, here)
        else:
            merged[key] = value
    return merged


def declared_models(raw: dict[str, Any], origin: str = "params.yaml") -> dict[str, Params]:
    """Every model the project declares, by registered name, the default model (`model.name`) first.

    The top-level sections are the defaults and the default model's own; each entry of `models:`
    is another model, its key its registered name, its value the sections where it differs. Without
    `models:` the project has one model, as it always had."""
    raw = dict(raw)
    others = raw.pop("models", None) or {}
    if not isinstance(others, dict):
        raise ParamsError(f"{origin}: `models` must map each model's name to what it overrides")
    default = parse_params(raw, origin)
    declared = {default.model.name: default}
    for name, override in others.items():
        where = f"{origin}, models.{name}"
        if name == default.model.name:
            raise ParamsError(
                f"{where}: {name!r} is the default model (model.name), set by the top-level sections"
            )
        override = override or {}
        if not isinstance(override, dict):
            raise ParamsError(f"{where}: must map sections ({', '.join(MODEL_SECTIONS)}) to what differs")
        unknown = sorted(set(override) - set(MODEL_SECTIONS))
        if unknown:
            raise ParamsError(
                f"{where}: {', '.join(unknown)} cannot be set per model ({', '.join(MODEL_SECTIONS)} can)"
            )
        declared[str(name)] = parse_params({**_merged(raw, override), "model": {"name": name}}, where)
    return declared
