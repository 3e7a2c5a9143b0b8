"""Loading a registry version into a `ServedModel`: the scikit-learn pipeline, its schema, profile,
calibration and metrics, and its compiled graph when it passed parity at registration and agrees
with scikit-learn on the stored sample in this server too."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from api.model import ModelLoadError, ServedModel
from api.schemas import build_batch_model, build_record_model
from core.calibration import Calibration
from core.compiled import Compilation, CompiledModel
from core.profile import ReferenceProfile
from core.registry import (
    COMPILED_ARTIFACT,
    Tags,
    download_model,
    run_calibration,
    run_file,
    run_profile,
    run_schema,
)
from core.serialization import UntrustedModel, load_sklearn_model

log = logging.getLogger(__name__)

SERVER_PARITY_TOLERANCE = 1e-5
"""How far the compiled graph may stray from scikit-learn on a version's stored sample, in this server."""
Runtime = Literal["auto", "compiled", "sklearn"]


def load_version(
    client: Any, name: str, version: str, *, closed_categories: bool, max_rows: int, runtime: Runtime = "auto"
) -> ServedModel:
    """Load one registry version: the sklearn pipeline, its feature schema, its run's metrics and, unless
    `runtime` is "sklearn", its compiled graph when the version passed parity."""
    try:
        mv = client.get_model_version(name, version)
        if mv.run_id is None:
            raise ModelLoadError(f"version {version} of {name!r} has no run: its feature schema is unknown")
        with tempfile.TemporaryDirectory(prefix="bitloop-serve-") as scratch:
            local = download_model(client, name, version, Path(scratch))
            estimator = load_sklearn_model(local)
            example = _input_example(str(local))
        schema = run_schema(client, mv.run_id)
        profile = _reference_profile(client, mv.run_id)
        calibration = _calibration(client, mv.run_id) if schema.task == "classification" else None
        metrics = dict(client.get_run(mv.run_id).data.metrics)
    except ModelLoadError:
        raise
    except UntrustedModel as err:
        raise ModelLoadError(
            f"refusing {name!r} version {version}: {err}",
            public="it is not a skops file of numpy, scikit-learn and SciPy types only",
        ) from err
    except Exception as err:  # anything MLflow, skops or pydantic raises means "cannot serve this version"
        raise ModelLoadError(f"cannot load {name!r} version {version}: {type(err).__name__}: {err}") from err
    record = build_record_model(schema, closed_categories)
    model = ServedModel(
        name=name,
        version=str(version),
        run_id=mv.run_id,
        estimator=estimator,
        schema=schema,
        metrics=metrics,
        data_version=mv.tags.get(Tags.DATA_VERSION),
        record_model=record,
        batch_model=build_batch_model(record, max_rows),
        profile=profile,
        calibration=calibration,
    )
    model.check(example)
    _attach_compiled(model, client, Compilation.from_tags(dict(mv.tags)), runtime, example)
    log.info(
        "model version loaded",
        extra={
            "model": name,
            "version": model.version,
            "runtime": model.runtime,
            "why": model.runtime_detail,
        },
    )
    return model


def _attach_compiled(
    model: ServedModel,
    client: Any,
    compilation: Compilation | None,
    runtime: Runtime,
    example: pd.DataFrame | None,
) -> None:
    """Serve the version's ONNX graph when it passed parity at registration and agrees with scikit-learn
    on the stored sample in this server too; with runtime "compiled", refuse the version otherwise."""
    if runtime == "sklearn":
        model.runtime_detail = "scikit-learn, as BITLOOP_API_RUNTIME=sklearn asks"
        return
    try:
        if compilation is None:
            raise ValueError("the version was registered without a compiled graph")
        if compilation.status == "error":
            raise ValueError(f"it could not be compiled: {compilation.error}")
        if not compilation.servable:
            raise ValueError(
                f"its compiled graph failed parity (max difference {compilation.max_abs_diff}, "
                f"{compilation.label_mismatches} labels differ)"
            )
        compiled = CompiledModel(run_file(client, str(model.run_id), COMPILED_ARTIFACT), model.schema)
        records = model.sample_records(example)
        expected = model._values(records)
        got = compiled.run_records(records)
        scale = 1.0 if model.schema.task == "classification" else max(float(np.abs(expected).max()), 1.0)
        if got.shape != expected.shape or not np.allclose(
            got, expected, rtol=0, atol=SERVER_PARITY_TOLERANCE * scale
        ):
            raise ValueError(
                "its compiled graph disagrees with scikit-learn on the stored sample in this server"
            )
    except Exception as err:  # any failure here leaves a version servable with scikit-learn
        reason = f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err)
        if runtime == "compiled":
            raise ModelLoadError(
                f"version {model.version} has no usable compiled runtime: {reason[:300]}",
                public="BITLOOP_API_RUNTIME=compiled, and it has no compiled graph that passed parity",
            ) from err
        model.runtime_detail = f"scikit-learn: {reason[:300]}"
        return
    model.compiled = compiled
    difference = compilation.max_abs_diff
    model.runtime_detail = (
        f"ONNX Runtime: parity passed on {compilation.rows} holdout rows (max difference {difference})"
    )


def _input_example(model_dir: str) -> pd.DataFrame | None:
    """The input example logged with the model (MLflow keeps it beside the model files)."""
    from mlflow.models import Model

    try:
        example = Model.load(model_dir).load_input_example(model_dir)
    except Exception as err:  # an example is optional; the profile's sample is checked regardless
        log.warning("the model's input example cannot be read", extra={"error": str(err)[:300]})
        return None
    return example if isinstance(example, pd.DataFrame) else None


def _calibration(client: Any, run_id: str) -> Calibration | None:
    """The run's calibration map; a version without one is estimated from its raw probabilities."""
    try:
        return run_calibration(client, run_id)
    except Exception as err:  # MLflow raises several types for a missing artifact
        log.info(
            "no calibration map: the quality estimate reads raw probabilities", extra={"error": str(err)}
        )
        return None


def _reference_profile(client: Any, run_id: str) -> ReferenceProfile | None:
    """The run's reference profile; a model without one is served, with drift detection off."""
    try:
        return run_profile(client, run_id)
    except Exception as err:  # MLflow raises several types for a missing artifact
        log.warning("no reference profile: drift detection is off for this model", extra={"error": str(err)})
        return None
