"""Where every stage reads and writes: one workspace per registered model, under one project root.

Each `model.name` has its own raw store, prepared data, splits, candidates and reports
(`data/<name>/`, `models/<name>/`, `reports/<name>/`), so switching datasets never mixes them and
switching back finds the old state intact. `dvc.yaml` names the same paths with `${model.name}` (the
default model) and `${key}` (each model of params.yaml's `models:` section).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.artifacts import PROFILE_ARTIFACT


def params_file(root: Path) -> Path:
    return root / "params.yaml"


@dataclass(frozen=True)
class Workspace:
    """The file layout shared by `dvc.yaml`, the CLI, the DAGs and the tests."""

    root: Path
    model: str
    """The registered model's name (`model.name`): the workspace's folder name."""
    declared: bool = False
    """A model of params.yaml's `models:` section rather than the default one: its DVC stages are
    `dvc.yaml`'s groups, `<stage>-model@<name>`."""

    def stage(self, name: str) -> str:
        """This model's DVC stage for pipeline stage `name`, e.g. `train` or `train-model@diabetes`."""
        return f"{name}-model@{self.model}" if self.declared else name

    def owns(self, stage: str) -> bool:
        """Whether DVC stage `stage` (as `dvc.yaml` and `dvc.lock` name it) is one of this model's."""
        if self.declared:
            return stage.endswith(f"-model@{self.model}")
        return "@" not in stage

    @property
    def params_file(self) -> Path:
        return params_file(self.root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data" / self.model

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def lock_file(self) -> Path:
        """This model's copy of `dvc.lock` as its own last run left it (pipeline/driver/versioning.py)."""
        return self.data_dir / "dvc.lock"

    @property
    def version_file(self) -> Path:
        return self.data_dir / "version.json"

    @property
    def prepared_dir(self) -> Path:
        return self.data_dir / "prepared"

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
        return self.data_dir / "split"

    @property
    def train_file(self) -> Path:
        return self.split_dir / "train.parquet"

    @property
    def test_file(self) -> Path:
        return self.split_dir / "test.parquet"

    @property
    def models_dir(self) -> Path:
        return self.root / "models" / self.model

    @property
    def candidates_dir(self) -> Path:
        return self.models_dir / "candidates"

    @property
    def profile_file(self) -> Path:
        return self.models_dir / PROFILE_ARTIFACT

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports" / self.model

    @property
    def validation_report(self) -> Path:
        return self.reports_dir / "validation.json"

    @property
    def evaluation_dir(self) -> Path:
        return self.reports_dir / "evaluation"

    @property
    def metrics_file(self) -> Path:
        return self.reports_dir / "metrics.json"

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
