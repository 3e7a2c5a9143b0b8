"""Command line: `python -m pipeline <stage>`; parses arguments and calls the stage functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.errors import EXIT_INVALID_DATA, BitloopError, InvalidData
from core.params import Params, ParamsError, load_models
from core.settings import PipelineSettings
from pipeline.driver.run import STAGES, run_all, run_stage
from pipeline.workspace import Workspace, params_file


@dataclass(frozen=True)
class Context:
    """What every command works on: the project, its params and workspace, and where MLflow is."""

    root: Path
    params: Params
    workspace: Workspace
    settings: PipelineSettings


Command = Callable[[argparse.Namespace, Context], int]


def _show(result: Any) -> int:
    print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))
    return 0


def _stage(args: argparse.Namespace, ctx: Context) -> int:
    return _show(run_stage(args.command, ctx.params, ctx.workspace, ctx.settings))


def _ingest(args: argparse.Namespace, ctx: Context) -> int:
    drawn = {"seed": args.seed, "drift": args.drift, "source_url": args.source_url}
    return _show(run_stage("ingest", ctx.params, ctx.workspace, ctx.settings, **drawn))


def _promote(args: argparse.Namespace, ctx: Context) -> int:
    options = {"allow_schema_change": args.allow_schema_change}
    return _show(run_stage("promote", ctx.params, ctx.workspace, ctx.settings, **options))


def _repro(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.driver.handoff import handed_off
    from pipeline.driver.versioning import ingest_batch, reproduce_stages

    drawn = {"seed": args.seed, "drift": args.drift, "source_url": args.source_url}
    if any(v is not None for v in drawn.values()) and args.stage != "ingest":
        raise ParamsError("--seed, --drift and --source-url choose a batch: use them with ingest")
    with handed_off(ctx.workspace, ctx.settings.stage_handoff, args.stage):
        if all(v is None for v in drawn.values()):
            result = reproduce_stages(ctx.params, ctx.workspace, args.stage)
        else:
            result = ingest_batch(ctx.params, ctx.workspace, **drawn)
    return _show(result)


def _run(args: argparse.Namespace, ctx: Context) -> int:
    return _show(run_all(ctx.params, ctx.workspace, ctx.settings, seed=args.seed, drift=args.drift))


def _summary(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.driver.handoff import handed_off
    from pipeline.stages.summary import summarize

    with handed_off(ctx.workspace, ctx.settings.stage_handoff, None, pull=False, publishes=False):
        return _show(summarize(ctx.params, ctx.workspace, ctx.settings, args.run_label))


def _drift(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.loop.monitor import monitor_drift

    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(hours=1)
    log = _log_location(args.log, ctx)
    return _show(monitor_drift(ctx.params, ctx.workspace, ctx.settings, log, since, until, args.label))


def _ground_truth(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.loop.ground_truth import collect

    source = ctx.settings.data_source_url or ctx.params.data.path
    if ctx.params.data.source != "simulated" or not source:
        # Real outcomes come from their own systems, through POST /feedback: nothing to collect.
        reason = "no data-source service: set BITLOOP_DATA_SOURCE_URL (data.source: simulated)"
        logging.getLogger(__name__).info("ground truth skipped", extra={"reason": reason})
        return _show({"status": "skipped", "reason": reason})
    key = ctx.settings.api_key
    since = args.since or datetime.now(UTC) - timedelta(days=1)
    return _show(
        collect(
            _log_location(args.log, ctx),
            ctx.params.model.name,
            source.rstrip("/"),
            ctx.settings.api_url.rstrip("/"),
            None if key is None else key.get_secret_value(),
            since,
        )
    )


def _quality(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.loop.monitor import judge_quality

    since = args.since or datetime.now(UTC) - timedelta(days=1)
    return _show(judge_quality(ctx.params, ctx.settings, _log_location(args.log, ctx), since))


def _retrain_gate(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.loop.policy import gate

    return _show(gate(ctx.params, ctx.settings, args.signal, prediction_log=_log_location(args.log, ctx)))


def _log_location(given: str | None, ctx: Context) -> str:
    """--log, else the setting; a relative SQLite path is under --root."""
    from core.predictions.rows import is_postgres

    log = given or ctx.settings.prediction_log_url
    return log if is_postgres(log) or Path(log).is_absolute() else str(ctx.root / log)


def _datasets(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.data.store import list_datasets

    return _show(list_datasets(ctx.root, ctx.params.model.name))


def _batches_list(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.data.store import list_batches
    from pipeline.driver.handoff import handed_off

    with handed_off(ctx.workspace, ctx.settings.stage_handoff, "ingest", publishes=False):
        return _show(list_batches(ctx.workspace))


def _batches_withdraw(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.data.store import withdraw_batch
    from pipeline.driver.handoff import handed_off
    from pipeline.driver.versioning import commit_store

    with handed_off(ctx.workspace, ctx.settings.stage_handoff, "ingest"):
        withdrawn = withdraw_batch(ctx.workspace, args.batch, args.reason)
        if ctx.settings.stage_handoff == "remote":  # otherwise the next ingest commits the store
            commit_store(ctx.workspace)
    return _show(withdrawn)


def _reproduce(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.driver.reproduce import reproduce

    outcome = reproduce(ctx.root, ctx.params.model.name, args.version, ctx.settings)
    _show(outcome.as_dict())
    return 0 if outcome.identical else 1


def _rollback(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.stages.promote import rollback

    return _show(rollback(ctx.params.model.name, ctx.settings))


def _rollout(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.loop import decider

    log = _log_location(args.log, ctx)
    if args.action == "status":
        return _show(decider.status(ctx.params, ctx.settings, log))
    if args.action == "decide":
        return _show(decider.decide(ctx.params, ctx.settings, log))
    outcome: decider.RolloutEnd = "promoted" if args.action == "promote" else "aborted"
    return _show(decider.act(ctx.params, ctx.settings, outcome, args.by or _login()))


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a name
        return "an unnamed user"


def _champion(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.stages.promote import aliases

    return _show(aliases(ctx.params.model.name, ctx.settings))


def _backtest(args: argparse.Namespace, ctx: Context) -> int:
    import time

    from pipeline.backtest.canary import summarise_trials, trial_table, trials
    from pipeline.backtest.replay import SCENARIOS, backtest, summarise
    from pipeline.backtest.report import chart, document, table

    names = [*SCENARIOS, "canaries"] if args.scenario == "all" else [args.scenario]
    if unknown := [n for n in names if n not in SCENARIOS and n != "canaries"]:
        print(
            f"error: no scenario {unknown[0]!r}; the scenarios are all, {', '.join(SCENARIOS)}, canaries",
            file=sys.stderr,
        )
        return 2
    if args.seeds < 1 or args.workers < 1:
        print("error: --seeds and --workers must be at least 1", file=sys.stderr)
        return 2
    started = time.monotonic()
    worlds = [n for n in names if n != "canaries"]
    results = backtest(ctx.params, worlds, args.seeds, args.first_seed, args.workers) if worlds else {}
    summaries = [summarise(ctx.params, results[name]) for name in worlds]
    canaries = None
    if "canaries" in names:
        canaries = summarise_trials(trials(ctx.params, args.seeds, args.first_seed, args.workers))
    if args.json:
        for summary in [*summaries, *([canaries] if canaries else [])]:
            print(json.dumps(summary))
        return 0
    if summaries:
        print(table(summaries))
    if canaries:
        print(trial_table(canaries))
    metric = ctx.params.promote.primary_metric(ctx.params.data.task)
    docs = ctx.root / "docs"
    for name in worlds:
        chart(results[name], metric, docs / "img" / f"backtest-{name}.png")
    command = (
        f"python -m pipeline backtest --scenario {args.scenario} --seeds {args.seeds} "
        f"--first-seed {args.first_seed}"
    )
    text = document(summaries, results, canaries, command, time.monotonic() - started)
    (docs / "backtest.md").write_text(text)
    print(f"wrote {docs / 'backtest.md'} and {len(worlds)} charts in {docs / 'img'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    """Every command with its arguments; each sub-command names the function that runs it."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path.cwd(),
        help="project directory holding params.yaml (default: the current one)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, handler: Command, says: str) -> argparse.ArgumentParser:
        found = sub.add_parser(name, help=says)
        found.set_defaults(handler=handler)
        _model_option(found)
        return found

    _stage_commands(command)
    _loop_commands(command)
    _tool_commands(command, sub)
    return parser


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="the model to work on: params.yaml's model.name (the default) or one it declares under models:",
    )


AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]
"""Adds a sub-command that runs a handler, with its one-line help."""


def _stage_commands(command: AddCommand) -> None:
    """The stages, one at a time, through DVC, or all of them, and the training run's summary."""
    ingest = command("ingest", _ingest, "append a new batch from the source to data/<model>/raw")
    ingest.add_argument("--seed", type=int, help="simulated source: draw this batch instead of data.seed")
    ingest.add_argument("--drift", type=float, help="simulated source: drift of this batch (0-1)")
    ingest.add_argument(
        "--source-url", help="simulated source: draw from this data-source service instead of data.path"
    )
    command("validate", _stage, "check the raw batches; build data/<model>/prepared")
    command("split", _stage, "stable hash split into data/<model>/split/{train,test}.parquet")
    command("train", _stage, "fit every candidate in params.yaml")
    command(
        "evaluate", _stage, "score candidates on the holdout; write reports/<model>/metrics.json and plots"
    )
    command("register", _stage, "log candidates to MLflow; register those passing the floors")
    promote = command("promote", _promote, "gate the best candidate against @champion")
    promote.add_argument(
        "--allow-schema-change",
        action="store_true",
        help="replace a champion whose task or features differ, without comparison",
    )
    repro = command(
        "repro",
        _repro,
        "run a stage (default: every stage) through DVC and push new data (make repro, the DAG)",
    )
    repro.add_argument("stage", nargs="?", choices=STAGES, help="only this stage, if it changed")
    repro.add_argument("--seed", type=int, help="ingest: draw this simulated batch and commit it")
    repro.add_argument("--drift", type=float, help="ingest: drift of this simulated batch (0-1)")
    repro.add_argument("--source-url", help="ingest: draw from this data-source service")
    run = command("run", _run, "every stage in order, without DVC")
    run.add_argument("--seed", type=int, help="simulated source: draw this batch instead of data.seed")
    run.add_argument("--drift", type=float, help="simulated source: drift of this batch (0-1)")
    summary = command("summary", _summary, "record the last promotion decision as an MLflow run")
    summary.add_argument("--run-label", required=True, help="the orchestrator's run id (makes it idempotent)")


