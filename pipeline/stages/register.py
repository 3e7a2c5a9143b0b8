"""Log every candidate to MLflow and register those that pass the absolute floors.

Idempotent: a candidate is identified by a fingerprint of its model file and the dataset
version, so re-running the stage reuses the existing run and model version.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature

from core.model_metrics import best_candidate, floor_failures
from core.params import Params
from core.registry import (
    COMPILED_ARTIFACT,
    COMPILED_TAG,
    GIT_COMMIT_TAG,
    SCHEMA_ARTIFACT,
    TAG,
    Tags,
    connect,
)
from core.schema import BATCH_COLUMN, DatasetSchema
from core.serialization import SKOPS, trusted_types
from core.settings import PipelineSettings
from pipeline.data.store import DatasetVersion
from pipeline.stages.candidates import load_candidate
from pipeline.stages.compile_onnx import compile_candidate
from pipeline.stages.provenance import git_commit, log_reproduction_record
from pipeline.stages.reports import RegisteredCandidate, Registration
from pipeline.workspace import Workspace, read_json

log = logging.getLogger(__name__)
REQUIREMENTS = ("scikit-learn", "numpy", "pandas", "scipy", "skops")


def fingerprint(model_file: Path, data: DatasetVersion, schema: DatasetSchema) -> str:
    digest = hashlib.sha256(model_file.read_bytes())
    digest.update(f"{data.md5}|{schema.fingerprint()}".encode())
    return digest.hexdigest()[:32]


def split_digests(workspace: Workspace) -> bytes:
    """The train and test files' digests, read once for every candidate's `trained_on`."""
    return b"".join(
        hashlib.sha256(f.read_bytes()).digest() for f in (workspace.train_file, workspace.test_file)
    )


def trained_on(model_file: Path, split: bytes, schema: DatasetSchema) -> str:
    """What a candidate is, whatever the data version is called: its model file, its schema and the
    train and test rows it was fitted and scored on (`split_digests`)."""
    digest = hashlib.sha256(model_file.read_bytes())
    digest.update(split)
    digest.update(schema.fingerprint().encode())
    return digest.hexdigest()[:32]


def pip_requirements() -> list[str]:
    """Pinned requirements of a served model, without slow environment inference."""
    return [f"{name}=={package_version(name)}" for name in REQUIREMENTS]


def _input_example(features: pd.DataFrame) -> pd.DataFrame:
    complete = features.dropna()
    return (complete if len(complete) >= 3 else features).head(5).reset_index(drop=True)


def _log_candidate(
    name: str,
    params: Params,
    workspace: Workspace,
    schema: DatasetSchema,
    data: DatasetVersion,
    metrics: dict[str, float],
    tags: dict[str, str],
) -> tuple[str, str, dict[str, str]]:
    """One MLflow run: params, metrics, data inputs, artefacts, the model and its compiled graph.

    Returns the run id, the model URI and the compilation's tags."""
    model = load_candidate(workspace.candidate_file(name))
    train = pd.read_parquet(workspace.train_file)
    test = pd.read_parquet(workspace.test_file)
    candidate = params.train.candidates[name]
    with warnings.catch_warnings(), mlflow.start_run(run_name=f"{name}-{data.label}", tags=tags) as run:
        # Integer class labels are outputs, never inputs with missing values: MLflow's hint is noise.
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
        mlflow.log_params(
            {
                "candidate": name,
                "kind": candidate.kind,
                **candidate.estimator_params,
                "train.seed": params.train.seed,
                "train.max_categories": params.train.max_categories,
                "split.test_fraction": params.split.test_fraction,
                "data.source": params.data.source,
                "data.version": data.label,
                "train_rows": len(train),
                "test_rows": len(test),
            }
        )
        mlflow.log_metrics(metrics)
        for split_name, frame, context in (("train", train, "training"), ("test", test, "evaluation")):
            dataset = from_pandas(
                frame.drop(columns=["row_id", BATCH_COLUMN], errors="ignore"),
                name=f"{params.model.name}-{split_name}",
                targets=schema.target,
                digest=data.md5.removesuffix(".dir"),
            )
            mlflow.log_input(dataset, context=context, tags={"version": data.label, "dvc_md5": data.md5})
        mlflow.log_artifacts(str(workspace.evaluation_dir / name), artifact_path="evaluation")
        mlflow.log_artifact(str(workspace.profile_file))
        mlflow.log_artifact(str(workspace.validation_report))
        if workspace.contract_file.is_file():
            mlflow.log_artifact(str(workspace.contract_file), artifact_path="data")
        log_reproduction_record(workspace.root)
        mlflow.log_dict(schema.model_dump(mode="json"), SCHEMA_ARTIFACT)
        example = _input_example(test[schema.feature_names])
        signature = infer_signature(example, model.predict(example))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            serialization_format=SKOPS,  # the only format the model server loads
            skops_trusted_types=trusted_types(model),
        )
        mlflow.set_tag(Tags.MODEL_URI, info.model_uri)
        graph, compilation = compile_candidate(model, schema, test)
        if graph is not None:
            with tempfile.TemporaryDirectory(prefix="bitloop-compiled-") as scratch:
                path = Path(scratch) / Path(COMPILED_ARTIFACT).name
                path.write_bytes(graph)
                mlflow.log_artifact(str(path), artifact_path=str(Path(COMPILED_ARTIFACT).parent))
        mlflow.set_tags(compilation.tags())
        log.info(
            "compiled",
            extra={"candidate": name, **compilation.model_dump(exclude_none=True, exclude={"error"})},
        )
        return run.info.run_id, info.model_uri, compilation.tags()


