"""Check every raw batch against the data contract and build the prepared dataset.

The first batch that passes its own checks fixes the contract (feature kinds, classes); each later
batch is judged by the contract learned from the batches accepted before it, including the value
range of every numeric column. Rows with a missing label, an unparseable value or a value out of
range are handled by their `validate.*` policy: left out and counted (`drop`), or the batch is
refused (`reject`); a column with more bad values than `validate.max_invalid_rate` refuses the
batch either way. A refused batch is quarantined (kept in the raw store, left out of the
dataset) until it is withdrawn; when the newest batch is refused the stage fails with a readable
report, so nothing downstream runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from core.errors import InvalidData
from core.params import DataParams, Params, ValidateParams
from core.schema import (
    BATCH_COLUMN,
    DatasetSchema,
    infer_schema,
    normalise_missing,
    row_ids,
    with_categories,
)
from pipeline.data.contract import DataContract, parse_labels
from pipeline.data.sources import expected_ranges
from pipeline.data.store import read_raw_batches, withdrawn_batches
from pipeline.stages.validation_checks import BatchReport, Problem, ValidationReport, check_batch
from pipeline.workspace import Workspace, write_json

log = logging.getLogger(__name__)


class ValidationFailed(InvalidData, RuntimeError):
    """The newest batch (or the dataset as a whole) is not fit for training."""


def effective_rules(params: Params) -> ValidateParams:
    """params.yaml's rules plus the ranges the source guarantees (params.yaml wins on a clash)."""
    ranges = {**expected_ranges(params.data), **params.validate_.ranges}
    return params.validate_.model_copy(update={"ranges": ranges})


def validate(params: Params, workspace: Workspace) -> ValidationReport:
    """Validate all raw batches, write the report, and on success the prepared dataset, its schema
    and the data contract. Each batch is judged by the contract learned from the batches accepted
    before it; the first one by the schema inferred from its own usable rows."""
    rules = effective_rules(params)
    batches = read_raw_batches(workspace.raw_dir)
    if not batches:
        raise ValidationFailed(f"the raw store {workspace.raw_dir} is empty: run `python -m pipeline ingest`")
    judged = _judge_batches(batches, withdrawn_batches(workspace.raw_dir), params.data, rules)
    notes, accepted = judged.notes, judged.accepted

    window = params.retrain.window_batches
    if window is not None and len(accepted) > window:
        notes.append(
            f"training window: the newest {window} of the {len(accepted)} accepted batches "
            "(retrain.window_batches)"
        )
        accepted = accepted[-window:]
    dataset = pd.concat(accepted, ignore_index=True) if accepted else pd.DataFrame()
    contract = judged.contract
    schema = None if contract is None else contract.dataset
    dataset_errors = [] if schema is None else _dataset_problems(dataset, schema, rules)
    if schema is not None:
        ignored = sorted(set(params.validate_.ranges) - set(schema.numeric))
        if ignored:
            notes.append(f"validate.ranges for columns not among the numeric features: {ignored}")

    in_use = [b for b in judged.reports if b.withdrawn is None]
    passed = bool(in_use) and in_use[-1].ok and not dataset_errors
    for b in in_use[:-1]:
        if not b.ok:
            notes.append(
                f"{b.batch} is quarantined: kept in the raw store, left out of the dataset "
                f"(`python -m pipeline batches withdraw {b.batch}` records that for good)"
            )
    if not in_use:
        notes.append("every batch is withdrawn: ingest a new one")
    report = ValidationReport(
        passed=passed, batches=judged.reports, dataset_errors=dataset_errors, notes=notes, rows=len(dataset)
    )
    if not passed or contract is None or schema is None:
        write_json(workspace.validation_report, report.as_dict())
        raise ValidationFailed(report.render())

    unique = dataset.drop_duplicates("row_id", keep="first").reset_index(drop=True)
    report.repeated = len(dataset) - len(unique)
    report.rows, dataset = len(unique), unique
    write_json(workspace.validation_report, report.as_dict())
    schema = with_categories(schema, dataset)
    workspace.prepared_dir.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(workspace.dataset_file, index=False)
    write_json(workspace.schema_file, schema.model_dump(mode="json"))
    write_json(
        workspace.contract_file, contract.model_copy(update={"dataset": schema}).model_dump(mode="json")
    )
    log.info("validation passed", extra={"rows": len(dataset), "batches": len(judged.reports)})
    return report


