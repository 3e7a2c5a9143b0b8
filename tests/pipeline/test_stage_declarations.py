"""Each DVC stage declares exactly the code and the parameters it reads, so `dvc repro` re-runs a
stage when, and only when, something it depends on changed.

The code is every `pipeline` module the stage's module imports, directly or through others; the
parameters are the ones the stage reads when it runs, recorded by wrapping params.yaml's model.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from core.settings import PipelineSettings
from pipeline.driver.run import STAGE_FUNCTIONS
from tests.factories import PROJECT, light_params, make_workspace

EVERY = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
DVC = {name: stage for name, stage in EVERY.items() if "foreach" not in stage}
"""The default model's stages (`model.name`)."""
GROUPS = {name: stage for name, stage in EVERY.items() if "foreach" in stage}
"""Each model of params.yaml's `models:` runs these: `<stage>-model@<name>`."""
OURS = ("pipeline", "core")  # the packages whose files a stage's deps list


def module_file(module: str) -> Path:
    path = PROJECT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports(path: Path) -> set[str]:
    """The project's modules (`pipeline`, `core`) a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OURS):
            found.add(node.module)
            found |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if module_file(f"{node.module}.{a.name}").exists()
            }
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(OURS)}
    return found


def code_of(stage: str) -> set[str]:
    """Every project file the stage's module reaches through imports, itself included."""
    seen: set[str] = set()
    todo = [f"pipeline.stages.{stage}"]
    while todo:
        module = todo.pop()
        if module in seen or not module_file(module).exists():
            continue
        seen.add(module)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        todo += imports(module_file(module)) | {
            module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)
        }
    return {str(module_file(m).relative_to(PROJECT)) for m in seen if runs_code(module_file(m))}


def runs_code(path: Path) -> bool:
    """Whether a file holds more than a docstring: a package's marker that only describes it changes
    nothing a stage does, so its deps need not list it."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def declared_code(stage: str) -> set[str]:
    """The pipeline files a stage's deps cover (a folder covers every file under it)."""
    covered = set()
    for dep in DVC[stage]["deps"]:
        path = PROJECT / dep
        if dep.startswith(OURS):
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            covered |= {str(f.relative_to(PROJECT)) for f in files}
    return covered


def test_dvc_yaml_runs_the_stages_pipeline_run_lists_in_its_order() -> None:
    """pipeline.driver.run.STAGES is the list; dvc.yaml, in DVC's own terms, must say the same, and each
    stage's command is the CLI's for that stage."""
    assert list(DVC) == list(STAGE_FUNCTIONS)
    assert {name: stage["cmd"] for name, stage in DVC.items()} == {
        name: f"python -m pipeline {name}" for name in STAGE_FUNCTIONS
    }
    # In that order each stage after the first reads what an earlier one wrote (no stage reads
    # a later one's output), so DVC's order is the table's.
    written: list[str] = []
    for name in STAGE_FUNCTIONS:
        reads = [dep for dep in DVC[name]["deps"] if not dep.startswith(OURS)]
        later = [
            out for other in list(STAGE_FUNCTIONS)[list(STAGE_FUNCTIONS).index(name) :] for out in outs(other)
        ]
        assert not [dep for dep in reads if any(dep.startswith(out) for out in later)], name
        if written:
            assert [dep for dep in reads if any(dep.startswith(out) for out in written)], name
        written += outs(name)


def test_every_declared_model_runs_the_same_stages_in_its_own_workspace() -> None:
    """A group is its plain stage with the model's name for `model.name`: the same code and outputs
    in the model's folders, the same params plus what the model overrides, its command the CLI's
    for that model. Nothing else may differ, or a model of `models:` would run another pipeline."""
    assert list(GROUPS) == [f"{name}-model" for name in STAGE_FUNCTIONS]
    for name, plain in DVC.items():
        group = GROUPS[f"{name}-model"]
        assert group["foreach"] == "${models}"
        text = yaml.safe_dump(group["do"]).replace(" --model ${key}", "")
        as_plain = yaml.safe_load(text.replace("${key}", "${model.name}"))
        assert as_plain["params"][-1] == "models.${model.name}", name
        as_plain["params"].pop()
        assert as_plain == plain, name
    assert yaml.safe_load((PROJECT / "dvc.yaml").read_text())["vars"] == [{"models": {}}]


def outs(stage: str) -> list[str]:
    """The paths a stage of dvc.yaml writes."""
    return [next(iter(out)) if isinstance(out, dict) else out for out in DVC[stage].get("outs", [])]


@pytest.mark.parametrize("stage", list(STAGE_FUNCTIONS))
def test_a_stage_declares_exactly_the_code_it_imports(stage: str) -> None:
    assert declared_code(stage) == code_of(stage)


def test_the_import_reader_follows_imports_inside_functions_and_packages() -> None:
    assert "pipeline/data/sources/simulated.py" in code_of("ingest")  # through `pipeline.data.sources`
    assert "pipeline/stages/candidates.py" in code_of("train")
    assert "pipeline/driver/run.py" not in code_of("train")


class Recording:
    """params.yaml's model, recording every `section.key` read under its params.yaml name.

    A model's own methods run against the recording, so what they read is recorded too; anything
    else callable (a pydantic copy) counts as reading the whole section.
    """

    def __init__(self, target: BaseModel, path: str, seen: set[str]) -> None:
        self._target, self._path, self._seen = target, path, seen

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        own = getattr(type(self._target), name, None)
        if callable(value) and own is not None and not hasattr(BaseModel, name):
            return own.__get__(self)
        field = type(self._target).model_fields.get(name)
        key = field.alias if field is not None and field.alias else name
        where = f"{self._path}.{key}".lstrip(".")
        if isinstance(value, BaseModel):
            return Recording(value, where, self._seen)
        self._seen.add(self._path if callable(value) else where)
        return value


def covers(declared: str, read: str) -> bool:
    return read == declared or read.startswith(declared + ".")


def test_each_stage_declares_exactly_the_parameters_it_reads(tmp_path: Path, mlflow_uri: str) -> None:
    workspace, params = make_workspace(tmp_path, light_params(model={"name": "declared"}))
    settings = PipelineSettings(mlflow_tracking_uri=mlflow_uri)
    unread, undeclared = {}, {}
    for stage, function in STAGE_FUNCTIONS.items():
        seen: set[str] = set()
        function(Recording(params, "", seen), workspace, settings)
        declared = [str(p) for p in DVC[stage].get("params", [])]
        unread[stage] = sorted(d for d in declared if not any(covers(d, r) for r in seen))
        undeclared[stage] = sorted(r for r in seen if not any(covers(d, r) for d in declared))
    missing = {s: found for s, found in undeclared.items() if found}
    assert missing == {}, f"read but not declared in dvc.yaml: {missing}"
    extra = {s: found for s, found in unread.items() if found}
    assert extra == {}, f"declared in dvc.yaml but never read: {extra}"
