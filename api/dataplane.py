"""The data plane: pick the variant → predict → record → shadow.

In the shape of MLServer's data plane: the routes parse a request and turn the answer into JSON;
everything between (which model answers, the micro-batcher, the failure policy, the prediction
log, the metrics, shadow scoring) happens here. Errors are this module's own: the app maps
`Unavailable` to 503 and `UnscorableInput` to 422.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from api import metrics
from api.batching import MicroBatcher
from api.manager import ModelManager
from api.model import (
    ERROR_WINDOW_MIN_OUTCOMES,
    ERROR_WINDOW_SECONDS,
    Scored,
    ServedModel,
    UnscorableRecord,
    split_scored,
)
from api.predlog import PredictionLog
from api.settings import ApiSettings
from api.validation import render_errors
from core.errors import InvalidInput, ServiceUnavailable
from core.predictions.rows import SHADOW, Row
from core.rollout import in_canary

log = logging.getLogger(__name__)


class Unavailable(ServiceUnavailable, RuntimeError):
    """No model can answer now; the message says why, in words fit for the caller (a 503)."""


class UnscorableInput(InvalidInput, ValueError):
    """Records the schema accepted but the model cannot score (a 422); `errors` name each field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} records cannot be scored")
        self.errors = errors

    def detail(self) -> Any:
        return render_errors(self.errors)


@dataclass(frozen=True)
class Answer:
    model: ServedModel
    variant: str
    request_id: str
    labels: list[Any]
    probabilities: list[dict[str, float]] | None
    versions: list[str] | None = None
    """Each row's version, when a rollout split the batch between the canary and the stable one."""


