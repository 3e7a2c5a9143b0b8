"""Append new rows from the configured source to the immutable raw store and version it.

Rows already in the store (same id, or same cells when there is no id) are not appended again,
so re-running ingest on the same source is a no-op; rows of a withdrawn batch may be ingested
again (corrected). The store itself (manifest, versions, withdrawals) is `pipeline.data.store`.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

from core.params import Params
from core.schema import row_ids
from pipeline.data.sources import describe_batch, load_batch
from pipeline.data.store import (
    MANIFEST,
    DatasetVersion,
    dataset_version,
    read_manifest,
    read_raw_batches,
    withdrawn_batches,
)
from pipeline.workspace import Workspace, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    version: DatasetVersion
    appended_rows: int
    batch_file: str | None


def ingest(
    params: Params,
    workspace: Workspace,
    *,
    seed: int | None = None,
    drift: float | None = None,
    concept: float | None = None,
    source_url: str | None = None,
) -> IngestResult:
    """Fetch a batch from the source and append the rows the store does not hold yet.

    `source_url` points the simulated source at a data-source service (other sources ignore it);
    `concept` (with `drift`) draws a simulated batch whose relation has moved apart from its inputs.
    """
    data = params.data
    if source_url and data.source == "simulated":
        data = data.model_copy(update={"path": source_url})
    spec = describe_batch(data, seed, drift, concept)
    log.info("fetching batch", extra={"batch": spec})
    frame = load_batch(data, seed, spec.get("drift", drift), spec.get("concept")).reset_index(drop=True)
    raw_dir = workspace.raw_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(raw_dir)

    known: set[str] = set()
    withdrawn = withdrawn_batches(raw_dir)
    for name, stored in read_raw_batches(raw_dir):
        if name not in withdrawn:  # a withdrawn batch's rows may come again, corrected
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
