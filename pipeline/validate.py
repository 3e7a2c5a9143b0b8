"""Check every raw batch against the expected schema and build the prepared dataset.

The first batch that passes its own checks fixes the reference schema; each later batch must
match it. A bad batch is quarantined (kept in the raw store, left out of the dataset); when the
newest batch is bad the stage fails with a readable report, so nothing downstream runs.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from pipeline.ingest import read_raw_batches
from pipeline.params import Params, ValidateParams
from pipeline.schema import DatasetSchema, coerce, infer_schema, normalise_missing, row_ids, with_categories
from pipeline.sources import expected_ranges
from pipeline.workspace import Workspace, write_json

log = logging.getLogger(__name__)
EXAMPLES = 3


class ValidationFailed(RuntimeError):
    """The newest batch (or the dataset as a whole) is not fit for training."""


@dataclass
class Problem:
    check: str
    column: str | None
    message: str


@dataclass
class BatchReport:
    batch: str
    rows: int
    errors: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def fail(self, check: str, column: str | None, message: str) -> None:
        self.errors.append(Problem(check, column, message))


@dataclass
class ValidationReport:
    passed: bool
    batches: list[BatchReport]
    dataset_errors: list[Problem]
    notes: list[str]
    rows: int

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "notes": self.notes,
            "dataset_errors": [asdict(p) for p in self.dataset_errors],
            "batches": [
                {"batch": b.batch, "rows": b.rows, "ok": b.ok, "errors": [asdict(p) for p in b.errors]}
                for b in self.batches
            ],
        }

    def render(self) -> str:
        """The report as plain text for a terminal or a log."""
        lines = [f"validation {'passed' if self.passed else 'FAILED'}: {self.rows} rows accepted"]
        for b in self.batches:
            lines.append(f"  {b.batch}: {b.rows} rows, {'ok' if b.ok else 'rejected'}")
            lines.extend(f"    - [{p.check}] {p.column or '(batch)'}: {p.message}" for p in b.errors)
        lines.extend(f"  dataset [{p.check}] {p.column or ''}: {p.message}" for p in self.dataset_errors)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _examples(values: list[str] | pd.Series) -> str:
    shown = list(dict.fromkeys(str(v) for v in values))[:EXAMPLES]
    return ", ".join(repr(v) for v in shown)


def check_batch(
    name: str, raw: pd.DataFrame, schema: DatasetSchema, rules: ValidateParams, required_id: str | None
) -> tuple[BatchReport, pd.DataFrame]:
    """Check one normalised raw batch against `schema`; returns the report and the typed batch."""
    report = BatchReport(batch=name, rows=len(raw))
    if len(raw) < rules.min_rows:
        report.fail("rows", None, f"{len(raw)} rows, fewer than validate.min_rows={rules.min_rows}")
    expected = {*schema.feature_names, schema.target, *([schema.id_column] if schema.id_column else [])}
    for column in sorted(expected - set(raw.columns)):
        report.fail("columns", column, "expected column is missing")
    for column in sorted(set(raw.columns) - expected):
        report.fail("columns", column, "unexpected column (not in the reference schema)")
    if required_id and required_id not in raw.columns and required_id not in expected:
        report.fail("columns", required_id, "data.id_column is not in the data")

    typed, invalid = coerce(raw, schema)
    for column, bad in invalid.items():
        rate = len(bad) / max(len(raw), 1)
        if rate > rules.max_invalid_rate:
            report.fail(
                "types", column, f"{len(bad)} values ({rate:.1%}) are not numbers, e.g. {_examples(bad)}"
            )
    for spec in schema.features:
        if spec.name not in typed.columns:
            continue
        series = typed[spec.name]
        missing = float(series.isna().mean()) if len(series) else 0.0
        if missing > rules.max_missing_rate:
            report.fail(
                "missing",
                spec.name,
                f"{missing:.1%} missing, more than validate.max_missing_rate={rules.max_missing_rate:.1%}",
            )
        if spec.kind != "numeric":
            continue
        infinite = series[np.isinf(series.to_numpy(dtype=float, na_value=np.nan))]
        if len(infinite):
            report.fail("ranges", spec.name, f"{len(infinite)} infinite values")
        if spec.name in rules.ranges:
            low, high = rules.ranges[spec.name]
            outside = series[(series < low) | (series > high)]
            if len(outside):
                report.fail(
                    "ranges",
                    spec.name,
                    f"{len(outside)} values outside [{low}, {high}], e.g. {_examples(outside)}",
                )

    duplicates = float(raw.duplicated().mean()) if len(raw) else 0.0
    if duplicates > rules.max_duplicate_rate:
        report.fail(
            "duplicates",
            None,
            f"{duplicates:.1%} duplicated rows, more than "
            f"validate.max_duplicate_rate={rules.max_duplicate_rate:.1%}",
        )

    if schema.target in typed.columns:
        _check_labels(report, raw[schema.target], typed[schema.target], schema)
    if schema.id_column and schema.id_column in raw.columns:
        typed["row_id"] = row_ids(raw, schema.id_column)
    return report, typed


def _check_labels(report: BatchReport, raw: pd.Series, labels: pd.Series, schema: DatasetSchema) -> None:
    unparsed = labels.isna() & raw.notna()
    if unparsed.any():
        report.fail(
            "labels",
            schema.target,
            f"{int(unparsed.sum())} labels are not numbers, e.g. {_examples(raw[unparsed])}",
        )
    if raw.isna().any():
        report.fail("labels", schema.target, f"{int(raw.isna().sum())} rows have no label")
    if schema.task == "regression":
        finite = labels.dropna().to_numpy(dtype=float)
        if len(finite) and not np.isfinite(finite).all():
            report.fail("labels", schema.target, "labels include infinite values")
        return
    seen = set(labels.dropna().tolist())
    unknown = seen - set(schema.classes)
    if unknown:
        report.fail(
            "labels",
            schema.target,
            f"classes not in the reference labels "
            f"{list(schema.classes)}: {_examples(sorted(map(str, unknown)))}",
        )
    if len(seen) < 2:
        report.fail("labels", schema.target, f"only one class present ({_examples(list(seen))})")


def effective_rules(params: Params) -> ValidateParams:
    """params.yaml's rules plus the ranges the source guarantees (params.yaml wins on a clash)."""
    ranges = {**expected_ranges(params.data), **params.validate_.ranges}
    return params.validate_.model_copy(update={"ranges": ranges})


