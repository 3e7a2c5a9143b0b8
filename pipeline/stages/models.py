"""Candidate models: each one scikit-learn Pipeline with its preprocessing fitted inside."""

from __future__ import annotations

from typing import Any

from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from core.params import CandidateParams, Task
from core.schema import MISSING_CATEGORY, DatasetSchema


def _estimator(candidate: CandidateParams, task: Task, seed: int) -> BaseEstimator:
    kwargs: dict[str, Any] = candidate.estimator_params
    if candidate.kind == "linear":
        alpha = float(kwargs.pop("alpha", 1.0))
        if task == "classification":
            return LogisticRegression(C=1.0 / alpha, max_iter=int(kwargs.pop("max_iter", 2000)), **kwargs)
        return Ridge(alpha=alpha, **kwargs)
    if candidate.kind == "random_forest":
        cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
        return cls(random_state=seed, n_jobs=1, **kwargs)
    cls_hgb = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    return cls_hgb(random_state=seed, **kwargs)


def build_pipeline(
    candidate: CandidateParams, schema: DatasetSchema, seed: int, max_categories: int
) -> Pipeline:
    """Imputation, missing-value indicators, scaling (linear only) and one-hot encoding, then the
    estimator; every step compiles to ONNX (`pipeline.stages.compile_onnx`)."""
    numeric_steps: list[Any] = [SimpleImputer(strategy="median")]
    if candidate.kind == "linear":
        numeric_steps.append(StandardScaler())
    categorical = make_pipeline(
        SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY),
        OneHotEncoder(
            handle_unknown="infrequent_if_exist", max_categories=max_categories, sparse_output=False
        ),
    )
    preprocess = ColumnTransformer(
        [
            ("numeric", make_pipeline(*numeric_steps), schema.numeric),
            # A column of its own, not SimpleImputer(add_indicator=True), which skl2onnx cannot convert.
            ("missing", MissingIndicator(features="missing-only", error_on_new=False), schema.numeric),
            ("categorical", categorical, schema.categorical),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", preprocess), ("model", _estimator(candidate, schema.task, seed))])
