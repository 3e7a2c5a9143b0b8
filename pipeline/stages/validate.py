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
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from core.errors import InvalidData
from core.params import DataParams, Params, ValidateParams
from core.schema import (
    BATCH_COLUMN,
    DatasetSchema,
    coerce,
    infer_schema,
    normalise_labels,
    normalise_missing,
    row_ids,
    with_categories,
)
from pipeline.data.contract import DataContract, parse_labels
from pipeline.data.sources import expected_ranges
from pipeline.data.store import read_raw_batches, withdrawn_batches
from pipeline.workspace import Workspace, write_json

log = logging.getLogger(__name__)
EXAMPLES = 3


class ValidationFailed(InvalidData, RuntimeError):
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
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    """Rows left out by a `drop` policy: policy name -> column -> rows."""
    dropped_rows: int = 0
    """Rows left out by the `drop` policies, each counted once (a row may have several problems)."""
    missing: dict[str, int] = field(default_factory=dict)
    """Missing values per feature in the rows kept (empty cells and spellings such as "NA" or "?"):
    kept, for the model's imputer to fill."""
    withdrawn: str | None = None
    """Why the batch was withdrawn (`python -m pipeline batches withdraw`); None when it is in use."""

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def status(self) -> str:
        return "withdrawn" if self.withdrawn is not None else "ok" if self.ok else "rejected"

    def fail(self, check: str, column: str | None, message: str) -> None:
        self.errors.append(Problem(check, column, message))


@dataclass
class ValidationReport:
    passed: bool
    batches: list[BatchReport]
    dataset_errors: list[Problem]
    notes: list[str]
    rows: int
    repeated: int = 0
    """Rows left out because a row kept has the same row id (the same cells, without an id column)."""

    @property
    def left_out(self) -> int:
        """Rows of the batches in use that are not in the dataset: dropped by a policy or repeated."""
        return sum(b.dropped_rows for b in self.batches if b.ok and b.withdrawn is None) + self.repeated

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "rows": self.rows,
            "repeated_rows": self.repeated,
            "notes": self.notes,
            "dataset_errors": [asdict(p) for p in self.dataset_errors],
            "batches": [
                {
                    "batch": b.batch,
                    "rows": b.rows,
                    "ok": b.ok,
                    "status": b.status,
                    "errors": [asdict(p) for p in b.errors],
                    "dropped_rows": b.dropped,
                    "rows_dropped": b.dropped_rows,
                    "missing_values": b.missing,
                    **({"withdrawn": b.withdrawn} if b.withdrawn is not None else {}),
                }
                for b in self.batches
            ],
        }

    def render(self) -> str:
        """The report as plain text for a terminal or a log."""
        left_out = f", {self.left_out} left out (below)" if self.left_out else ""
        lines = [f"validation {'passed' if self.passed else 'FAILED'}: {self.rows} rows accepted{left_out}"]
        for b in self.batches:
            lines.append(f"  {b.batch}: {b.rows} rows, {b.status}")
            lines.extend(f"    - [{p.check}] {p.column or '(batch)'}: {p.message}" for p in b.errors)
            for policy, columns in b.dropped.items():
                counts = ", ".join(f"{c}: {n}" for c, n in columns.items())
                meaning = ROW_PROBLEMS[policy][1]
                lines.append(f"    - rows dropped, they {meaning} (validate.{policy}=drop): {counts}")
            if b.missing and b.ok:
                counts = ", ".join(f"{c}: {n}" for c, n in b.missing.items())
                lines.append(f"    - missing values kept, for the model's imputer: {counts}")
        if self.repeated:
            lines.append(f"  {self.repeated} rows left out: the same cells (or id) as a row kept")
        lines.extend(f"  dataset [{p.check}] {p.column or ''}: {p.message}" for p in self.dataset_errors)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _examples(values: list[str] | pd.Series) -> str:
    shown = list(dict.fromkeys(str(v) for v in values))[:EXAMPLES]
    return ", ".join(repr(v) for v in shown)


# Row-level problems: the policy that governs each, the check it reports as, and what it means.
ROW_PROBLEMS = {
    "unparseable": ("types", "do not parse as the column's type"),
    "out_of_range": ("ranges", "lie outside the accepted range"),
    "unlabelled": ("labels", "have no label"),
    "duplicate_ids": ("ids", "repeat the id of an earlier row in the batch"),
}