class ScoringService:
    def __init__(
        self, settings: ApiSettings, manager: ModelManager, batcher: MicroBatcher, log: PredictionLog
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.batcher = batcher
        self.log = log
        self._shadows: set[asyncio.Task[None]] = set()

    def champion(self) -> ServedModel:
        """The served champion; Unavailable while none is loaded."""
        champion = self.manager.champion
        if champion is None:
            raise Unavailable(
                "; ".join(
                    [
                        f"no model has been promoted to {self.manager.name}@champion yet: run the training "
                        "pipeline (make up or make repro)",
                        *self.manager.problems(),
                    ]
                )
            )
        return champion

    def pick(self, entity_id: str | None = None) -> tuple[ServedModel, str]:
        """The model answering this request (canary and A/B aware; an entity id keeps its side of a
        rollout); Unavailable while no champion is loaded, or while the prediction log fails and the
        server is set to refuse rather than answer unlogged."""
        champion = self.champion()
        if self.settings.log_failure == "refuse" and self.log.status().error is not None:
            raise Unavailable(
                "the prediction log cannot be written and this server refuses to answer unlogged "
                "(BITLOOP_API_LOG_FAILURE=refuse); try again later"
            )
        model, variant = self.manager.pick(entity_id)
        return model or champion, variant

    async def predict(
        self, model: ServedModel, variant: str, record: dict[str, Any], entity_id: str | None = None
    ) -> Answer:
        """One record, micro-batched with concurrent requests; `entity_id` is logged with it. A record
        the canary fails on is answered by the stable version instead (and counted against the canary)."""
        try:
            label, probabilities = await self.batcher.submit(model, variant, record)
        except Exception as err:
            stable = self._fallback(model, variant, {(): err})
            if stable is None:
                raise self._failure(model, variant, {(): err}) from None
            return await self.predict(stable, "champion", record, entity_id)
        return self._answer(
            model, variant, [record], [label], None if probabilities is None else [probabilities], [entity_id]
        )

    async def predict_batch(
        self, model: ServedModel, variant: str, records: list[dict[str, Any]], ids: list[str] | None = None
    ) -> Answer:
        """A batch in one model call per side on an inference thread; `ids` (one per record) are logged
        with it. During a rollout a batch with ids is split by entity, each on its side; the records
        the canary fails on are answered by the stable version."""
        sides = self._sides(model, variant, ids, len(records))
        outcomes: list[Scored | Exception | None] = [None] * len(records)
        answered_by: list[tuple[ServedModel, str]] = [(model, variant)] * len(records)
        for served, side, rows in sides:
            scored = await self._score([records[i] for i in rows], served, side)
            failed = {i: o for i, o in zip(rows, scored, strict=True) if isinstance(o, Exception)}
            stable = self._fallback(served, side, failed) if failed else None
            if stable is not None:
                again = await self._score([records[i] for i in failed], stable, "champion")
                for i, outcome in zip(failed, again, strict=True):
                    outcomes[i], answered_by[i] = outcome, (stable, "champion")
            for i, outcome in zip(rows, scored, strict=True):
                if i not in failed or stable is None:
                    outcomes[i], answered_by[i] = outcome, (served, side)
        failures = {("records", i): o for i, o in enumerate(outcomes) if isinstance(o, Exception)}
        if failures:
            first = answered_by[next(i for i, o in enumerate(outcomes) if isinstance(o, Exception))]
            raise self._failure(first[0], first[1], failures)
        scored_outcomes = [o for o in outcomes if o is not None and not isinstance(o, Exception)]
        labels, probabilities = split_scored(scored_outcomes, model.schema.task)
        request_id = uuid.uuid4().hex
        entities: list[str | None] = list(ids) if ids is not None else [None] * len(records)
        groups: dict[int, list[int]] = {}
        for i, (served, _) in enumerate(answered_by):
            groups.setdefault(id(served), []).append(i)
        for rows in groups.values():
            served, side = answered_by[rows[0]]
            self._record(
                served,
                side,
                request_id,
                [records[i] for i in rows],
                [labels[i] for i in rows],
                None if probabilities is None else [probabilities[i] for i in rows],
                rows,
                [entities[i] for i in rows],
            )
        self._shadow(request_id, records, entities)
        versions = [served.version for served, _ in answered_by]
        main = max(groups.values(), key=len)
        top, top_variant = answered_by[main[0]]
        return Answer(
            top, top_variant, request_id, labels, probabilities, versions if len(groups) > 1 else None
        )

    def _sides(
        self, model: ServedModel, variant: str, ids: list[str] | None, rows: int
    ) -> list[tuple[ServedModel, str, list[int]]]:
        """Which rows each side answers: all of them on the picked side, unless a rollout is under way
        and the rows carry entity ids, which keep their side."""
        canary, rollout, champion = self.manager.canary, self.manager.rollout, self.manager.champion
        if (
            ids is None
            or canary is None
            or rollout is None
            or champion is None
            or variant not in ("canary", "champion")
        ):
            return [(model, variant, list(range(rows)))]
        on = [in_canary(entity, canary.version, rollout.share) for entity in ids]
        sides = [
            (canary, "canary", [i for i, c in enumerate(on) if c]),
            (champion, "champion", [i for i, c in enumerate(on) if not c]),
        ]
        return [side for side in sides if side[2]]

    async def _score(
        self, records: list[dict[str, Any]], model: ServedModel, variant: str
    ) -> list[Scored | Exception]:
        """One model call on an inference thread, timed like the micro-batcher's."""
        started = time.perf_counter()
        outcomes: list[Scored | Exception] = await self.batcher.run_in_thread(model.score, records)
        metrics.INFERENCE.labels(model.name, model.version, variant).observe(time.perf_counter() - started)
        return outcomes

    def _fallback(
        self, model: ServedModel, variant: str, failures: dict[Any, Exception]
    ) -> ServedModel | None:
        """The stable version to answer the records the canary failed on (their failures counted
        against the canary); None when `model` is not the canary."""
        stable = self.manager.champion
        if variant != "canary" or stable is None or stable is model:
            return None
        for err in failures.values():
            cause = "input" if isinstance(err, UnscorableRecord) else "model"
            metrics.PREDICTION_FAILURES.labels(model.name, model.version, variant, cause).inc()
        metrics.CANARY_FALLBACKS.labels(model.name, model.version).inc(len(failures))
        log.warning(
            "the canary failed on records the stable version answers",
            extra={
                "version": model.version,
                "records": len(failures),
                "error": str(next(iter(failures.values())))[:300],
            },
        )
        return stable

    def readiness(self) -> tuple[bool, list[str]]:
        """Whether this server should get traffic, and what is wrong, in words fit for open endpoints."""
        problems = self.manager.problems()
        champion = self.manager.champion
        ready = champion is not None
        if champion is None:
            problems.insert(0, "no champion loaded yet")
        else:
            share, refused, records = champion.faults.ratios()
            if records >= ERROR_WINDOW_MIN_OUTCOMES and refused > self.settings.max_error_ratio:
                # Said, not acted on: these are the senders' records (a 422 each), and a client must
                # not be able to take a replica out of rotation by sending them.
                problems.append(
                    f"version {champion.version} refused {refused:.0%} of the {records} records it scored in "
                    f"the last {ERROR_WINDOW_SECONDS:g} s as values it cannot score (answered 422, "
                    'counted as cause="input")'
                )
            if records >= ERROR_WINDOW_MIN_OUTCOMES and share > self.settings.max_error_ratio:
                ready = False
                problems.insert(
                    0,
                    f"version {champion.version} failed {share:.0%} of the {records} records it scored in "
                    f"the last {ERROR_WINDOW_SECONDS:g} s (the limit is {self.settings.max_error_ratio:.0%})",
                )
        status = self.log.status()
        if status.error is not None:
            problems.append(
                f"the prediction log is degraded: writes fail, {status.pending_rows} rows wait "
                f"({status.spilled_rows} of them on disk only), {status.dropped_rows} dropped"
            )
            ready = ready and self.settings.log_failure == "degrade"
        elif status.catching_up:
            problems.append(
                f"the prediction log is degraded, catching up: writes succeed again, {status.pending_rows} "
                "rows that waited are still to be written"
            )
        if status.error is None and status.dropped_rows:
            problems.append(f"the prediction log dropped {status.dropped_rows} rows since start-up")
        if status.quarantined_rows:
            problems.append(
                f"the prediction log refused {status.quarantined_rows} rows for a value they hold since "
                "start-up (kept in its bitloop_quarantine table)"
            )
        return ready, problems

    async def drain(self) -> None:
        """Wait for shadow scoring still running (at shutdown)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    def _answer(
        self,
        model: ServedModel,
        variant: str,
        records: list[dict[str, Any]],
        labels: list[Any],
        probabilities: list[dict[str, float]] | None,
        ids: list[str] | list[str | None] | None,
    ) -> Answer:
        request_id = uuid.uuid4().hex
        entities: list[str | None] = list(ids) if ids is not None else [None] * len(records)
        self._record(
            model, variant, request_id, records, labels, probabilities, range(len(records)), entities
        )
        self._shadow(request_id, records, entities)
        return Answer(model, variant, request_id, labels, probabilities)

    def _failure(
        self, model: ServedModel, variant: str, failures: dict[tuple[Any, ...], Exception]
    ) -> Exception:
        """What to raise for records the model failed on: UnscorableInput naming each record's field when
        the input is at fault, else the model's own error (a 500, logged)."""
        fault = None
        for err in failures.values():
            cause = "input" if isinstance(err, UnscorableRecord) else "model"
            metrics.PREDICTION_FAILURES.labels(model.name, model.version, variant, cause).inc()
            fault = fault or (None if isinstance(err, UnscorableRecord) else err)
        if fault is not None:
            return fault
        return UnscorableInput(
            [
                {
                    "type": "unscorable",
                    "loc": (
                        "body",
                        *where,
                        *((err.field,) if isinstance(err, UnscorableRecord) and err.field else ()),
                    ),
                    "msg": str(err),
                }
                for where, err in failures.items()
            ]
        )

    def _shadow(self, request_id: str, records: list[dict[str, Any]], ids: list[str | None]) -> None:
        """Score @challenger on the same records without touching the answer."""
        challenger = self.manager.challenger
        if not self.settings.shadow or challenger is None:
            return

        async def score() -> None:
            try:
                outcomes = await self.batcher.run_in_thread(challenger.score, records)
            except Exception:
                log.exception("shadow scoring failed", extra={"version": challenger.version})
                return
            scored = [i for i, o in enumerate(outcomes) if not isinstance(o, Exception)]
            if len(scored) < len(records):
                log.warning("shadow scoring failed on some records", extra={"version": challenger.version})
            if scored:
                labels, probabilities = split_scored([outcomes[i] for i in scored], challenger.schema.task)
                self._record(
                    challenger,
                    SHADOW,
                    request_id,
                    [records[i] for i in scored],
                    labels,
                    probabilities,
                    scored,
                    [ids[i] for i in scored],
                )

        task = asyncio.get_running_loop().create_task(score())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    def _record(
        self,
        model: ServedModel,
        variant: str,
        request_id: str,
        records: list[dict[str, Any]],
        labels: list[Any],
        probabilities: list[dict[str, float]] | None,
        rows: Sequence[int],
        ids: Sequence[str | None],
    ) -> None:
        """Count the predictions and queue them for the prediction log; `rows` are the records'
        positions in their request, `ids` the client's entity ids."""
        now = time.time()
        self.log.append(
            [
                Row(
                    now,
                    request_id,
                    model.name,
                    model.version,
                    variant,
                    record,
                    label,
                    None if probabilities is None else probabilities[i],
                    row,
                    entity,
                )
                for i, (record, label, row, entity) in enumerate(zip(records, labels, rows, ids, strict=True))
            ]
        )
        if model.schema.task == "regression":
            span = None if model.profile is None else model.profile.target
            if span is not None:  # a model trained before profiles held the target's range has no histogram
                low, width = span.min, (span.max - span.min) or 1.0
                metrics.TARGET_RANGE.labels(model.name, variant, "min").set(span.min)
                metrics.TARGET_RANGE.labels(model.name, variant, "max").set(span.max)
                histogram = metrics.PREDICTED_POSITION.labels(model.name, variant)
                for value in labels:
                    histogram.observe((value - low) / width)
            metrics.PREDICTIONS.labels(model.name, model.version, variant, "value").inc(len(labels))
        else:
            for label in set(labels):
                metrics.PREDICTIONS.labels(model.name, model.version, variant, str(label)).inc(
                    labels.count(label)
                )