@dataclass
class Judged:
    """Every batch judged in order (`_judge_batches`)."""

    contract: DataContract | None
    """Learned from the accepted batches; None when none was accepted."""
    reports: list[BatchReport]
    accepted: list[pd.DataFrame]
    """The accepted batches' typed rows, each tagged with its position in the store."""
    notes: list[str]


def _judge_batches(
    batches: list[tuple[str, pd.DataFrame]],
    withdrawn: dict[str, str],
    data: DataParams,
    rules: ValidateParams,
) -> Judged:
    """Judge each batch by the contract of the batches accepted before it, and learn from it."""
    judged = Judged(contract=None, reports=[], accepted=[], notes=[])
    for position, (name, raw_batch) in enumerate(batches):
        if name in withdrawn:
            judged.reports.append(BatchReport(batch=name, rows=len(raw_batch), withdrawn=withdrawn[name]))
            continue
        raw = normalise_missing(raw_batch)
        candidate = judged.contract
        if candidate is None:
            try:
                candidate = DataContract(dataset=_infer(raw, data))
            except KeyError as err:
                missing_target = BatchReport(batch=name, rows=len(raw))
                missing_target.fail("columns", data.target, str(err.args[0]))
                judged.reports.append(missing_target)
                continue
        batch_report, typed = check_batch(name, raw, candidate, rules, data.id_column)
        judged.reports.append(batch_report)
        if not batch_report.ok:
            continue
        if judged.contract is None:
            judged.notes.extend(_first_batch_notes(candidate.dataset, raw, data))
        if "row_id" not in typed.columns:  # the hash of the cells as stored, as ingest computes it
            typed["row_id"] = row_ids(raw_batch, None).loc[typed.index]
        judged.contract = candidate.learn(name, typed)
        judged.accepted.append(typed.assign(**{BATCH_COLUMN: position}))
    return judged


def _first_batch_notes(first: DatasetSchema, raw: pd.DataFrame, data: DataParams) -> list[str]:
    """What the schema inferred from the first accepted batch left out, and why."""
    notes = []
    if first.id_column and first.id_column != data.id_column:
        notes.append(
            f"column {first.id_column!r} has a unique value per row: "
            "used as the row id, not as a feature (set data.id_column to silence)"
        )
    return notes + [_constant_note(column, raw[column]) for column in first.constant]


def _dataset_problems(dataset: pd.DataFrame, schema: DatasetSchema, rules: ValidateParams) -> list[Problem]:
    """What is wrong with the accepted rows together: a class with too few rows to learn from."""
    if schema.task != "classification" or dataset.empty:
        return []
    return [
        Problem(
            "labels",
            schema.target,
            f"class {label!r} has {count} rows, fewer than validate.min_class_rows={rules.min_class_rows}",
        )
        for label, count in dataset[schema.target].value_counts().items()
        if count < rules.min_class_rows
    ]


def _constant_note(column: str, values: pd.Series) -> str:
    seen = values.dropna()
    value = f"a single value ({seen.iloc[0]!r})" if len(seen) else "no value"
    return (
        f"column {column!r} has {value} in the batch the contract was learned from: left out of the "
        "features (it cannot tell rows apart); a later value is ignored, and the server takes no such field"
    )


def _infer(raw: pd.DataFrame, data: DataParams) -> DatasetSchema:
    """The schema of a first batch, inferred from its rows with usable labels."""
    if data.target not in raw.columns:
        return infer_schema(raw, data)  # raises KeyError naming the columns
    _, unusable = parse_labels(raw[data.target], data.task)
    usable = raw[~unusable & raw[data.target].notna()]
    return infer_schema(usable if len(usable) else raw, data)
