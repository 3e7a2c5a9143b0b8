"""What validate judges each batch by, and the report it writes.

A batch is checked against the data contract learned from the batches accepted before it
(`check_batch`): its columns and their kinds, labels and classes, and each row's values, whose
problems a `validate.*` policy drops (counted) or turns into the batch's refusal. The report
(`ValidationReport`) holds every batch's verdict, what was left out and why, and renders as text.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from core.params import ValidateParams
from core.schema import (
    DatasetSchema,
    coerce,
    normalise_labels,
    row_ids,
)
from pipeline.data.contract import DataContract, parse_labels

log = logging.getLogger(__name__)

EXAMPLES = 3


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
