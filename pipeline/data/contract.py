"""The data contract of a workspace: what its accepted data looks like, so later batches are judged
against it rather than against themselves.

The first accepted batch fixes the feature kinds, the id column and the classes; every accepted
batch widens the learned value range of each numeric column. It is rebuilt from the raw store on
every run (batches in order), so it is as reproducible as the store, and written beside the
prepared dataset for the model's record.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from core.params import Task
from core.schema import NUMERIC_PARSE_SHARE, DatasetSchema, normalise_labels


class DataContract(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)
    dataset: DatasetSchema
    learned_ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)
    """[min, max] of the accepted values of each numeric feature."""
    batches: tuple[str, ...] = ()
    """The batches the contract was learned from."""

    def bounds(
        self, column: str, explicit: dict[str, tuple[float, float]], tolerance: float
    ) -> tuple[float, float] | None:
        """The range a value of `column` must lie in: `validate.ranges` when set, else the learned one
        widened by `tolerance` widths on each side, and never below 0 for a never-negative column."""
        if column in explicit:
            return explicit[column]
        if column not in self.learned_ranges:
            return None
        low, high = self.learned_ranges[column]
        width = (high - low) or max(abs(high), 1.0)
        lower, upper = low - tolerance * width, high + tolerance * width
        return (max(lower, 0.0) if low >= 0 else lower), upper

    def learn(self, batch: str, typed: pd.DataFrame) -> DataContract:
        """The contract after accepting `typed` (rows that passed validation)."""
        ranges = dict(self.learned_ranges)
        for column in self.dataset.numeric:
            values = typed[column].to_numpy(dtype=float, na_value=np.nan)
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            low, high = float(values.min()), float(values.max())
            if column in ranges:
                low, high = min(low, ranges[column][0]), max(high, ranges[column][1])
            ranges[column] = (low, high)
        return self.model_copy(update={"learned_ranges": ranges, "batches": (*self.batches, batch)})


def parse_labels(
    raw: pd.Series, task: Task, classes: tuple[str | int, ...] = ()
) -> tuple[pd.Series, pd.Series]:
    """Typed labels and the mask of labels that are there but unusable.

    Regression: labels that are not finite numbers. Classification: when the known classes (or,
    with none known, at least NUMERIC_PARSE_SHARE of this batch's labels) are integers, a label that
    is not an integer is unusable, so text such as "maybe" among 0/1 never becomes a class.
    """
    present = raw.notna()
    if task == "regression":
        numbers = pd.to_numeric(raw, errors="coerce").astype("float64")
        finite = numbers.map(lambda v: math.isfinite(v) if pd.notna(v) else False)
        return numbers.where(finite), present & ~finite
    numbers = pd.to_numeric(raw, errors="coerce")
    integral = numbers.notna() & (numbers % 1 == 0)
    integer_classes = (
        all(isinstance(c, int) for c in classes)
        if classes
        else (present.any() and integral[present].mean() >= NUMERIC_PARSE_SHARE)
    )
    if integer_classes:
        unusable = present & ~integral
        return numbers.where(integral).astype("Int64"), unusable
    return normalise_labels(raw.astype("str").mask(~present), task), pd.Series(False, index=raw.index)