def _row_problems(
    raw: pd.DataFrame, typed: pd.DataFrame, contract: DataContract, rules: ValidateParams
) -> dict[str, dict[str, tuple[pd.Series, str]]]:
    """policy -> column -> (mask of offending rows, examples) for every row-level problem found."""
    schema = contract.dataset
    found: dict[str, dict[str, tuple[pd.Series, str]]] = {kind: {} for kind in ROW_PROBLEMS}
    for spec in schema.features:
        if spec.kind != "numeric" or spec.name not in typed.columns:
            continue
        values = typed[spec.name]
        unparsed = values.isna() & raw[spec.name].notna()
        if unparsed.any():
            found["unparseable"][spec.name] = (unparsed, _examples(raw[spec.name][unparsed]))
        outside = pd.Series(np.isinf(values.to_numpy(dtype=float, na_value=np.nan)), index=values.index)
        bounds = contract.bounds(spec.name, rules.ranges, rules.range_tolerance)
        if bounds is not None:
            outside |= (values < bounds[0]) | (values > bounds[1])
        if outside.any():
            where = f" [{bounds[0]:.6g}, {bounds[1]:.6g}]" if bounds else ""
            found["out_of_range"][spec.name] = (outside, f"{_examples(values[outside])}; range{where}")
    if schema.target in raw.columns:
        labels, unusable = parse_labels(raw[schema.target], schema.task, schema.classes)
        typed[schema.target] = labels
        if unusable.any():
            found["unparseable"][schema.target] = (unusable, _examples(raw[schema.target][unusable]))
        unlabelled = raw[schema.target].isna()
        if unlabelled.any():
            found["unlabelled"][schema.target] = (unlabelled, "")
    if schema.id_column and schema.id_column in raw.columns:
        # Two rows with one id are one entity described twice: only the first is kept, counted.
        repeated = raw[schema.id_column].notna() & raw[schema.id_column].duplicated(keep="first")
        if repeated.any():
            found["duplicate_ids"][schema.id_column] = (repeated, _examples(raw[schema.id_column][repeated]))
    return found


def check_batch(
    name: str, raw: pd.DataFrame, contract: DataContract, rules: ValidateParams, required_id: str | None
) -> tuple[BatchReport, pd.DataFrame]:
    """Check one normalised raw batch against the contract; returns the report and the typed rows
    that are kept (the row policies leave out, and count, rows with problems)."""
    schema = contract.dataset
    report = BatchReport(batch=name, rows=len(raw))
    expected = {
        *schema.feature_names,
        *schema.constant,
        schema.target,
        *([schema.id_column] if schema.id_column else []),
    }
    for column in sorted(expected - set(raw.columns)):
        report.fail("columns", column, "expected column is missing")
    for column in sorted(set(raw.columns) - expected):
        report.fail("columns", column, "unexpected column (not in the reference schema)")
    if required_id and required_id not in raw.columns and required_id not in expected:
        report.fail("columns", required_id, "data.id_column is not in the data")
    if not schema.features:
        report.fail("columns", None, f"no feature varies: {list(schema.constant)} each have one value")

    typed, _ = coerce(raw, schema)
    if schema.id_column and schema.id_column in raw.columns:
        typed["row_id"] = row_ids(raw, schema.id_column)
    left_out = pd.Series(False, index=raw.index)
    for policy, columns in _row_problems(raw, typed, contract, rules).items():
        check, meaning = ROW_PROBLEMS[policy]
        for column, (mask, examples) in columns.items():
            count, share = int(mask.sum()), float(mask.mean())
            shown = f", e.g. {examples}" if examples else ""
            if policy != "unlabelled" and share > rules.max_invalid_rate:
                report.fail(
                    check,
                    column,
                    f"{count} values ({share:.1%}) {meaning}{shown}: more than "
                    f"validate.max_invalid_rate={rules.max_invalid_rate:.1%}, so the column looks broken",
                )
            elif getattr(rules, policy) == "reject":
                report.fail(check, column, f"{count} rows {meaning}{shown} (validate.{policy}=reject)")
            else:
                report.dropped.setdefault(policy, {})[column] = count
                left_out |= mask
    kept_raw, typed = raw[~left_out], typed[~left_out]
    report.dropped_rows = int(left_out.sum())
    report.missing = {
        spec.name: int(typed[spec.name].isna().sum())
        for spec in schema.features
        if spec.name in typed.columns and typed[spec.name].isna().any()
    }

    if len(kept_raw) < rules.min_rows:
        report.fail("rows", None, f"{len(kept_raw)} rows, fewer than validate.min_rows={rules.min_rows}")
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
    duplicates = float(kept_raw.duplicated().mean()) if len(kept_raw) else 0.0
    if duplicates > rules.max_duplicate_rate:
        report.fail(
            "duplicates",
            None,
            f"{duplicates:.1%} duplicated rows, more than "
            f"validate.max_duplicate_rate={rules.max_duplicate_rate:.1%}",
        )
    if schema.target in typed.columns and schema.task == "classification":
        _check_classes(report, typed[schema.target], schema)
    if schema.target in typed.columns and len(typed):
        typed[schema.target] = normalise_labels(typed[schema.target], schema.task)
    return report, typed


def _check_classes(report: BatchReport, labels: pd.Series, schema: DatasetSchema) -> None:
    seen = set(labels.dropna().tolist())
    unknown = seen - set(schema.classes)
    if unknown:
        counts = labels[labels.isin(unknown)].astype(str).value_counts()
        report.fail(
            "labels",
            schema.target,
            f"label values never seen before ({', '.join(f'{k!r}: {v} rows' for k, v in counts.items())}); "
            f"the known classes are {list(schema.classes)}. A new class needs a new model.name",
        )
    if len(seen) < 2:
        report.fail("labels", schema.target, f"only one class present ({_examples(list(seen))})")


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
