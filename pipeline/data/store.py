"""The raw store of a workspace: immutable batch files, their manifest, and the dataset version.

`data/<model.name>/raw/` holds one Parquet file per batch plus `manifest.json`; batches are never
rewritten. The dataset version is the DVC content hash of the raw store (what `dvc.lock`
records) plus a counter: v<number of batches and withdrawals>.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidInput
from pipeline.workspace import Workspace, read_json, write_json

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


class DatasetVersion(BaseModel):
    """`data/<model>/version.json`, and the data version every report and run records."""

    model_config = ConfigDict(frozen=True, validate_by_name=True)
    label: str = Field(alias="version")
    """v1, v2, ..."""
    md5: str
    """DVC's content hash of the raw store."""
    batches: int
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

    @classmethod
    def from_file(cls, path: Path) -> DatasetVersion:
        return cls.model_validate(read_json(path))


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_dir_md5(directory: Path) -> str:
    """The hash DVC 3 gives a directory output: md5 of its sorted (relpath, md5) listing + '.dir'."""
    entries = sorted(
        (
            {"md5": file_md5(p), "relpath": p.relative_to(directory).as_posix()}
            for p in directory.rglob("*")
            if p.is_file()
        ),
        key=lambda e: e["relpath"],
    )
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def read_manifest(raw_dir: Path) -> list[dict[str, Any]]:
    path = raw_dir / MANIFEST
    return list(read_json(path)["batches"]) if path.is_file() else []


def read_raw_batches(raw_dir: Path) -> list[tuple[str, pd.DataFrame]]:
    """Every stored batch, oldest first, as (file name, frame)."""
    return [(b["file"], pd.read_parquet(raw_dir / b["file"])) for b in read_manifest(raw_dir)]


def withdrawn_batches(raw_dir: Path) -> dict[str, str]:
    """Withdrawn batch file -> the reason given."""
    return {b["file"]: b["withdrawn"]["reason"] for b in read_manifest(raw_dir) if b.get("withdrawn")}


class UnknownBatch(InvalidInput, ValueError):
    """A batch name that is not in the raw store."""


def withdraw_batch(workspace: Workspace, batch: str, reason: str) -> dict[str, Any]:
    """Mark a batch as excluded from every later validation. Its file stays, unchanged; the exclusion
    is a manifest change, so the store gets a new content hash and version like any other change."""
    raw_dir = workspace.raw_dir
    manifest = read_manifest(raw_dir)
    entry = next((b for b in manifest if b["file"] == batch), None)
    if entry is None:
        known = ", ".join(b["file"] for b in manifest) or "none"
        raise UnknownBatch(f"no batch {batch!r} in {raw_dir}; the batches are: {known}")
    if not entry.get("withdrawn"):
        withdrawals = sum(1 for b in manifest if b.get("withdrawn"))
        entry["withdrawn"] = {"reason": reason, "order": withdrawals + 1}
        write_json(raw_dir / MANIFEST, {"batches": manifest})
        log.info("withdrew batch", extra={"batch": batch, "reason": reason})
    version = dataset_version(raw_dir)
    write_json(workspace.version_file, version.as_dict())
    return {"batch": batch, "withdrawn": entry["withdrawn"], "version": version.as_dict()}


def list_batches(workspace: Workspace) -> list[dict[str, Any]]:
    """Every batch with its rows, source, and status in the last validation report."""
    report = read_json(workspace.validation_report) if workspace.validation_report.is_file() else {}
    validated = {b["batch"]: b for b in report.get("batches", [])}
    out = []
    for entry in read_manifest(workspace.raw_dir):
        checked = validated.get(entry["file"], {})
        status = "withdrawn" if entry.get("withdrawn") else checked.get("status", "not validated yet")
        out.append(
            {
                "batch": entry["file"],
                "rows": entry["rows"],
                "status": status,
                "problems": [
                    f"[{p['check']}] {p['column'] or '(batch)'}: {p['message']}"
                    for p in checked.get("errors", [])
                ],
                "dropped_rows": checked.get("dropped_rows", {}),
                "source": entry["source"],
                **({"withdrawn": entry["withdrawn"]["reason"]} if entry.get("withdrawn") else {}),
            }
        )
    return out


def list_datasets(root: Path, current: str) -> list[dict[str, Any]]:
    """Every model's workspace under `root` with its dataset version; `current` is params.yaml's."""
    out = []
    for version_file in sorted((root / "data").glob("*/version.json")):
        model = version_file.parent.name
        out.append({"model": model, "current": model == current, **read_json(version_file)})
    return out


def dataset_version(raw_dir: Path) -> DatasetVersion:
    """v<batches + withdrawals>: every change to the store (an append or a withdrawal) is a version."""
    batches = read_manifest(raw_dir)
    withdrawals = sum(1 for b in batches if b.get("withdrawn"))
    return DatasetVersion(
        label=f"v{len(batches) + withdrawals}",
        md5=dvc_dir_md5(raw_dir),
        batches=len(batches),
        rows=sum(b["rows"] for b in batches),
    )
