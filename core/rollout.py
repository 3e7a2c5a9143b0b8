"""A canary rollout's terms in the registry: what every model-server replica and the decider read.

When `promote` finds a winner and `rollout.share` > 0 with a champion serving, the winner becomes
`@canary` (the champion stays `@champion`) and carries the rollout's terms as tags: the share, the
stable version it is judged against, when it started, the canary records it needs and the time it
has. Every replica reads the alias and its tags at each registry check, so all serve the same
split, and a restarted one resumes it; an entity id always lands on the same side
(`in_canary`). The decider (`pipeline.loop.decider`) ends the rollout; the registered model keeps the
last outcome (`last_outcome`), which the model servers export.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import BitloopError
from core.registry import CANARY, Tags, alias_version

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

PSI_BINS = 10
INFERENCE_BUCKETS = (
    0.0005, 0.0006, 0.00075, 0.001, 0.00125, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006,
    0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.125, 0.15, 0.2,
    0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (s) of the model servers' bitloop_inference_duration_seconds buckets. The decider
bounds each side's p95 model call by interpolating in the buckets (`decider.p95_bounds`): steps of
a quarter to a third from 0.5 ms to 0.5 s keep that reading close to the calls' own quantiles."""


@dataclass(frozen=True)
class Terms:
    """What a promotion starts a rollout with (params.yaml's rollout share, min_requests, max_minutes)."""

    share: float
    min_requests: int
    max_minutes: float
    expected_psi: float = 0.0


class RolloutError(BitloopError, RuntimeError):
    """Nothing to act on (no rollout under way, or the registry disagrees); the message says what."""


@dataclass(frozen=True)
class Rollout:
    """A rollout under way, as the registry records it."""

    model: str
    version: str
    stable: str
    share: float
    started_at: datetime
    min_requests: int
    max_minutes: float
    expected_psi: float = 0.0
    """The shift between the canary's and the stable version's predictions on the holdout where the
    canary won: the live shift may exceed it by `rollout.slo.max_psi`."""

    def elapsed_seconds(self, now: datetime) -> float:
        return max(0.0, (now - self.started_at).total_seconds())

    @property
    def deadline(self) -> datetime:
        return self.started_at + timedelta(minutes=self.max_minutes)

    def terms(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "stable": self.stable,
            "share": self.share,
            "started_at": self.started_at.isoformat(),
            "min_requests": self.min_requests,
            "deadline": self.deadline.isoformat(),
        }


def in_canary(entity_id: str, version: str, share: float) -> bool:
    """Whether an entity is answered by canary `version`: the same answer on every replica, for the
    whole rollout (a hash, not a random draw), and about `share` of all entities."""
    digest = hashlib.blake2b(f"{version}:{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def read_rollout(version: ModelVersion | None) -> Rollout | None:
    """The rollout a `@canary` version carries; None without one or with terms not written by bitloop."""
    if version is None:
        return None
    tags = dict(version.tags)
    try:
        share = float(tags[Tags.ROLLOUT_SHARE])
        started = datetime.fromisoformat(tags[Tags.ROLLOUT_STARTED_AT])
        stable = tags[Tags.ROLLOUT_STABLE]
        min_requests = int(tags[Tags.ROLLOUT_MIN_REQUESTS])
        max_minutes = float(tags[Tags.ROLLOUT_MAX_MINUTES])
        expected = float(tags.get(Tags.ROLLOUT_EXPECTED_PSI, "0"))
    except (KeyError, ValueError):
        return None
    if not 0.0 < share < 1.0 or started.tzinfo is None or min_requests < 1 or not max_minutes > 0:
        return None
    return Rollout(
        version.name, str(version.version), stable, share, started, min_requests, max_minutes, expected
    )


def start(
    client: MlflowClient,
    name: str,
    version: str,
    stable: str,
    terms: Terms,
    now: datetime | None = None,
) -> Rollout:
    """Make `version` the canary of `stable` on these terms: the terms first, then the alias, so a
    replica that sees the alias always finds them. They stay as started whatever params.yaml says
    later."""
    started = now or datetime.now(UTC)
    rollout = Rollout(
        name, version, stable, terms.share, started, terms.min_requests, terms.max_minutes, terms.expected_psi
    )
    tags = {
        Tags.ROLLOUT_SHARE: f"{rollout.share:g}",
        Tags.ROLLOUT_STABLE: stable,
        Tags.ROLLOUT_STARTED_AT: rollout.started_at.isoformat(),
        Tags.ROLLOUT_MIN_REQUESTS: str(rollout.min_requests),
        Tags.ROLLOUT_MAX_MINUTES: f"{rollout.max_minutes:g}",
        Tags.ROLLOUT_EXPECTED_PSI: f"{rollout.expected_psi:.6f}",
        Tags.DECISION: "canary",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if Tags.ROLLOUT_OUTCOME in (client.get_model_version(name, version).tags or {}):
        # Started again after an earlier rollout of it ended: undecided, not that ending resumed.
        client.delete_model_version_tag(name, version, Tags.ROLLOUT_OUTCOME)
    under_way = read_rollout(alias_version(client, name, CANARY))
    if under_way is not None and under_way.version != version:  # a newer winner takes its place
        reason = f"superseded by version {version} before it was decided"
        client.set_model_version_tag(name, under_way.version, Tags.DECISION, "superseded")
        client.set_model_version_tag(name, under_way.version, Tags.DECISION_REASON, reason)
        log.warning("canary superseded", extra={"model": name, "version": under_way.version, "by": version})
    client.set_registered_model_alias(name, CANARY, version)
    log.info("canary started", extra={"model": name, **rollout.terms()})
    return rollout


def current(client: MlflowClient, name: str) -> Rollout | None:
    """The rollout under way, if any."""
    return read_rollout(alias_version(client, name, CANARY))


def last_outcome(tags: dict[str, str]) -> dict[str, Any] | None:
    """The last rollout's outcome the registered model records; None before any or when unreadable."""
    try:
        found: dict[str, Any] = json.loads(tags[Tags.ROLLOUT_LAST])
        datetime.fromisoformat(found["at"])
        return found
    except (KeyError, ValueError, TypeError):
        return None


def shift_class(classes: Iterable[str]) -> str:
    """The class whose probability a classifier's predictions are compared by: any one does, the
    same on both sides; the first in text order."""
    return min(classes)


def score_shift(base: np.ndarray, new: np.ndarray) -> float:
    """PSI of `new` scores against `base` scores over `base`'s deciles (a class's probability for a
    classifier, the prediction for a regressor): 0 for the same distribution."""
    from core.drift_statistics import stability_index

    edges = np.unique(np.quantile(base, np.linspace(0.0, 1.0, PSI_BINS + 1))[1:-1])
    shares = [
        np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1) / len(v)
        for v in (base, new)
    ]
    return stability_index(shares[0], shares[1])
