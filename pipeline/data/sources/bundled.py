"""Datasets that ship inside scikit-learn (no download at run time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets

from core.params import Task

BUNDLED: dict[str, tuple[Callable[..., Any], Task]] = {
    "breast_cancer": (datasets.load_breast_cancer, "classification"),
    "diabetes": (datasets.load_diabetes, "regression"),
    "digits": (datasets.load_digits, "classification"),
    "iris": (datasets.load_iris, "classification"),
    "wine": (datasets.load_wine, "classification"),
}


def load_bundled(name: str, target: str) -> pd.DataFrame:
    """A bundled dataset as one frame whose label column is named `target`.

    Classification labels carry the names the dataset gives its classes ("malignant", "benign"),
    so predictions, metrics and dashboards say what a class means instead of a bare code.
    """
    if name not in BUNDLED:
        raise ValueError(
            f"data.name {name!r} is not a dataset bundled with scikit-learn; choose one of {sorted(BUNDLED)}"
        )
    loader, _ = BUNDLED[name]
    bunch = loader(as_frame=True)
    frame = pd.DataFrame(bunch.frame).rename(columns={"target": target}).reset_index(drop=True)
    names = getattr(bunch, "target_names", None)
    if BUNDLED[name][1] == "classification" and names is not None:
        frame[target] = np.asarray(names)[frame[target].to_numpy()].tolist()
    return frame


def bundled_task(name: str) -> Task:
    return BUNDLED[name][1]
