"""Ingest: append-only, idempotent, versioned with DVC's own hash; the data-source service over HTTP."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipeline.data.sources import SourceError
from pipeline.data.sources.bundled import load_bundled
from pipeline.data.sources.files import load_table
from pipeline.data.sources.simulated import simulate_churn
from pipeline.data.store import dvc_dir_md5, read_manifest
from pipeline.stages.ingest import ingest
from tests.factories import light_params, make_workspace
from tests.servers import free_port, serve


def test_ingest_appends_only_new_rows_and_counts_versions(tmp_path: Path) -> None:
    workspace, params = make_workspace(tmp_path, light_params())
    first = ingest(params, workspace, seed=1)
    assert (first.version.label, first.appended_rows) == ("v1", 1500)
    stored = (workspace.raw_dir / "batch-00001.parquet").read_bytes()

    again = ingest(params, workspace, seed=1)
    assert again.appended_rows == 0
    assert again.version == first.version

    second = ingest(params, workspace, seed=2)
    assert (second.version.label, second.version.rows) == ("v2", 3000)
    assert second.version.md5 != first.version.md5
    assert (workspace.raw_dir / "batch-00001.parquet").read_bytes() == stored  # immutable
    assert [b["source"]["seed"] for b in read_manifest(workspace.raw_dir)] == [1, 2]


def test_growing_csv_snapshot_appends_only_its_new_rows(tmp_path: Path) -> None:
    csv = tmp_path / "snapshot.csv"
    full = simulate_churn(900, 4)
    full.iloc[:600].to_csv(csv, index=False)
    workspace, params = make_workspace(
        tmp_path / "ws", light_params(data={"source": "csv", "path": str(csv)})
    )
    assert ingest(params, workspace).appended_rows == 600
    full.to_csv(csv, index=False)
    result = ingest(params, workspace)
    assert result.appended_rows == 300
    assert result.version.label == "v2"


def test_version_hash_is_the_one_dvc_computes(tmp_path: Path) -> None:
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    workspace, params = make_workspace(tmp_path, light_params())
    ingest(params, workspace, seed=1)
    ingest(params, workspace, seed=2)
    fs = LocalFileSystem()
    odb = HashFileDB(fs, str(tmp_path / "odb"))
    _, _, tree = build(odb, str(workspace.raw_dir), fs, "md5")
    assert dvc_dir_md5(workspace.raw_dir) == tree.hash_info.value


def test_bundled_classes_carry_the_names_the_dataset_gives_them() -> None:
    # Counts from scikit-learn's dataset descriptions: 212 malignant and 357 benign tumours.
    assert load_bundled("breast_cancer", "diagnosis")["diagnosis"].value_counts().to_dict() == {
        "benign": 357,
        "malignant": 212,
    }
    assert set(load_bundled("iris", "species")["species"]) == {"setosa", "versicolor", "virginica"}
    # Digits are named by themselves; regression targets stay numbers.
    assert sorted(set(load_bundled("digits", "digit")["digit"])) == list(range(10))
    assert load_bundled("diabetes", "progression")["progression"].iloc[0] == 151.0


def test_missing_file_and_unreachable_url_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_table(str(tmp_path / "nope.csv"))
    with pytest.raises(SourceError, match="could not fetch"):
        load_table(f"http://127.0.0.1:{free_port()}/data.csv")


@pytest.mark.integration
def test_data_source_service_serves_the_simulator(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipeline", "serve-data", "--port", str(port)]
    with serve(command, f"{base}/health", tmp_path, timeout=60):
        index = httpx.get(base, timeout=10)  # the URL `make up` prints answers
        assert index.status_code == 200
        assert "GET /world" in index.json()["endpoints"]
        csv = httpx.get(f"{base}/batch", params={"n": 50, "seed": 3, "drift": 0.2}, timeout=10)
        assert csv.headers["content-type"].startswith("text/csv")
        assert len(csv.text.strip().splitlines()) == 51
        bad = httpx.get(f"{base}/batch", params={"n": 0, "drift": 3}, timeout=10)
        assert bad.status_code == 422
        assert {e["loc"][-1] for e in bad.json()["detail"]} == {"n", "drift"}

        local, params_local = make_workspace(tmp_path / "local", light_params())
        remote, params_remote = make_workspace(tmp_path / "remote", light_params(data={"path": base}))
        ingest(params_local, local, seed=5, drift=0.3)
        ingest(params_remote, remote, seed=5, drift=0.3)
        for name in ("batch-00001.parquet",):
            pd.testing.assert_frame_equal(
                pd.read_parquet(local.raw_dir / name), pd.read_parquet(remote.raw_dir / name)
            )
            assert (local.raw_dir / name).read_bytes() == (remote.raw_dir / name).read_bytes()

        # The world shifts: batches drawn without an explicit drift follow it, and say so.
        calm = {"drift": 0.0, "concept": None, "outcome_delay_seconds": 60.0}
        assert httpx.get(f"{base}/world", timeout=10).json() == calm
        assert httpx.put(f"{base}/world", json={"drift": 1.5}, timeout=10).status_code == 422
        assert httpx.put(f"{base}/world", json={"drift": 0.8}, timeout=10).json() == {**calm, "drift": 0.8}
        shifted = httpx.get(f"{base}/batch", params={"n": 20, "seed": 3}, timeout=10)
        assert shifted.headers["x-bitloop-drift"] == "0.8"
        assert shifted.text == httpx.get(f"{base}/batch", params={"n": 20, "seed": 3, "drift": 0.8}).text
        world, params_world = make_workspace(tmp_path / "world", light_params())
        result = ingest(params_world, world, seed=6, source_url=base)
        assert result.appended_rows == 1500
        assert read_manifest(world.raw_dir)[-1]["source"]["drift"] == 0.8
        assert read_manifest(world.raw_dir)[-1]["source"]["service"] == base
        assert "concept" not in read_manifest(world.raw_dir)[-1]["source"]

        # The concept moves apart from the inputs: training batches are labelled by the new relation
        # (the same customers, other churners), and ingest records the concept it drew with.
        assert httpx.put(f"{base}/world", json={"concept": 0.0}, timeout=10).json()["concept"] == 0.0
        turned = pd.read_csv(io.StringIO(httpx.get(f"{base}/batch", params={"n": 2000, "seed": 3}).text))
        before = simulate_churn(2000, 3, 0.8)
        pd.testing.assert_frame_equal(turned.drop(columns="churned"), before.drop(columns="churned"))
        assert (turned["churned"] != before["churned"]).mean() > 0.05
        result = ingest(params_world, world, seed=7, source_url=base)
        source = read_manifest(world.raw_dir)[-1]["source"]
        assert (source["drift"], source["concept"]) == (0.8, 0.0)
        stored = pd.read_parquet(world.raw_dir / str(result.batch_file))
        expected = simulate_churn(source["rows"], 7, 0.8, 0.0)
        assert stored["churned"].tolist() == expected["churned"].tolist()
