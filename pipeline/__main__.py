"""Command line: `python -m pipeline <stage>`; parses arguments and calls the stage functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.params import ParamsError, load_params
from pipeline.settings import PipelineSettings
from pipeline.workspace import Workspace

log = logging.getLogger("pipeline")
STAGES = ("ingest", "validate", "split", "train", "evaluate", "register", "promote")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path.cwd(),
        help="project directory holding params.yaml (default: the current one)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    ingest = sub.add_parser("ingest", help="append a new batch from the source to data/raw")
    ingest.add_argument("--seed", type=int, help="simulated source: draw this batch instead of data.seed")
    ingest.add_argument("--drift", type=float, help="simulated source: drift of this batch (0-1)")
    sub.add_parser("validate", help="check the raw batches; build data/prepared")
    sub.add_parser("split", help="stable hash split into data/split/{train,test}.parquet")
    sub.add_parser("train", help="fit every candidate in params.yaml")
    sub.add_parser("evaluate", help="score candidates on the holdout; write metrics.json and plots")
    sub.add_parser("register", help="log candidates to MLflow; register those passing the floors")
    promote = sub.add_parser("promote", help="gate the best candidate against @champion")
    promote.add_argument(
        "--allow-schema-change",
        action="store_true",
        help="replace a champion whose task or features differ, without comparison",
    )
    run = sub.add_parser("run", help="every stage in order (what `dvc repro` runs)")
    run.add_argument("--seed", type=int, help="simulated source: draw this batch instead of data.seed")
    run.add_argument("--drift", type=float, help="simulated source: drift of this batch (0-1)")
    sub.add_parser("rollback", help="move @champion back to @previous")
    sub.add_parser("champion", help="show the versions behind @champion, @challenger and @previous")
    serve = sub.add_parser("serve-data", help="serve simulated batches over HTTP (GET /batch)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8001)
    return parser


def _stage(name: str, params_args: dict[str, Any]) -> Callable[[Any, Workspace, PipelineSettings], Any]:
    # Imports are per stage so that `ingest` never pays for MLflow's import time.
    def call(params: Any, workspace: Workspace, settings: PipelineSettings) -> Any:
        if name == "ingest":
            from pipeline.ingest import ingest

            return ingest(params, workspace, **params_args).version.as_dict()
        if name == "validate":
            from pipeline.validate import validate

            return validate(params, workspace).render()
        if name == "split":
            from pipeline.split import split

            return dict(zip(("train_rows", "test_rows"), split(params.split, workspace), strict=True))
        if name == "train":
            from pipeline.train import train

            return sorted(train(params, workspace))
        if name == "evaluate":
            from pipeline.evaluate import evaluate

            return evaluate(params, workspace)
        if name == "register":
            from pipeline.register import register

            return register(params, workspace, settings)
        from pipeline.promote import promote

        return promote(params, workspace, settings, **params_args)

    return call


def _show(result: Any) -> None:
    print(result if isinstance(result, str) else json.dumps(result, indent=2, default=str))


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.logs import configure_logging
    from pipeline.promote import RollbackError, SchemaMismatch
    from pipeline.settings import TrackingUnavailable
    from pipeline.sources import SourceError
    from pipeline.validate import ValidationFailed

    configure_logging()
    for switch in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):  # nothing phones home
        os.environ.setdefault(switch, "true")
    args = _parser().parse_args(argv)
    settings = PipelineSettings()
    workspace = Workspace(args.root.resolve())
    try:
        if args.command == "serve-data":
            import uvicorn

            from pipeline.sources.service import create_app

            uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info")
            return 0
        params = load_params(workspace.params_file)
        if args.command == "rollback":
            from pipeline.promote import rollback

            _show(rollback(params.model.name, settings))
        elif args.command == "champion":
            from pipeline.promote import aliases

            _show(aliases(params.model.name, settings))
        elif args.command == "run":
            for name in STAGES:
                log.info("stage %s", name)
                extra = {"seed": args.seed, "drift": args.drift} if name == "ingest" else {}
                _stage(name, extra)(params, workspace, settings)
            _show(json.loads(workspace.promotion_file.read_text()))
        else:
            extra = {
                k: getattr(args, k) for k in ("seed", "drift", "allow_schema_change") if hasattr(args, k)
            }
            _show(_stage(args.command, extra)(params, workspace, settings))
    except ValidationFailed as err:
        print(f"{err}\n\nfull report: {workspace.validation_report}", file=sys.stderr)
        return 1
    except (ParamsError, SourceError, RollbackError, SchemaMismatch, TrackingUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ParamsError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
