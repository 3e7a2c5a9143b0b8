"""Run the stages through DVC, so `dvc.lock` always describes the last run, and push every data version.

`make repro` and the training DAG's tasks both come here: a stage runs only through
`dvc repro --single-item`, so after any run `dvc repro` has nothing to do. The one input from
outside the repository is the data source, which DVC cannot hash (an updated CSV export, the
batch a DAG run draws with its seed, drift and service): ingest always asks it for new rows and
commits the result as the ingest stage's new state.
Every new state of the raw store is committed to the DVC cache and pushed to the remote
before anything reads it, so any version's data can be restored (`pipeline.driver.reproduce`).

`dvc.lock`'s plain stages describe the last run of whichever `model.name` ran last. Each such
model's workspace keeps a copy of its own (`model_lock`), put back before that model runs again, so
switching `model.name` back does not rerun the stages of a model whose outputs are all still in
place. The models declared under `models:` have stages of their own (`train-model@<name>`), so
their entries never need putting back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import EXIT_FAILED, EXIT_INVALID_DATA, BitloopError
from core.params import Params
from pipeline.driver.run import STAGES
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)


class StageFailed(BitloopError, RuntimeError):
    """A stage's command failed: refused data (its exit code 3) is passed on as such, anything else
    is a failure of the run (1)."""

    def __init__(self, stage: str, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.exit_code = EXIT_INVALID_DATA if exit_code == EXIT_INVALID_DATA else EXIT_FAILED


class VersioningError(BitloopError, RuntimeError):
    """DVC could not run, commit or push (not a DVC repository, a held lock, an unreachable remote)."""


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 (DVC's messages, stage commands) to stderr.

    stdout carries only the command's JSON result, which orchestrators parse.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _stage_environment() -> Iterator[None]:
    """Stage commands run with this interpreter's `python`, their output on stderr."""
    path = os.environ["PATH"]  # the process's own search path, not a setting
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
    try:
        with stdout_to_stderr():
            yield
    finally:
        os.environ["PATH"] = path


def remote_override() -> dict[str, Any]:
    """`Repo` arguments that point the default remote at BITLOOP_DVC_REMOTE_URL, when it is set.

    The image's .dvc/config names a directory; a deployment whose workers share no disk gives them
    one bucket (`s3://…`, credentials from the usual AWS variables) without editing the project.
    """
    from core.settings import PipelineSettings

    url = PipelineSettings().dvc_remote_url
    return {"remote_config": {"url": url}} if url else {}


@contextlib.contextmanager
def open_repo(root: Path) -> Iterator[Any]:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    quiet_dvc()
    try:
        with Repo(str(root), **remote_override()) as repo:
            repo.scm_context.quiet = True  # no "git add dvc.lock" hints: each version carries its own
            yield repo
    except DvcException as err:
        failed = _failed_command(err)
        if failed is not None:
            raise failed from err
        raise VersioningError(f"dvc: {err}") from err


def quiet_dvc() -> None:
    """DVC prints its own progress: its INFO log records would repeat every line."""
    logging.getLogger("dvc").setLevel(logging.WARNING)


def _failed_command(err: BaseException) -> StageFailed | None:
    """The stage command's failure inside DVC's error chain, with the command's exit code.

    DVC keeps a failed command's exit code only in its message ("failed to run: …, exited with 3").
    """
    from dvc.stage.exceptions import StageCmdFailedError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, StageCmdFailedError):
            match = re.search(r"exited with (-?\d+)", str(seen))
            stage = re.search(r"'([^']+)'", str(err))
            return StageFailed(
                stage.group(1) if stage else "?", int(match.group(1)) if match else 1, str(err)
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _lock_model(lock: Path) -> str | None:
    """The default model whose run `lock`'s plain stages describe: the workspace folder their outputs
    lie in (the stages of the models under `models:` have names of their own)."""
    for name, entry in _lock_stages(lock).items():
        for out in entry.get("outs", []) if "@" not in name else ():
            parts = Path(out["path"]).parts
            if len(parts) > 1 and parts[0] in ("data", "models", "reports"):
                return parts[1]
    return None


def _lock_stages(lock: Path) -> dict[str, Any]:
    import yaml

    if not lock.is_file():
        return {}
    stages: dict[str, Any] = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return stages


@contextlib.contextmanager
def one_run_at_a_time(workspace: Workspace) -> Iterator[None]:
    """Hold the project's run lock: every model's stages write the one `dvc.lock`, and DVC's own lock
    fails a second run at once instead of waiting. Two models' training runs (their DAGs) take turns;
    the lock is the operating system's, so a killed run never leaves it held."""
    from filelock import FileLock, Timeout

    path = workspace.root / ".dvc" / "tmp" / "bitloop-run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another run in this project to finish", extra={"model": workspace.model})
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def model_lock(workspace: Workspace) -> Iterator[None]:
    """Run with `dvc.lock`'s plain stages as this default model's last run left them, and keep a copy
    of them afterwards. The stages of the models under `models:` are their own and stay as they are."""
    lock = workspace.root / "dvc.lock"
    current = _lock_model(lock)
    if not workspace.declared and current not in (None, workspace.model) and workspace.lock_file.is_file():
        _put_back(workspace.lock_file, lock)
        log.info("put back this model's dvc.lock", extra={"model": workspace.model, "replaced": current})
    try:
        yield
    finally:
        if not workspace.declared and _lock_model(lock) == workspace.model:
            workspace.data_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lock, workspace.lock_file)


