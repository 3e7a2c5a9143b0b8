"""The reports one stage writes and the next reads: `registered.json` (register → promote) and
`promotion.json` (promote → summary, the DAG, `make up`). Written and read through these models,
so a renamed or missing field fails where it is written, not three stages later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.dataclasses import dataclass

from pipeline.data.store import DatasetVersion
from pipeline.workspace import read_json, write_json


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def read(cls, path: Path) -> Any:
        return cls.model_validate(read_json(path))

    def write(self, path: Path) -> dict[str, Any]:
        """Write the fields that were set (NaN metrics stay NaN); returns what was written."""
        content = self.model_dump(exclude_unset=True, by_alias=True)
        write_json(path, content)
        return content


class RegisteredCandidate(_Report):
    run_id: str
    version: str | None
    """The registry version; None when the candidate missed the floors and was not registered."""
    metrics: dict[str, float]
    floor_failures: list[str]
    unchanged_since: str | None = None
    """The data version of an earlier registration of this very model on these very rows: nothing
    new was registered, that version stands for it."""


class Registration(_Report):
    """What `register` did: every candidate's run, and the best one that was registered."""

    model_name: str
    data_version: DatasetVersion
    primary_metric: str
    best: str | None
    git_commit: str
    candidates: dict[str, RegisteredCandidate]


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None


class CandidateSeen(_Report):
    name: str
    version: str
    metrics: dict[str, float]


class ChampionSeen(_Report):
    version: str
    metrics: dict[str, float] | None = None
    """Its scores on this holdout; None when it could not be compared (schema change allowed)."""


class CanarySeen(_Report):
    """The rollout a promotion started: the winner answers `share` of traffic beside `stable`."""

    share: float
    stable: str


class PromotionReport(_Report):
    """What `promote` decided and why, with the numbers it compared."""

    model_name: str
    data_version: str
    metric: str
    margin: float
    floors: dict[str, float]
    promoted: bool = False
    reason: str = ""
    candidate: CandidateSeen | None = None
    champion: ChampionSeen | None = None
    already_champion: bool = False
    decision: Decision | None = None
    canary: CanarySeen | None = None
    """Set when the winner became @canary (rollout.share > 0) instead of @champion."""
    candidates: dict[str, list[str]] | None = None
    """Each candidate's floor failures, when none was registered."""
    compared_rows: str | None = None
    """The holdout rows both were scored on (`promote.recent_rows`), when there was a champion."""