def _loop_commands(command: AddCommand) -> None:
    """What the loop's DAGs run between training runs: drift, ground truth, quality, the retraining
    gate and the canary rollout."""
    drift = command("drift", _drift, "compare logged live inputs with the champion's reference")
    drift.add_argument("--since", type=_timestamp, help="window start, ISO 8601 (default: --until - 1h)")
    drift.add_argument("--until", type=_timestamp, help="window end, ISO 8601 (default: now)")
    drift.add_argument("--label", required=True, help="the orchestrator's run id (makes it idempotent)")
    drift.add_argument(
        "--log",
        help="the model server's prediction log: a SQLite path (relative to --root) or a postgresql:// URL "
        "(default: BITLOOP_PREDICTION_LOG_URL, else .bitloop/predictions.sqlite)",
    )
    truth = command("ground-truth", _ground_truth, "send the outcomes the world released to /feedback")
    truth.add_argument(
        "--since", type=_timestamp, help="predictions made since, ISO 8601 (default: a day ago)"
    )
    truth.add_argument("--log", help="the prediction log (as for drift)")
    quality = command("quality", _quality, "the champion's live quality against its limits")
    quality.add_argument(
        "--since", type=_timestamp, help="predictions made since, ISO 8601 (default: a day ago)"
    )
    quality.add_argument("--log", help="the prediction log (as for drift)")
    gate = command("retrain-gate", _retrain_gate, "whether a signal may start training now (retrain policy)")
    gate.add_argument("--signal", required=True, choices=("drift", "quality", "schedule"))
    gate.add_argument("--log", help="the prediction log that holds the retraining claim (as for drift)")
    rollout = command("rollout", _rollout, "the canary rollout: status, decide, or end it by hand")
    rollout.add_argument(
        "action",
        choices=("status", "decide", "promote", "abort"),
        help="status: the terms and the evidence so far; decide: judge and act (the rollout DAG); "
        "promote / abort: end it now",
    )
    rollout.add_argument("--by", help="who acts (recorded; default: your login name)")
    rollout.add_argument("--log", help="the prediction log (as for drift)")