def _put_back(saved: Path, lock: Path) -> None:
    """`lock` with its plain stages (the default model's) replaced by those of `saved`."""
    import yaml

    document = yaml.safe_load(lock.read_text()) or {"schema": "2.0"}
    kept = {name: entry for name, entry in _lock_stages(lock).items() if "@" in name}
    plain = {name: entry for name, entry in _lock_stages(saved).items() if "@" not in name}
    document["stages"] = {**plain, **kept}
    lock.write_text(yaml.safe_dump(document, sort_keys=False))


def _reproduce(repo: Any, workspace: Workspace, stage: str | None) -> list[str]:
    """One stage, or (None) this model's whole pipeline: promote and everything upstream of it."""
    with _stage_environment():
        done = repo.reproduce(workspace.stage(stage or "promote"), single_item=stage is not None)
    return [s.name for s in done]


def _push(repo: Any, workspace: Workspace, stage: str | None) -> int:
    """Push the outputs of one stage, or (None) of every stage of this model."""
    pushed: int = repo.push(targets=[workspace.stage(s) for s in ([stage] if stage else STAGES)])
    return pushed


def reproduce_stages(params: Params, workspace: Workspace, stage: str | None = None) -> dict[str, Any]:
    """Ingest what is new, then `dvc repro` one stage (or the rest of the pipeline), pushing new data.

    Ingest always asks the source for new rows (an updated CSV export, a new draw), commits the
    store and pushes it before anything validates it, so a batch validation refuses is in the
    remote too; when nothing is new the store, its lock entry and every later stage stay as they were.
    """
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    ran: list[str] = []
    pushed = 0
    if stage in (None, "ingest"):
        drawn = ingest_batch(params, workspace)
        pushed += drawn["pushed_files"]
        ran += [workspace.stage("ingest")] if drawn["recorded"] else []
    if stage != "ingest":
        with one_run_at_a_time(workspace), model_lock(workspace), open_repo(workspace.root) as repo:
            ran += _reproduce(repo, workspace, stage)
            pushed += _push(repo, workspace, stage)
    log.info("reproduced", extra={"stages": ran, "pushed_files": pushed})
    return {"ran": ran, "pushed_files": pushed, "up_to_date": not ran}


def _lock_entry(workspace: Workspace, stage: str) -> Any:
    return _lock_stages(workspace.root / "dvc.lock").get(workspace.stage(stage))


def ingest_batch(
    params: Params,
    workspace: Workspace,
    *,
    seed: int | None = None,
    drift: float | None = None,
    source_url: str | None = None,
) -> dict[str, Any]:
    """Ingest a batch (params.yaml's source, or the DAG run's draw), commit it as the ingest stage, push it.

    `recorded` says whether DVC's lock changed: a new data version, new params or new ingest code.
    """
    from pipeline.stages.ingest import ingest

    with one_run_at_a_time(workspace):
        with model_lock(workspace):
            before = _lock_entry(workspace, "ingest")
        result = ingest(params, workspace, seed=seed, drift=drift, source_url=source_url)
        pushed = _commit_store(workspace)
    recorded = _lock_entry(workspace, "ingest") != before
    log.info("committed and pushed the raw store", extra={"version": result.version.label, "pushed": pushed})
    return {
        **result.version.as_dict(),
        "appended_rows": result.appended_rows,
        "pushed_files": pushed,
        "recorded": recorded,
    }


def commit_store(workspace: Workspace) -> int:
    """Commit the raw store as the ingest stage's state (after an ingest or a withdrawal) and push it."""
    with one_run_at_a_time(workspace):
        return _commit_store(workspace)


def _commit_store(workspace: Workspace) -> int:
    with model_lock(workspace), open_repo(workspace.root) as repo:
        repo.commit(workspace.stage("ingest"), force=True)
        return _push(repo, workspace, "ingest")
