"""Deterministic train/test split by a hash of each row's id.

A row's side depends only on its id and the salt, never on which other rows exist, so a row
never moves between train and test as data grows. Hash buckets are independent of the label,
so class proportions match between the two sides in expectation.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from core.params import SplitParams
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)
BUCKETS = 10_000


def in_test(row_ids: pd.Series, params: SplitParams) -> np.ndarray:
    """True where a row belongs to the holdout."""
    salt = params.salt.encode()
    buckets = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(i).encode(), key=salt[:64], digest_size=8).digest(), "big")
            % BUCKETS
            for i in row_ids
        ),
        dtype=np.int64,
        count=len(row_ids),
    )
    return buckets < round(params.test_fraction * BUCKETS)


def split_frame(frame: pd.DataFrame, params: SplitParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    mask = in_test(frame["row_id"], params)
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def split(params: SplitParams, workspace: Workspace) -> tuple[int, int]:
    """Split the prepared dataset into train.parquet and test.parquet."""
    frame = pd.read_parquet(workspace.dataset_file)
    train, test = split_frame(frame, params)
    if train.empty or test.empty:
        raise ValueError(
            f"split left {len(train)} train and {len(test)} test rows: add data or change split.test_fraction"
        )
    workspace.split_dir.mkdir(parents=True, exist_ok=True)
    train.to_parquet(workspace.train_file, index=False)
    test.to_parquet(workspace.test_file, index=False)
    log.info("split", extra={"train_rows": len(train), "test_rows": len(test)})
    return len(train), len(test)