def validate(params: Params, workspace: Workspace) -> ValidationReport:
    """Validate all raw batches, write the report, and on success the prepared dataset + schema."""
    data, rules = params.data, effective_rules(params)
    batches = read_raw_batches(workspace.raw_dir)
    if not batches:
        raise ValidationFailed(f"the raw store {workspace.raw_dir} is empty: run `python -m pipeline ingest`")

    schema: DatasetSchema | None = None
    reports: list[BatchReport] = []
    accepted: list[pd.DataFrame] = []
    notes: list[str] = []
    for name, raw_batch in batches:
        raw = normalise_missing(raw_batch)
        candidate = schema
        if candidate is None:
            try:
                candidate = infer_schema(raw, data)
            except KeyError as err:
                missing_target = BatchReport(batch=name, rows=len(raw))
                missing_target.fail("columns", data.target, str(err.args[0]))
                reports.append(missing_target)
                continue
        batch_report, typed = check_batch(name, raw, candidate, rules, data.id_column)
        reports.append(batch_report)
        if not batch_report.ok:
            continue
        if schema is None:
            schema = candidate
            if schema.id_column and schema.id_column != data.id_column:
                notes.append(
                    f"column {schema.id_column!r} has a unique value per row: "
                    "used as the row id, not as a feature (set data.id_column to silence)"
                )
        if "row_id" not in typed.columns:
            typed["row_id"] = row_ids(raw_batch, None)
        accepted.append(typed)

    dataset_errors: list[Problem] = []
    dataset = pd.concat(accepted, ignore_index=True) if accepted else pd.DataFrame()
    if schema is not None and schema.task == "classification" and not dataset.empty:
        counts = dataset[schema.target].value_counts()
        for label, count in counts.items():
            if count < rules.min_class_rows:
                dataset_errors.append(
                    Problem(
                        "labels",
                        schema.target,
                        f"class {label!r} has {count} rows, "
                        f"fewer than validate.min_class_rows={rules.min_class_rows}",
                    )
                )
    if schema is not None:
        ignored = sorted(set(params.validate_.ranges) - set(schema.numeric))
        if ignored:
            notes.append(f"validate.ranges for columns not among the numeric features: {ignored}")

    passed = reports[-1].ok and not dataset_errors
    for b in reports[:-1]:
        if not b.ok:
            notes.append(f"{b.batch} is quarantined: kept in the raw store, left out of the dataset")
    report = ValidationReport(
        passed=passed, batches=reports, dataset_errors=dataset_errors, notes=notes, rows=len(dataset)
    )
    write_json(workspace.validation_report, report.as_dict())
    if not passed or schema is None:
        raise ValidationFailed(report.render())

    dataset = dataset.drop_duplicates("row_id", keep="first").reset_index(drop=True)
    schema = with_categories(schema, dataset)
    workspace.prepared_dir.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(workspace.dataset_file, index=False)
    write_json(workspace.schema_file, schema.model_dump(mode="json"))
    log.info("validation passed", extra={"rows": len(dataset), "batches": len(reports)})
    return report
