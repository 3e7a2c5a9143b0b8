"""Append new rows from the configured source to the immutable raw store and version it.

The raw store (`data/raw/`) holds one Parquet file per batch plus `manifest.json`; batches are
never rewritten. Rows already in the store (same id, or same cells when there is no id) are
not appended again, so re-running ingest on the same source is a no-op. The dataset version is
the DVC content hash of `data/raw` (what `dvc.lock` records) plus a counter: v<number of batches>.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.params import Params
from pipeline.schema import row_ids
from pipeline.sources import describe_batch, load_batch
from pipeline.workspace import Workspace, read_json, write_json

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DatasetVersion:
    label: str  # v1, v2, ...
    md5: str  # DVC's content hash of data/raw
    batches: int
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.label, "md5": self.md5, "batches": self.batches, "rows": self.rows}

    @classmethod
    def from_file(cls, path: Path) -> DatasetVersion:
        raw = read_json(path)
        return cls(label=raw["version"], md5=raw["md5"], batches=raw["batches"], rows=raw["rows"])


@dataclass(frozen=True)
class IngestResult:
    version: DatasetVersion
    appended_rows: int
    batch_file: str | None


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


def dataset_version(raw_dir: Path) -> DatasetVersion:
    batches = read_manifest(raw_dir)
    return DatasetVersion(
        label=f"v{len(batches)}",
        md5=dvc_dir_md5(raw_dir),
        batches=len(batches),
        rows=sum(b["rows"] for b in batches),
    )


def ingest(
    params: Params,
    workspace: Workspace,
    *,
    seed: int | None = None,
    drift: float | None = None,
    source_url: str | None = None,
) -> IngestResult:
    """Fetch a batch from the source and append the rows the store does not hold yet.

    `source_url` points the simulated source at a data-source service (other sources ignore it).
    """
    data = params.data
    if source_url and data.source == "simulated":
        data = data.model_copy(update={"path": source_url})
    spec = describe_batch(data, seed, drift)
    log.info("fetching batch", extra={"batch": spec})
    frame = load_batch(data, seed, spec.get("drift", drift)).reset_index(drop=True)
    raw_dir = workspace.raw_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(raw_dir)

    known: set[str] = set()
    for _, stored in read_raw_batches(raw_dir):
        known.update(row_ids(stored, data.id_column))
    fresh = frame[~row_ids(frame, data.id_column).isin(known).to_numpy()]

    batch_file = None
    if fresh.empty:
        log.info("no new rows: the store already holds every row of this batch")
    else:
        buffer = io.BytesIO()
        fresh.to_parquet(buffer, index=False)
        content = buffer.getvalue()
        batch_file = f"batch-{len(manifest) + 1:05d}.parquet"
        (raw_dir / batch_file).write_bytes(content)
        manifest.append(
            {
                "file": batch_file,
                "rows": len(fresh),
                "skipped_known_rows": len(frame) - len(fresh),
                "sha256": hashlib.sha256(content).hexdigest(),
                "source": spec,
            }
        )
        write_json(raw_dir / MANIFEST, {"batches": manifest})
        log.info("appended batch", extra={"file": batch_file, "rows": len(fresh)})

    version = dataset_version(raw_dir)
    write_json(workspace.version_file, version.as_dict())
    return IngestResult(version=version, appended_rows=len(fresh), batch_file=batch_file)