def _tool_commands(command: AddCommand, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """A person's tools: datasets and batches, reproduce, rollback, the backtests, the data source."""
    command("datasets", _datasets, "every model's workspace with its dataset version")
    batches = sub.add_parser("batches", help="list the raw store's batches, or withdraw a bad one")
    action = batches.add_subparsers(dest="action", required=True, metavar="action")
    listing = action.add_parser("list", help="every batch with its rows, status and problems")
    listing.set_defaults(handler=_batches_list)
    _model_option(listing)
    withdraw = action.add_parser("withdraw", help="exclude a batch from now on (its file stays)")
    withdraw.set_defaults(handler=_batches_withdraw)
    _model_option(withdraw)
    withdraw.add_argument("batch", help="the batch file, e.g. batch-00005.parquet")
    withdraw.add_argument("--reason", default="withdrawn by hand", help="recorded in the manifest")
    again = command(
        "reproduce", _reproduce, "retrain a registered version from its record; exit 0 only if identical"
    )
    again.add_argument("--version", required=True, help="the model version, e.g. 3")
    command("rollback", _rollback, "move @champion back to @previous")
    command("champion", _champion, "show the versions behind @champion, @challenger and @previous")
    backtest = command("backtest", _backtest, "replay simulated histories through the whole loop")
    backtest.add_argument(
        "--scenario",
        default="all",
        help="a scenario's name, canaries (good and bad canaries judged under noise), or all (default)",
    )
    backtest.add_argument("--seeds", type=int, default=20, help="seeds per scenario (default 20)")
    backtest.add_argument("--first-seed", type=int, default=1, help="the first seed (default 1)")
    backtest.add_argument("--workers", type=int, default=2, help="seeds replayed at once (default 2)")
    backtest.add_argument(
        "--json", action="store_true", help="one JSON object per scenario, one a line; writes no files"
    )
    serve = sub.add_parser(
        "serve-data", help="serve simulated batches and live customers over HTTP (GET /batch, /customers)"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    serve.add_argument("--drift", type=float, default=0.0, help="the world's drift level at start (0-1)")
    serve.add_argument(
        "--outcome-delay",
        type=float,
        default=60.0,
        help="seconds after a live customer is handed out until its outcome is known (POST /outcomes)",
    )
    serve.add_argument(
        "--world-file",
        type=Path,
        help="keep the world here across restarts (--drift and --outcome-delay then set only a new one)",
    )


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31T12:00:00+00:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    from core.logs import configure_logging, redact_output

    redact_output()  # whatever a command prints, a URL's password is masked
    configure_logging()
    for switch in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):  # nothing phones home
        os.environ.setdefault(switch, "true")
    # stdout carries only the command's JSON result (orchestrators parse it): no MLflow run links.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # logs, not progress bars
    args = _parser().parse_args(argv)
    if args.command == "serve-data":  # the data-source image has no training libraries: import nothing else
        import uvicorn

        from pipeline.data.sources.service import create_app

        app = create_app(args.drift, args.outcome_delay, args.world_file)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
        return 0

    settings = PipelineSettings()
    root = args.root.resolve()
    workspace: Workspace | None = None
    try:
        models = load_models(params_file(root))
        default = next(iter(models))
        params = _chosen(models, args.model or default, reproducing=args.handler is _reproduce)
        workspace = Workspace(root, params.model.name, declared=params.model.name != default)
        handler: Command = args.handler
        return handler(args, Context(root, params, workspace, settings))
    except Exception as err:
        code = _reported(err, workspace)
        if code is None:
            raise
        return code


def _chosen(models: dict[str, Params], name: str, *, reproducing: bool) -> Params:
    """The params of model `name`. `reproduce` also takes a registered model params.yaml no longer
    declares (a renamed one): its version's record holds its params."""
    if name in models:
        return models[name]
    if reproducing:
        default = next(iter(models.values()))
        return default.model_copy(update={"model": default.model.model_copy(update={"name": name})})
    raise ParamsError(f"params.yaml declares no model {name!r}; it declares {', '.join(models)}")


def _reported(err: Exception, workspace: Workspace | None) -> int | None:
    """Report a failure the user can act on (a `BitloopError`) in a line or two and return its exit
    code; None for a bug, which keeps its traceback."""
    if not isinstance(err, BitloopError):
        return None
    refused = err.exit_code == EXIT_INVALID_DATA and workspace is not None
    report = f"\n\nfull report: {workspace.validation_report}" if refused and workspace else ""
    # A refused batch's message is the validation report itself, which says so in its first line.
    prefix = "" if isinstance(err, InvalidData) else "error: "
    print(f"{prefix}{err}{report}", file=sys.stderr)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
