"""The backtest replays the loop through the real stages: in a stable world it never retrains, after
a concept change it recovers within the training window without promoting a worse model, a corrupt
batch is refused and the loop goes on; under noisy traffic and latency good canaries are promoted
and bad ones caught; the command's JSON carries the figures it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.params import parse_params
from pipeline.__main__ import main
from pipeline.backtest.canary import BAD_KINDS, GOOD_ROLLOUTS, run_trial, summarise_trials, trial_verdicts
from pipeline.backtest.replay import CHANGE_AT, SCENARIOS, last_change, run_seed, summarise
from tests.factories import light_params

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]


def params() -> dict:  # type: ignore[type-arg]
    return light_params(data={"rows": 2000}, rollout={"share": 0.1})


def test_a_stable_world_is_never_retrained_and_stays_within_its_limit() -> None:
    result = run_seed(parse_params(params()), "stable", 3)
    assert result.retrains == []
    assert not any(result.below)
    assert len(result.live) == len(result.limit) == len(result.estimated)


def test_after_a_concept_change_the_loop_recovers_within_the_window_and_never_promotes_worse() -> None:
    loop_params = parse_params(params())
    result = run_seed(loop_params, "concept", 4)
    assert result.below[CHANGE_AT]  # the old champion falls below its limit when the relation turns
    assert not result.below[-1]  # ...and the loop brings a champion back within it
    assert 1 <= len(result.retrains) <= (loop_params.retrain.window_batches or 1)
    assert result.worse_promotions == 0
    assert result.promotions  # the canary earned its traffic (or a winner took it at once)
    summary = summarise(loop_params, [result])
    assert summary["recovered"] == 1


def test_a_corrupt_batch_is_refused_and_the_next_run_recovers() -> None:
    result = run_seed(parse_params(params()), "bad-batch", 5)
    assert result.refused == [result.retrains[0]]
    assert not result.below[-1]
    assert result.worse_promotions == 0


def test_every_scenario_moves_its_world_after_the_loop_has_rested() -> None:
    for name, scenario in SCENARIOS.items():
        assert all(scenario.world(step) == scenario.world(0) for step in range(CHANGE_AT)), name
        assert (last_change(scenario) == 0) == (name == "stable"), name


def test_the_command_prints_one_json_object_per_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params()))
    assert main(["--root", str(tmp_path), "backtest", "--scenario", "stable", "--seeds", "1", "--json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(line)
    assert {"scenario", "seeds", "recovered", "retrains", "steps_below_limit", "false_retrains"} <= set(
        figures
    )
    assert {"worse_promotions", "false_rollbacks"} <= set(figures)
    assert (figures["scenario"], figures["seeds"], figures["retrains"]) == ("stable", 1, [0])
    assert not (tmp_path / "docs").exists()  # --json writes nothing
    assert main(["--root", str(tmp_path), "backtest", "--scenario", "nowhere"]) == 2
    assert "no scenario 'nowhere'" in capsys.readouterr().err


def test_canaries_under_noise_good_ones_are_promoted_and_each_bad_one_is_caught_for_its_fault() -> None:
    """One seed of the canary trial: the good canary's rollouts (each with its own bursty traffic and
    busy-machine latency) are all promoted; each bad kind is rolled back, naming its own SLO."""
    found = run_trial(parse_params(params()), 6)
    by_kind = {r.kind: r for r in found.rollouts if r.kind != "good"}
    good = [r for r in found.rollouts if r.kind == "good"]
    assert found.admitted
    assert len(good) == GOOD_ROLLOUTS
    assert [r.action for r in good] == ["promote"] * GOOD_ROLLOUTS, [r.reason for r in good]
    for kind in BAD_KINDS:
        assert by_kind[kind].action == "rollback", (kind, by_kind[kind].reason)
        assert by_kind[kind].failed_slos == [kind], (kind, by_kind[kind].reason)
    summary = summarise_trials([found])
    assert (summary["false_rollbacks"], summary["good_rollouts"]) == (0, GOOD_ROLLOUTS)
    assert all(summary[f"{kind}_caught"] == 1 for kind in BAD_KINDS)
    assert trial_verdicts(summary) == []
