"""The simulated source: deterministic per seed, and its drift knob moves what it says it moves."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.sources.simulated import REGIONS, churn_probability, simulate_churn, simulate_features

seeds = st.integers(min_value=0, max_value=2**32 - 1)
drifts = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=1, max_value=400), seed=seeds, drift=drifts)
def test_same_arguments_give_the_same_rows_byte_for_byte(n: int, seed: int, drift: float) -> None:
    assert parquet_bytes(simulate_churn(n, seed, drift)) == parquet_bytes(simulate_churn(n, seed, drift))


@settings(max_examples=15, deadline=None)
@given(seed=seeds)
def test_different_seeds_give_different_customers(seed: int) -> None:
    a, b = simulate_churn(200, seed), simulate_churn(200, seed + 1)
    assert set(a["customer_id"]).isdisjoint(b["customer_id"])


@settings(max_examples=10, deadline=None)
@given(seed=seeds)
def test_reference_population_is_imbalanced_with_gaps(seed: int) -> None:
    frame = simulate_churn(4000, seed)
    assert 0.1 < frame["churned"].mean() < 0.3
    for column in ("age", "payment_method", "total_charges"):
        assert frame[column].isna().any(), column
    assert frame["customer_id"].is_unique


@settings(max_examples=10, deadline=None)
@given(seed=seeds, low=st.floats(0.0, 0.5), step=st.floats(0.4, 0.5))
def test_covariate_drift_moves_prices_contracts_tenure_and_tickets(
    seed: int, low: float, step: float
) -> None:
    before, after = simulate_churn(4000, seed, low), simulate_churn(4000, seed, low + step)
    assert after["monthly_charges"].mean() > before["monthly_charges"].mean() + 3
    month_to_month = (after["contract"] == "month_to_month").mean() - (
        before["contract"] == "month_to_month"
    ).mean()
    assert month_to_month > 0.05
    assert after["tenure_months"].mean() < before["tenure_months"].mean()
    assert after["support_tickets"].mean() > before["support_tickets"].mean()


@settings(max_examples=10, deadline=None)
@given(seed=seeds, drift=drifts)
def test_drift_leaves_the_region_mix_alone(seed: int, drift: float) -> None:
    shares = simulate_churn(4000, seed, drift)["region"].value_counts(normalize=True)
    expected = dict(zip(REGIONS, (0.3, 0.25, 0.25, 0.2), strict=True))
    for region, share in expected.items():
        assert abs(shares[region] - share) < 0.04


@settings(max_examples=10, deadline=None)
@given(seed=seeds, low=st.floats(0.0, 0.6), step=st.floats(0.3, 0.4))
def test_concept_drift_turns_who_churns_among_the_same_customers(seed: int, low: float, step: float) -> None:
    features = simulate_features(2000, np.random.default_rng(seed), 0.0)
    before, after = churn_probability(features, low), churn_probability(features, low + step)
    assert after.mean() > before.mean()  # riskier on the whole ...
    ranks = pd.Series(before).rank().corr(pd.Series(after).rank())
    assert ranks < 0.97  # ... and not in the same order: a model of the old world ranks wrongly


@settings(max_examples=10, deadline=None)
@given(seed=seeds, drift=drifts)
def test_concept_apart_from_drift(seed: int, drift: float) -> None:
    same = parquet_bytes(simulate_churn(300, seed, drift))
    assert parquet_bytes(simulate_churn(300, seed, drift, concept=drift)) == same  # the default
    calm = simulate_churn(4000, seed, 0.0)
    shifted = simulate_churn(4000, seed, 0.0, concept=1.0)
    # Concept drift alone: the population stays (same draws of every feature), churn rises.
    features = [c for c in calm if c not in ("customer_id", "churned")]
    pd.testing.assert_frame_equal(calm[features], shifted[features])
    assert shifted["churned"].mean() > calm["churned"].mean() + 0.05
    with pytest.raises(ValueError, match="concept must be"):
        simulate_churn(10, seed, drift, concept=1.5)


def test_labels_follow_the_ground_truth() -> None:
    frame = simulate_churn(20000, 3)
    complete = frame.dropna()
    risk = churn_probability(complete.drop(columns=["customer_id", "churned"]))
    high, low = complete[risk > 0.5], complete[risk < 0.1]
    assert high["churned"].mean() > 0.5 > low["churned"].mean()


@pytest.mark.parametrize(("n", "drift"), [(0, 0.0), (-1, 0.0), (10, 1.5), (10, -0.1)])
def test_bad_arguments_are_refused(n: int, drift: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        simulate_churn(n, 1, drift)


def test_no_simulated_category_reads_as_missing() -> None:
    """A category spelled like a missing value ("none", "NA") would vanish at ingest."""
    from core.schema import normalise_missing

    frame = simulate_churn(3000, 5, 0.5)
    assert normalise_missing(frame).isna().sum().to_dict() == frame.isna().sum().to_dict()
