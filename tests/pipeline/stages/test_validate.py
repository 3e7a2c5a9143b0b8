"""Validation accepts good batches and rejects each kind of bad batch, naming the column."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.params import Params, ValidateParams, parse_params
from core.schema import DatasetSchema, infer_schema, normalise_missing
from pipeline.data.contract import DataContract
from pipeline.data.sources.simulated import simulate_churn
from pipeline.stages.ingest import ingest
from pipeline.stages.validate import ValidationFailed, effective_rules, validate
from pipeline.stages.validation_checks import check_batch
from pipeline.workspace import read_json
from tests.factories import light_params, make_workspace

NUMERIC = ["age", "tenure_months", "monthly_charges", "support_tickets", "num_products"]
CATEGORICAL = ["region", "contract", "internet_service"]
seeds = st.integers(min_value=0, max_value=10_000)


@pytest.fixture(scope="module")
def params() -> Params:
    return parse_params(light_params())


@pytest.fixture(scope="module")
def reference(params: Params) -> DatasetSchema:
    return infer_schema(normalise_missing(simulate_churn(500, 0)), params.data)


STRICT = {"unlabelled": "reject", "unparseable": "reject", "out_of_range": "reject"}


def check(
    batch: pd.DataFrame, schema: DatasetSchema | DataContract, params: Params, **rules: str
) -> list[tuple[str, str | None]]:
    contract = schema if isinstance(schema, DataContract) else DataContract(dataset=schema)
    strict = effective_rules(params).model_copy(update=rules)
    report, _ = check_batch("b", normalise_missing(batch), contract, strict, params.data.id_column)
    return [(p.check, p.column) for p in report.errors]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=seeds, n=st.integers(min_value=200, max_value=1500), drift=st.floats(0.0, 1.0))
def test_generated_good_batches_pass(
    seed: int, n: int, drift: float, reference: DatasetSchema, params: Params
) -> None:
    assert check(simulate_churn(n, seed, drift), reference, params) == []


def _drop(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda f: f.drop(columns=column)


def _garbage(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(f: pd.DataFrame) -> pd.DataFrame:
        f = f.astype({column: object})
        f.loc[f.index[: len(f) // 10], column] = "n/a-ish"
        return f

    return change


def _out_of_range(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(f: pd.DataFrame) -> pd.DataFrame:
        f = f.astype({column: "float64"})
        f.loc[f.index[:3], column] = -1000.0
        return f

    return change


def _blank(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(f: pd.DataFrame) -> pd.DataFrame:
        if pd.api.types.is_integer_dtype(f[column]):
            f = f.astype({column: "float64"})
        f.loc[f.index[: int(len(f) * 0.6)], column] = np.nan
        return f

    return change


def _infinite(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(f: pd.DataFrame) -> pd.DataFrame:
        f = f.astype({column: "float64"})
        f.loc[f.index[:2], column] = np.inf
        return f

    return change


BREAKERS = {
    "columns": _drop,
    "types": _garbage,
    "ranges": _out_of_range,
    "missing": _blank,
    "infinite": _infinite,
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=seeds, kind=st.sampled_from(sorted(BREAKERS)), column=st.sampled_from(NUMERIC))
def test_each_kind_of_broken_numeric_column_is_rejected_by_name(
    seed: int, kind: str, column: str, reference: DatasetSchema, params: Params
) -> None:
    batch = BREAKERS[kind](column)(simulate_churn(600, seed))
    problems = check(batch, reference, params, **STRICT)
    assert problems, f"{kind} in {column} was accepted"
    assert all(c == column for _, c in problems), problems


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=seeds, column=st.sampled_from(CATEGORICAL))
def test_missing_or_blank_categorical_columns_are_rejected_by_name(
    seed: int, column: str, reference: DatasetSchema, params: Params
) -> None:
    for breaker in (_drop, _blank):
        problems = check(breaker(column)(simulate_churn(600, seed)), reference, params)
        assert problems
        assert all(c == column for _, c in problems), problems


@pytest.mark.parametrize(
    ("change", "check_name", "column"),
    [
        (
            lambda f: f.assign(churned=f["churned"].astype(object).where(f.index > 5, None)),
            "labels",
            "churned",
        ),  # validate.unlabelled=reject
        (lambda f: f.assign(churned=2), "labels", "churned"),
        (lambda f: f.assign(churned=0), "labels", "churned"),
        (
            lambda f: f.assign(churned=f["churned"].astype(object).where(f.index > 5, "maybe")),
            "types",
            "churned",
        ),  # validate.unparseable=reject
        (lambda f: pd.concat([f, f.iloc[:100]], ignore_index=True), "duplicates", None),
        (lambda f: f.assign(loyalty_score=1.0), "columns", "loyalty_score"),
        (lambda f: f.iloc[:10], "rows", None),
    ],
    ids=[
        "missing-labels",
        "unknown-class",
        "single-class",
        "text-in-int-labels",
        "duplicates",
        "extra-column",
        "too-few-rows",
    ],
)
def test_batch_level_problems_are_named(
    change: Callable[[pd.DataFrame], pd.DataFrame],
    check_name: str,
    column: str | None,
    reference: DatasetSchema,
    params: Params,
) -> None:
    problems = check(change(simulate_churn(600, 5)), reference, params, **STRICT)
    assert (check_name, column) in problems, problems


def test_bad_newest_batch_fails_with_a_readable_report_then_is_quarantined(tmp_path: Path) -> None:
    workspace, params = make_workspace(tmp_path, light_params())
    ingest(params, workspace, seed=1)
    validate(params, workspace)
    good_dataset = pd.read_parquet(workspace.dataset_file)

    bad = simulate_churn(800, 2).drop(columns="monthly_charges")
    bad_csv = tmp_path / "bad.csv"
    bad.to_csv(bad_csv, index=False)
    csv_workspace, csv_params = make_workspace(
        tmp_path, light_params(data={"source": "csv", "path": str(bad_csv)})
    )
    ingest(csv_params, csv_workspace)
    with pytest.raises(ValidationFailed, match=r"monthly_charges: expected column is missing"):
        validate(params, workspace)
    report = read_json(workspace.validation_report)
    assert report["passed"] is False
    assert report["batches"][-1]["errors"][0]["column"] == "monthly_charges"
    pd.testing.assert_frame_equal(pd.read_parquet(workspace.dataset_file), good_dataset)  # untouched

    ingest(params, workspace, seed=3)
    final = validate(params, workspace)
    assert final.passed
    assert any("batch-00002.parquet is quarantined" in n for n in final.notes)
    assert final.rows == len(good_dataset) + 1500


def test_validate_params_reject_bad_rates() -> None:
    with pytest.raises(ValueError, match="max_missing_rate"):
        ValidateParams(max_missing_rate=1.5)


@pytest.mark.parametrize("window", [1, 2, None])
def test_the_training_window_keeps_the_newest_accepted_batches(tmp_path: Path, window: int | None) -> None:
    workspace, params = make_workspace(tmp_path, light_params(retrain={"window_batches": window}))
    ids = []
    for seed, drift in ((1, 0.0), (2, 0.0), (3, 1.0)):
        ingest(params, workspace, seed=seed, drift=drift)
        raw = pd.read_parquet(sorted(workspace.raw_dir.glob("batch-*.parquet"))[-1])
        ids.append(set(raw["customer_id"]))  # a prepared row's row_id is its customer id
    report = validate(params, workspace)
    dataset = set(pd.read_parquet(workspace.dataset_file)["row_id"])
    kept = ids if window is None else ids[-window:]
    assert dataset <= set().union(*kept)  # nothing older than the window
    assert all(
        len(dataset & batch) > 0.9 * len(batch) for batch in kept
    )  # each kept batch, less dropped rows
    windowed = [n for n in report.notes if "training window" in n]
    assert windowed == (
        []
        if window is None
        else [f"training window: the newest {window} of the 3 accepted batches (retrain.window_batches)"]
    )


def test_what_validation_leaves_out_or_finds_missing_is_counted_and_said(tmp_path: Path) -> None:
    """A CSV as R writes one: "NA" in a numeric column, a column with one value, unlabelled rows,
    a row that does not parse. The report says how many rows were left out and why, and how many
    values are missing per column; the constant column is left out of the features, and a later
    batch with another value in it is still accepted."""
    batch = simulate_churn(400, 7).astype({"monthly_charges": object, "churned": object, "age": object})
    batch["country"] = "US"
    batch.loc[[3, 8, 21], "monthly_charges"] = "NA"
    batch.loc[[5, 6], "churned"] = None
    batch.loc[9, "age"] = "forty"
    first = tmp_path / "first.csv"
    batch.to_csv(first, index=False)
    workspace, params = make_workspace(
        tmp_path / "ws", light_params(data={"source": "csv", "path": str(first)})
    )
    ingest(params, workspace)
    report = validate(params, workspace)

    text = report.render()
    assert text.splitlines()[0] == "validation passed: 397 rows accepted, 3 left out (below)"
    assert "rows dropped, they have no label (validate.unlabelled=drop): churned: 2" in text
    assert "rows dropped, they do not parse as the column's type (validate.unparseable=drop): age: 1" in text
    # The simulated data has gaps of its own: three more where "NA" was written.
    gaps = int(simulate_churn(400, 7).drop(index=[5, 6, 9])["monthly_charges"].isna().sum())
    assert f"monthly_charges: {gaps + 3}" in text.split("missing values kept, for the model's imputer: ")[1]
    assert "column 'country' has a single value ('US')" in text
    saved = read_json(workspace.validation_report)
    assert saved["rows"] == 397
    assert saved["batches"][0]["missing_values"]["monthly_charges"] == gaps + 3
    assert saved["batches"][0]["rows_dropped"] == 3
    schema = DatasetSchema.read(workspace.schema_file)
    assert schema.constant == ("country",)
    assert "country" not in schema.feature_names
    assert {"monthly_charges", "age"} <= set(schema.numeric)

    later = simulate_churn(300, 8).assign(country="CA")
    later.to_csv(first, index=False)
    ingest(params, workspace)
    again = validate(params, workspace)
    assert [b.status for b in again.batches] == ["ok", "ok"]
    assert again.rows == 697
    assert "country" not in pd.read_parquet(workspace.dataset_file).columns


def test_rows_repeated_without_an_id_are_kept_once_counted_and_said(tmp_path: Path) -> None:
    """Without an id column a row is known by its cells: four exact repeats are one row each."""
    rows = simulate_churn(300, 4).drop(columns="customer_id")
    source = tmp_path / "rows.csv"
    pd.concat([rows, rows.iloc[:4]]).to_csv(source, index=False)
    workspace, params = make_workspace(
        tmp_path / "ws", light_params(data={"source": "csv", "path": str(source), "id_column": None})
    )
    ingest(params, workspace)
    report = validate(params, workspace)
    assert (report.rows, report.repeated) == (300, 4)
    assert report.render().splitlines()[0] == "validation passed: 300 rows accepted, 4 left out (below)"
    assert "4 rows left out: the same cells (or id) as a row kept" in report.render()
    assert len(pd.read_parquet(workspace.dataset_file)) == 300


def test_no_feature_that_varies_refuses_the_batch_by_name(tmp_path: Path) -> None:
    source = tmp_path / "flat.csv"
    pd.DataFrame({"colour": ["red"] * 60, "size": [1.0] * 60, "y": [0, 1] * 30}).to_csv(source, index=False)
    workspace, params = make_workspace(
        tmp_path / "ws", light_params(data={"source": "csv", "path": str(source), "target": "y"})
    )
    ingest(params, workspace)
    with pytest.raises(
        ValidationFailed, match=r"no feature varies: \['colour', 'size'\] each have one value"
    ):
        validate(params, workspace)
