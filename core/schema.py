"""The dataset's schema: which columns are features, of which kind, and how raw cells are typed.

Raw batches keep cells as the source gave them (CSV cells are strings); `coerce` turns them into
the schema's types and counts what could not be parsed, so validation can name the column.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from core.params import DataParams, Task

MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "-", "#n/a"})
NUMERIC_PARSE_SHARE = 0.9  # a text column is numeric when this share of its filled cells parse
ID_MIN_ROWS = 20
MISSING_CATEGORY = "__missing__"
"""A missing category inside a model: what its imputer fills in and what its compiled graph is fed."""
Label = str | int


class FeatureSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    kind: Literal["numeric", "categorical"]
    categories: tuple[str, ...] = ()
    nullable: bool = True


class DatasetSchema(BaseModel):
    """What a model trained on this data expects: the contract the API serves."""

    model_config = ConfigDict(frozen=True)
    task: Task
    target: str
    id_column: str | None
    features: tuple[FeatureSpec, ...]
    classes: tuple[Label, ...] = ()
    constant: tuple[str, ...] = ()
    """Columns with a single value (or none) in the batch the contract was learned from: left out
    of the features, since they cannot tell rows apart and a model keeping one as a category
    would refuse every other value."""

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    @classmethod
    def read(cls, path: Path) -> DatasetSchema:
        """The schema `validate` wrote (`data/<model>/prepared/schema.json`)."""
        return cls.model_validate_json(path.read_text())

    def frame(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        """Records keyed by feature name as the frame the pipeline was trained on: numbers as floats,
        categories as objects with NaN for a missing one (scikit-learn's imputer does not see a None
        in a column of Nones as missing, so a lone record would be scored as an unknown category)."""
        # Column by column into typed arrays: several times faster than per-column astype.
        return pd.DataFrame(
            {
                spec.name: np.array(
                    [r[spec.name] for r in records]
                    if spec.kind == "numeric"
                    else [np.nan if r[spec.name] is None else r[spec.name] for r in records],
                    dtype=float if spec.kind == "numeric" else object,
                )
                for spec in self.features
            }
        )

    def fingerprint(self) -> str:
        """Identity of the task and feature set; categories and classes may grow without change."""
        key = json.dumps([self.task, self.target, [(f.name, f.kind) for f in self.features]])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def _is_text(series: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def normalise_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """Strip text cells and turn the usual blank/NA spellings into real missing values."""
    out = frame.copy()
    for column in out.columns:
        if _is_text(out[column]):
            text = out[column].astype("str").str.strip()
            text = text.mask(text.str.lower().isin(MISSING_TOKENS) | out[column].isna())
            out[column] = text
    return out


def _parse_share(series: pd.Series) -> float:
    filled = series.dropna()
    if filled.empty:
        return 0.0
    return float(pd.to_numeric(filled, errors="coerce").notna().mean())


def _looks_like_id(series: pd.Series) -> bool:
    filled = series.dropna()
    return (
        _is_text(series)
        and len(series) >= ID_MIN_ROWS
        and len(filled) == len(series)
        and filled.nunique() == len(series)
        and _parse_share(series) < NUMERIC_PARSE_SHARE
    )


def normalise_labels(series: pd.Series, task: Task) -> pd.Series:
    """Labels as clean ints (when every label is an integer) or strings; regression as floats."""
    if task == "regression":
        return pd.to_numeric(series, errors="coerce").astype("float64")
    if _is_text(series):
        numbers = pd.to_numeric(series, errors="coerce")
        if numbers.notna().sum() == series.notna().sum() and (numbers.dropna() % 1 == 0).all():
            series = numbers
        else:
            return series.astype("str").mask(series.isna())
    return series.astype("Int64") if series.isna().any() else series.astype("int64")


def infer_schema(frame: pd.DataFrame, data: DataParams) -> DatasetSchema:
    """Infer feature kinds, the id column and the classes from one (normalised) batch."""
    if data.target not in frame.columns:
        raise KeyError(f"target column {data.target!r} is not in the data; columns are {list(frame.columns)}")
    id_column = data.id_column if data.id_column in frame.columns else None
    features = []
    constant: list[str] = []
    for column in frame.columns:
        if column in (data.target, id_column):
            continue
        series = frame[column]
        if id_column is None and data.id_column is None and _looks_like_id(series):
            id_column = column
            continue
        if series.dropna().astype(str).nunique() <= 1:
            constant.append(column)
            continue
        numeric = not _is_text(series) or _parse_share(series) >= NUMERIC_PARSE_SHARE
        if numeric:
            features.append(FeatureSpec(name=column, kind="numeric"))
        else:
            categories = tuple(sorted(series.dropna().astype(str).unique()))
            features.append(FeatureSpec(name=column, kind="categorical", categories=categories))
    classes: tuple[Label, ...] = ()
    if data.task == "classification":
        labels = normalise_labels(frame[data.target], data.task).dropna()
        classes = tuple(sorted(v.item() if isinstance(v, np.generic) else v for v in labels.unique()))
    return DatasetSchema(
        task=data.task,
        target=data.target,
        id_column=id_column,
        features=tuple(features),
        classes=classes,
        constant=tuple(constant),
    )


def coerce(frame: pd.DataFrame, schema: DatasetSchema) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Type a normalised batch per the schema; returns the frame and, per column, unparsable cells."""
    out = pd.DataFrame(index=frame.index)
    invalid: dict[str, list[str]] = {}
    for spec in schema.features:
        if spec.name not in frame.columns:
            continue
        series = frame[spec.name]
        if spec.kind == "numeric":
            numbers = pd.to_numeric(series, errors="coerce").astype("float64")
            bad = series[numbers.isna() & series.notna()]
            if len(bad):
                invalid[spec.name] = [str(v) for v in bad]
            out[spec.name] = numbers
        else:
            out[spec.name] = series.astype("str").mask(series.isna()).astype(object)
    if schema.target in frame.columns:
        out[schema.target] = normalise_labels(frame[schema.target], schema.task)
    return out, invalid


def with_categories(schema: DatasetSchema, frame: pd.DataFrame) -> DatasetSchema:
    """The schema with categorical features' categories set to those seen in `frame`."""
    features = tuple(
        spec.model_copy(
            update={
                "categories": tuple(sorted(frame[spec.name].dropna().unique())),
                "nullable": bool(frame[spec.name].isna().any()),
            }
        )
        if spec.kind == "categorical"
        else spec.model_copy(update={"nullable": bool(frame[spec.name].isna().any())})
        for spec in schema.features
    )
    return schema.model_copy(update={"features": features})


BATCH_COLUMN = "bitloop_batch"
"""The prepared dataset's record of which raw batch (its position in the store) a row came from, so
promotion can compare candidate and champion on the newest data; never a feature."""


def row_ids(frame: pd.DataFrame, id_column: str | None) -> pd.Series:
    """A stable identity per row: the id column when there is one, else a hash of its cells."""
    if id_column and id_column in frame.columns:
        return frame[id_column].astype("str").str.strip().rename("row_id")
    hashed = pd.util.hash_pandas_object(frame.astype("str"), index=False)
    return hashed.map(lambda h: f"h{h:016x}").astype("str").rename("row_id")
