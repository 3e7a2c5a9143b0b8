"""Where every stage reads and writes, relative to one project root."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Workspace:
    """The file layout shared by `dvc.yaml`, the CLI, the DAGs and the tests."""

    root: Path

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def version_file(self) -> Path:
        return self.root / "data" / "version.json"

    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def dataset_file(self) -> Path:
        return self.prepared_dir / "dataset.parquet"

    @property
    def schema_file(self) -> Path:
        return self.prepared_dir / "schema.json"

    @property
    def contract_file(self) -> Path:
        return self.prepared_dir / "contract.json"

    @property
    def split_dir(self) -> Path:
        return self.root / "data" / "split"

    @property
    def train_file(self) -> Path:
        return self.split_dir / "train.parquet"

    @property
    def test_file(self) -> Path:
        return self.split_dir / "test.parquet"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def candidates_dir(self) -> Path:
        return self.models_dir / "candidates"

    @property
    def profile_file(self) -> Path:
        return self.models_dir / "reference_profile.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def validation_report(self) -> Path:
        return self.reports_dir / "validation.json"

    @property
    def evaluation_dir(self) -> Path:
        return self.reports_dir / "evaluation"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.json"

    @property
    def registered_file(self) -> Path:
        return self.reports_dir / "registered.json"

    @property
    def promotion_file(self) -> Path:
        return self.reports_dir / "promotion.json"

    def candidate_file(self, name: str) -> Path:
        return self.candidates_dir / f"{name}.pkl"


def write_json(path: Path, payload: Any) -> None:
    """Write JSON deterministically (sorted keys, fixed indent, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
