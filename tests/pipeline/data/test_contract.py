"""Each batch is judged by the contract learned from the batches accepted before it; rows with
problems follow their policy; a bad batch can be withdrawn and its corrected rows ingested."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.params import Params, ValidateParams, parse_params
from core.schema import infer_schema, normalise_missing
from core.settings import PipelineSettings
from pipeline.__main__ import main
from pipeline.data.contract import DataContract
from pipeline.data.sources.simulated import simulate_churn
from pipeline.data.store import dataset_version, list_batches
from pipeline.driver.run import run_all
from pipeline.stages.ingest import ingest
from pipeline.stages.validate import ValidationFailed, validate
from pipeline.stages.validation_checks import check_batch
from pipeline.workspace import read_json
from tests.factories import light_params, make_workspace

# A CSV source: no ranges come with it, so numeric ranges are learned.
CSV: dict[str, Any] = {"source": "csv", "target": "churned", "id_column": "customer_id"}


@pytest.fixture(scope="module")
def params() -> Params:
    return parse_params(light_params(data={**CSV, "path": "unused.csv"}))


@pytest.fixture(scope="module")
def learned(params: Params) -> DataContract:
    first = normalise_missing(simulate_churn(800, 0))
    contract = DataContract(dataset=infer_schema(first, params.data))
    report, typed = check_batch("batch-00001.parquet", first, contract, params.validate_, "customer_id")
    assert report.ok
    return contract.learn("batch-00001.parquet", typed)


def judge(batch: pd.DataFrame, contract: DataContract, **rules: Any) -> tuple[Any, pd.DataFrame]:
    return check_batch("b", normalise_missing(batch), contract, ValidateParams(**rules), "customer_id")


def errors(report: Any) -> list[tuple[str, str | None]]:
    return [(p.check, p.column) for p in report.errors]


def test_text_in_a_learned_numeric_column_refuses_the_batch(learned: DataContract) -> None:
    batch = simulate_churn(600, 1).astype({"age": object})
    batch.loc[batch.index[:180], "age"] = "forty"
    report, _ = judge(batch, learned)
    assert errors(report) == [("types", "age")]
    assert "180 values (30.0%)" in report.errors[0].message
    assert "'forty'" in report.errors[0].message


def test_labels_of_mixed_types_refuse_the_batch_and_never_become_a_class(learned: DataContract) -> None:
    batch = simulate_churn(600, 2).astype({"churned": object})
    batch.loc[batch.index[:40], "churned"] = "maybe"
    report, _ = judge(batch, learned)
    assert errors(report) == [("types", "churned")]
    assert "40 values (6.7%)" in report.errors[0].message
    first = simulate_churn(600, 3).astype({"churned": object})  # even in a store's first batch
    first.loc[first.index[:3], "churned"] = "maybe"
    schema = infer_schema(
        normalise_missing(first[first["churned"] != "maybe"]), parse_params(light_params()).data
    )
    report, typed = judge(first, DataContract(dataset=schema))
    assert report.ok
    assert report.dropped == {"unparseable": {"churned": 3}}
    assert set(typed["churned"]) == {0, 1}


def test_a_new_label_value_refuses_the_batch_naming_it(learned: DataContract) -> None:
    batch = simulate_churn(600, 4)
    batch.loc[batch.index[:30], "churned"] = 2
    report, _ = judge(batch, learned)
    assert errors(report) == [("labels", "churned")]
    assert "'2': 30 rows" in report.errors[0].message


@pytest.mark.parametrize(
    ("column", "value"), [("age", -5.0), ("monthly_charges", 94.5e6), ("total_charges", -1.0)]
)
def test_values_far_outside_the_learned_range_are_dropped_or_refuse_the_batch(
    learned: DataContract, column: str, value: float
) -> None:
    few = simulate_churn(600, 5)
    few.loc[few.index[:3], column] = value
    report, typed = judge(few, learned)
    assert report.ok, report.errors
    assert report.dropped == {"out_of_range": {column: 3}}
    assert len(typed) == 597
    report, _ = judge(few, learned, out_of_range="reject")
    assert errors(report) == [("ranges", column)]
    many = simulate_churn(600, 6)
    many[column] = value
    report, _ = judge(many, learned)
    assert errors(report) == [("ranges", column)]


def test_drifted_but_plausible_batches_pass_the_learned_ranges(learned: DataContract) -> None:
    for seed in range(5):
        report, _ = judge(simulate_churn(1000, 100 + seed, drift=1.0), learned)
        assert report.ok, report.errors
        assert "out_of_range" not in report.dropped


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    blanks=st.sets(st.integers(0, 399), max_size=120),
    task=st.sampled_from(["classification", "regression"]),
)
def test_the_unlabelled_policy_drops_exactly_the_unlabelled_rows(
    seed: int, blanks: set[int], task: str
) -> None:
    batch = simulate_churn(400, seed)
    assume(batch["churned"].nunique() == 2)
    if task == "regression":
        batch = batch.assign(churned=np.linspace(0.0, 100.0, len(batch)))
    data = parse_params(light_params(data={"task": task})).data
    contract = DataContract(dataset=infer_schema(normalise_missing(batch), data))
    holed = batch.astype({"churned": object})
    holed.loc[sorted(blanks), "churned"] = None
    report, typed = judge(holed, contract, min_rows=1)
    labelled = set(batch.loc[~batch.index.isin(blanks), "customer_id"])
    assert set(typed["row_id"]) == labelled
    assert report.dropped.get("unlabelled", {}) == ({"churned": len(blanks)} if blanks else {})
    strict, _ = judge(holed, contract, min_rows=1, unlabelled="reject")
    assert ("labels", "churned") in errors(strict) if blanks else strict.ok


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), copies=st.lists(st.integers(0, 299), max_size=5))
def test_a_repeated_id_keeps_only_its_first_row_counted_or_refuses_the_batch(
    learned: DataContract, seed: int, copies: list[int]
) -> None:
    batch = simulate_churn(300, seed)
    repeats = batch.iloc[copies].assign(monthly_charges=1.0)  # the same customers, described again
    doubled = pd.concat([batch, repeats], ignore_index=True)
    loose = {"min_rows": 1, "max_invalid_rate": 0.05}  # a few repeats are noise, not a broken id column
    report, typed = judge(doubled, learned, **loose)
    assert report.ok, report.errors
    assert len(typed) == len(batch)
    assert typed["row_id"].is_unique
    kept = typed.set_index("row_id")["monthly_charges"]
    originals = batch.set_index("customer_id")["monthly_charges"]
    first = kept.loc[originals.index].to_numpy(float)
    assert np.array_equal(first, originals.to_numpy(float), equal_nan=True)  # the first description wins
    assert report.dropped.get("duplicate_ids", {}) == ({"customer_id": len(copies)} if copies else {})
    strict, _ = judge(doubled, learned, **loose, duplicate_ids="reject")
    assert ("ids", "customer_id") in errors(strict) if copies else strict.ok


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def unlabelled_csv(tmp_path: Path, rows: int = 900, blanks: int = 12) -> tuple[Path, pd.DataFrame]:
    frame = simulate_churn(rows, 11)
    holed = frame.astype({"churned": object})
    holed.loc[holed.index[:blanks], "churned"] = ""
    return write_csv(tmp_path / "customers.csv", holed), frame


def test_a_csv_with_unlabelled_rows_trains_under_drop(tmp_path: Path, mlflow_uri: str) -> None:
    path, _ = unlabelled_csv(tmp_path)
    workspace, params = make_workspace(
        tmp_path / "ws", light_params(data={**CSV, "path": str(path)}, model={"name": "unlabelled-csv"})
    )
    report = run_all(params, workspace, PipelineSettings(mlflow_tracking_uri=mlflow_uri))
    assert report["promoted"] is True
    validation = read_json(workspace.validation_report)
    assert validation["batches"][0]["dropped_rows"] == {"unlabelled": {"churned": 12}}
    assert validation["rows"] == 888


def test_refused_then_withdrawn_then_corrected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Under reject a CSV with unlabelled rows is refused; withdrawing it lets the corrected file in."""
    path, clean = unlabelled_csv(tmp_path)
    workspace, params = make_workspace(
        tmp_path / "ws", light_params(data={**CSV, "path": str(path)}, validate={"unlabelled": "reject"})
    )
    ingest(params, workspace)
    with pytest.raises(ValidationFailed, match=r"\[labels\] churned: 12 rows have no label"):
        validate(params, workspace)
    [listed] = list_batches(workspace)
    assert (listed["batch"], listed["status"]) == ("batch-00001.parquet", "rejected")

    write_csv(path, clean)
    assert ingest(params, workspace).appended_rows == 0  # the rejected rows are still in the store
    before = dataset_version(workspace.raw_dir)
    assert (
        main(
            [
                "--root",
                str(workspace.root),
                "batches",
                "withdraw",
                "batch-00001.parquet",
                "--reason",
                "12 rows without labels",
            ]
        )
        == 0
    )
    after = dataset_version(workspace.raw_dir)
    assert (before.label, after.label) == ("v1", "v2")
    assert before.md5 != after.md5
    assert (workspace.raw_dir / "batch-00001.parquet").is_file()  # immutable: kept, only excluded
    assert ingest(params, workspace).appended_rows == len(clean)
    report = validate(params, workspace)
    assert report.passed
    assert report.rows == len(clean)
    assert [b.status for b in report.batches] == ["withdrawn", "ok"]
    capsys.readouterr()
    assert main(["--root", str(workspace.root), "batches", "withdraw", "batch-00009.parquet"]) == 2
    assert "no batch 'batch-00009.parquet'" in capsys.readouterr().err
    assert np.array_equal(pd.read_parquet(workspace.dataset_file)["row_id"], clean["customer_id"].astype(str))
