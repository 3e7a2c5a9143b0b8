"""Hand a run's state from one stage to the next through the DVC remote, so any machine runs any stage.

With BITLOOP_STAGE_HANDOFF=remote (Airflow workers that share no disk: the compose stack's Celery
workers, Kubernetes pods), a stage starts in a project directory that may be empty or stale.
`restore` fetches the pipeline's state from `<DVC remote>/bitloop-state/<model.name>/`: `dvc.lock`
and the outputs DVC does not cache (small JSON reports), then pulls from the remote the cached
outputs the stage reads. `publish` uploads that state after the stage has run and pushed its
outputs, `dvc.lock` last, so a lock found there never names outputs the remote lacks.
Every stage is deterministic and idempotent, so a stage retried on another machine gives the same
result. DVC has no notion of a shared workspace state, hence this module.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.settings import Handoff
from pipeline.driver.versioning import open_repo
from pipeline.workspace import Workspace

log = logging.getLogger(__name__)

STATE_DIR = "bitloop-state"
LOCK = "dvc.lock"


def _state(repo: Any, model: str) -> tuple[Any, str]:
    """The remote's filesystem and the folder holding this model's state in it."""
    remote = repo.cloud.get_remote()
    return remote.fs, remote.fs.join(remote.path, STATE_DIR, model)


def _stage(repo: Any, name: str) -> Any:
    return next(s for s in repo.index.stages if s.addressing == name)


def _own_stages(repo: Any, workspace: Workspace) -> list[Any]:
    """This model's stages: the plain ones for the default model, its own group's for a declared one."""
    return [s for s in repo.index.stages if workspace.owns(s.addressing)]


def _cached_inputs(repo: Any, workspace: Workspace, name: str | None) -> list[str]:
    """The cached outputs a stage reads: the other stages' outputs it depends on; ingest appends to its
    own; the model's whole pipeline (None) may read any of its stages' outputs."""
    if name is None:
        return [out.def_path for s in _own_stages(repo, workspace) for out in s.outs if out.use_cache]
    stage = _stage(repo, workspace.stage(name))
    if name == "ingest":
        return [out.def_path for out in stage.outs if out.use_cache]
    inputs: list[str] = []
    for other in repo.index.stages:
        for out in other.outs if other is not stage else ():
            inside = (
                d.fs_path == out.fs_path or d.fs_path.startswith(out.fs_path + os.sep) for d in stage.deps
            )
            if out.use_cache and any(inside):
                inputs.append(out.def_path)
    return inputs


def restore(workspace: Workspace, stage: str | None, *, pull: bool = True) -> dict[str, Any]:
    """Bring the published state into the workspace and, with `pull`, the cached outputs `stage` reads
    (None: every stage)."""
    with open_repo(workspace.root) as repo:
        fs, state = _state(repo, workspace.model)
        if not fs.exists(fs.join(state, LOCK)):
            log.info("no state published yet: the run starts from nothing", extra={"state": state})
            return {"restored_files": 0, "pulled_files": 0}
        files = [path for path in fs.find(state) if not fs.isdir(path)]
        for path in files:
            relative = Path(path[len(state) :].lstrip("/"))
            if relative.is_absolute() or ".." in relative.parts:
                raise ValueError(f"{path} is outside the state folder {state}")
            target = workspace.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fs.read_bytes(path))
    pulled = 0
    with open_repo(workspace.root) as repo:  # opened again: it reads the restored dvc.lock
        inputs = _cached_inputs(repo, workspace, stage) if pull else []
        if inputs:
            # The workspace mirrors the remote here: a stale output from an earlier run is replaced.
            pulled = repo.pull(targets=inputs, force=True)["stats"]["fetched"]
    log.info("restored the published state", extra={"stage": stage, "files": len(files), "inputs": inputs})
    return {"restored_files": len(files), "pulled_files": pulled}


def publish(workspace: Workspace, *, lock: bool = True) -> int:
    """Upload the state (uncached outputs, then dvc.lock) once the stage's cached outputs are pushed.

    Without `lock`, the reports alone: a failed stage's (a refused batch's validation report) is
    where any machine finds it, while the lock still describes the last stage that succeeded.
    """
    with open_repo(workspace.root) as repo:
        fs, state = _state(repo, workspace.model)
        uncached = [out.def_path for s in _own_stages(repo, workspace) for out in s.outs if not out.use_cache]
        files = [p for p in uncached if (workspace.root / p).is_file()] + ([LOCK] if lock else [])
        for relative in files:
            fs.upload_fobj(io.BytesIO((workspace.root / relative).read_bytes()), fs.join(state, relative))
    log.info("published the state", extra={"files": len(files), "state": state, "lock": lock})
    return len(files)


@contextmanager
def handed_off(
    workspace: Workspace, handoff: Handoff, stage: str | None, *, pull: bool = True, publishes: bool = True
) -> Iterator[None]:
    """Around a command: restore before it and, if it `publishes`, publish after it (the reports
    only when it fails).

    With the `workspace` hand-off (one machine, `make up`), the project directory is the state.
    """
    remote = handoff == "remote"
    if remote:
        restore(workspace, stage, pull=pull)
    try:
        yield
    except BaseException:
        if remote and publishes:
            publish(workspace, lock=False)
        raise
    if remote and publishes:
        publish(workspace)