def register(params: Params, workspace: Workspace, settings: PipelineSettings) -> dict[str, Any]:
    """Log each candidate (reusing identical earlier runs) and register those passing the floors."""
    client = connect(settings)
    model_name = params.model.name
    experiment = mlflow.set_experiment(model_name)
    schema = DatasetSchema.read(workspace.schema_file)
    data = DatasetVersion.from_file(workspace.version_file)
    evaluation = read_json(workspace.metrics_file)
    commit = git_commit(workspace.root)

    entries: dict[str, RegisteredCandidate] = {}
    split = split_digests(workspace)
    for name in params.train.candidates:
        metrics = evaluation["candidates"][name]
        same = trained_on(workspace.candidate_file(name), split, schema)
        entries[name] = _unchanged(client, model_name, name, same, data, metrics) or _register_candidate(
            client,
            experiment.experiment_id,
            name,
            params,
            workspace,
            schema,
            data,
            metrics,
            tags={
                Tags.CANDIDATE: name,
                Tags.FINGERPRINT: fingerprint(workspace.candidate_file(name), data, schema),
                Tags.TRAINED_ON: same,
                Tags.DATA_VERSION: data.label,
                Tags.DATA_MD5: data.md5,
                Tags.TASK: schema.task,
                Tags.SCHEMA: schema.fingerprint(),
                GIT_COMMIT_TAG: commit,
            },
        )

    primary = params.promote.primary_metric(schema.task)
    eligible = {n: e.metrics for n, e in entries.items() if e.version is not None}
    best = best_candidate(eligible, primary) if eligible else None
    return Registration(
        model_name=model_name,
        data_version=data,
        primary_metric=primary,
        best=best,
        git_commit=commit,
        candidates=entries,
    ).write(workspace.registered_file)


def _unchanged(
    client: MlflowClient,
    model_name: str,
    name: str,
    same: str,
    data: DatasetVersion,
    metrics: dict[str, float],
) -> RegisteredCandidate | None:
    """The version registered earlier for the same model on the same rows, under an earlier data label:
    nothing new. (Under this very label it is a forced re-run, which registering reuses byte for byte.)"""
    earlier = client.search_model_versions(f"name = '{model_name}' and tags.`{Tags.TRAINED_ON}` = '{same}'")
    if not earlier or any(v.tags.get(Tags.DATA_VERSION) == data.label for v in earlier):
        return None
    found_version = max(earlier, key=lambda v: int(v.version))
    since = found_version.tags.get(Tags.DATA_VERSION, "an earlier version")
    log.info(
        "unchanged since an earlier registration: nothing new registered",
        extra={"candidate": name, "version": found_version.version, "data_version": since},
    )
    return RegisteredCandidate(
        run_id=str(found_version.run_id),
        version=str(found_version.version),
        metrics=metrics,
        floor_failures=[],
        unchanged_since=since,
    )


def _register_candidate(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    params: Params,
    workspace: Workspace,
    schema: DatasetSchema,
    data: DatasetVersion,
    metrics: dict[str, float],
    tags: dict[str, str],
) -> RegisteredCandidate:
    """Log the candidate's run (or reuse the finished run of the same fingerprint) and register it
    when it passes the floors (or find the version already registered from that run)."""
    model_name = params.model.name
    found = client.search_runs(
        [experiment_id],
        f"tags.`{Tags.FINGERPRINT}` = '{tags[Tags.FINGERPRINT]}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    if found:
        run_id, model_uri = found[0].info.run_id, found[0].data.tags[Tags.MODEL_URI]
        compiled = {k: v for k, v in found[0].data.tags.items() if k.startswith(COMPILED_TAG)}
        log.info("reusing identical run", extra={"candidate": name, "run_id": run_id})
    else:
        run_id, model_uri, compiled = _log_candidate(name, params, workspace, schema, data, metrics, tags)
        log.info("logged run", extra={"candidate": name, "run_id": run_id})
    failures = floor_failures(metrics, params.promote.floors.get(schema.task, {}))
    version = None
    if failures:
        log.warning(
            "candidate misses the floors: not registered", extra={"candidate": name, "failures": failures}
        )
    else:
        existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
        if existing:
            version = existing[0].version
        else:
            version_tags = {k: v for k, v in {**tags, **compiled}.items() if k.startswith(TAG)}
            version_tags.update({Tags.METRIC + k: f"{v:.6f}" for k, v in metrics.items()})
            version = mlflow.register_model(model_uri, model_name, tags=version_tags).version
            log.info("registered", extra={"candidate": name, "model": model_name, "version": version})
    return RegisteredCandidate(
        run_id=run_id, version=str(version) if version else None, metrics=metrics, floor_failures=failures
    )
