"""A seeded customer-churn table with a known ground truth and a drift knob.

`drift` in [0, 1] moves the population (covariate drift: pricier plans, more fibre and
month-to-month contracts, shorter tenure, more support tickets, younger customers) and the
relationship itself (concept drift: customers grow more sensitive to price and to support
problems, month-to-month contracts stop predicting churn and long tenure stops protecting), so the
monitoring loop has something real to detect. `concept`, when given, sets the
relationship apart from the population: `drift=1, concept=0` is covariate drift alone, `drift=0,
concept=1` concept drift alone, whose inputs do not move.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TARGET = "churned"
ID_COLUMN = "customer_id"
CONTRACTS = ("month_to_month", "one_year", "two_year")
INTERNET = ("dsl", "fiber", "no_internet")
PAYMENTS = ("electronic_check", "mailed_check", "bank_transfer", "credit_card")
REGIONS = ("north", "south", "east", "west")
# What the simulator guarantees: validation rejects a simulated batch outside these.
RANGES: dict[str, tuple[float, float]] = {
    "age": (18, 95),
    "tenure_months": (0, 72),
    "monthly_charges": (15, 160),
    "total_charges": (0, 72 * 160 * 1.08),
    "support_tickets": (0, 30),
    "num_products": (1, 6),
}
# Share of values blanked per column, as real CRM exports have gaps.
MISSING_RATES = {"age": 0.02, "payment_method": 0.03, "monthly_charges": 0.01}


def _mix(base: tuple[float, ...], towards: tuple[float, ...], drift: float) -> np.ndarray:
    p = (1 - drift) * np.asarray(base) + drift * np.asarray(towards)
    return np.asarray(p / p.sum())


def churn_logit(features: pd.DataFrame, drift: float = 0.0) -> np.ndarray:
    """The ground-truth log-odds of churn for complete (unblanked) features."""
    month_to_month = (features["contract"] == "month_to_month").to_numpy(float)
    one_year = (features["contract"] == "one_year").to_numpy(float)
    fiber = (features["internet_service"] == "fiber").to_numpy(float)
    e_check = (features["payment_method"] == "electronic_check").to_numpy(float)
    price_sensitivity = 0.018 + 0.03 * drift
    ticket_effect = 0.28 + 0.45 * drift
    # The relation turns, not only sharpens: month-to-month customers grow loyal (a flexible plan)
    # and long tenure stops protecting, so a model of the old world ranks customers wrongly.
    contract_effect = 1.3 - 2.0 * drift
    tenure_effect = -0.035 + 0.045 * drift
    return np.asarray(
        -2.3
        + 0.3 * drift
        + contract_effect * month_to_month
        + 0.25 * one_year
        + tenure_effect * features["tenure_months"].to_numpy(float)
        + price_sensitivity * (features["monthly_charges"].to_numpy(float) - 65.0)
        + ticket_effect * features["support_tickets"].to_numpy(float)
        + 0.45 * fiber
        + 0.5 * e_check
        - 0.25 * (features["num_products"].to_numpy(float) - 1)
        - 0.012 * (features["age"].to_numpy(float) - 45.0)
    )


def churn_probability(features: pd.DataFrame, drift: float = 0.0) -> np.ndarray:
    """The ground-truth probability of churn for complete (unblanked) features."""
    return np.asarray(1.0 / (1.0 + np.exp(-churn_logit(features, drift))))


def simulate_features(n: int, rng: np.random.Generator, drift: float) -> pd.DataFrame:
    """Complete customer features (no missing values) drawn for a given drift level."""
    contract = rng.choice(CONTRACTS, size=n, p=_mix((0.5, 0.28, 0.22), (0.8, 0.12, 0.08), drift))
    internet = rng.choice(INTERNET, size=n, p=_mix((0.35, 0.45, 0.2), (0.2, 0.72, 0.08), drift))
    payment = rng.choice(PAYMENTS, size=n, p=_mix((0.33, 0.22, 0.22, 0.23), (0.5, 0.15, 0.17, 0.18), drift))
    region = rng.choice(REGIONS, size=n, p=(0.3, 0.25, 0.25, 0.2))
    mean_tenure = np.select([contract == "month_to_month", contract == "one_year"], [14.0, 30.0], 50.0)
    tenure = np.clip(np.floor(rng.exponential(mean_tenure * (1 - 0.4 * drift))), 0, 72).astype(np.int64)
    base_charge = np.select([internet == "no_internet", internet == "dsl"], [22.0, 52.0], 86.0)
    spread = np.select([internet == "no_internet", internet == "dsl"], [4.0, 11.0], 14.0)
    monthly = np.clip(rng.normal(base_charge + 18.0 * drift, spread), 15.0, 160.0).round(2)
    total = (tenure * monthly * rng.uniform(0.92, 1.08, size=n)).round(2)
    tickets = np.clip(rng.poisson(0.7 + 0.6 * (internet == "fiber") + 1.2 * drift), 0, 30)
    age = np.clip(np.round(rng.normal(46.0 - 9.0 * drift, 14.0, size=n)), 18, 95).astype(np.int64)
    return pd.DataFrame(
        {
            "age": age,
            "region": region,
            "contract": contract,
            "internet_service": internet,
            "payment_method": payment,
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "support_tickets": tickets.astype(np.int64),
            "num_products": (1 + rng.binomial(5, 0.22, size=n)).astype(np.int64),
        }
    )


def simulate_churn(n: int, seed: int, drift: float = 0.0, concept: float | None = None) -> pd.DataFrame:
    """A batch of `n` customers: id, features with realistic gaps, and the churn label.

    Deterministic per (n, seed, drift, concept): the same arguments give the same rows, byte for
    byte. `concept` (default: `drift`) is the drift of the relationship between features and label.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    for name, level in (("drift", drift), ("concept", drift if concept is None else concept)):
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {level}")
    # The same customers and random draws whatever `concept` is: only who churns among them changes.
    rng = np.random.default_rng([seed, round(drift * 1_000_000)])
    features = simulate_features(n, rng, drift)
    churned = rng.random(n) < churn_probability(features, drift if concept is None else concept)
    churned = churned.astype(np.int64)
    ids = rng.integers(0, 2**62, size=n)
    frame = features.astype({"age": "float64", "monthly_charges": "float64", "total_charges": "float64"})
    # New customers have not been billed yet: their total is blank, as in real exports.
    frame.loc[frame["tenure_months"] == 0, "total_charges"] = np.nan
    for column, rate in MISSING_RATES.items():
        frame.loc[rng.random(n) < rate, column] = np.nan
    frame.insert(0, ID_COLUMN, [f"C{v:016x}" for v in ids])
    frame[TARGET] = churned
    return frame
