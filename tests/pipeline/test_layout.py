"""How the code is divided: stages never import each other, the MLflow contract has one home, and
the model server does not load the training stack."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.run import STAGES as PIPELINE_STAGES
from tests.factories import PROJECT

# The pipeline's steps: each DVC stage (pipeline.run.STAGES), and the commands of their own that
# run beside them (a training run's summary, the drift monitor, reproduce).
STAGES = {*PIPELINE_STAGES, "summary", "monitor", "reproduce"}


def imported_pipeline_modules(path: Path) -> set[str]:
    """Every `pipeline.X` a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
    return found


def test_the_import_reader_sees_top_level_and_function_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from pipeline.store import x\ndef f():\n    import pipeline.train.y\n")
    assert imported_pipeline_modules(module) == {"store", "train"}


def test_no_stage_imports_another_stage() -> None:
    crossings = {
        stage: sorted(imported_pipeline_modules(PROJECT / "pipeline" / f"{stage}.py") & STAGES - {stage})
        for stage in sorted(STAGES)
    }
    assert {stage: found for stage, found in crossings.items() if found} == {}


def test_mlflow_aliases_tags_and_artefact_names_are_spelled_once() -> None:
    spelled = ("get_model_version_by_alias", '"feature_schema.json"', '"reference_profile.json"', '"bitloop.')
    sources = [
        path
        for folder in ("core", "pipeline", "api", "dags", "ops")
        for path in sorted((PROJECT / folder).rglob("*.py"))
    ]
    homes = {
        word: [str(p.relative_to(PROJECT)) for p in sources if word in p.read_text()] for word in spelled
    }
    assert {word: found for word, found in homes.items() if len(found) != 1} == {}
    assert homes["get_model_version_by_alias"] == homes['"bitloop.'] == ["core/registry.py"]
    assert homes['"feature_schema.json"'] == homes['"reference_profile.json"'] == ["core/artifacts.py"]


def test_the_model_server_does_not_import_the_training_stack() -> None:
    # Lazy imports included: loading a model must not pull in a stage (and matplotlib with it).
    reaching = {
        str(path.relative_to(PROJECT)): sorted(imported_pipeline_modules(path) & STAGES)
        for path in sorted((PROJECT / "api").rglob("*.py"))
    }
    assert {path: found for path, found in reaching.items() if found} == {}
    heavy = ["matplotlib", *sorted(f"pipeline.{stage}" for stage in STAGES)]
    probe = f"import sys, api.main; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_running_a_stage_through_dvc_loads_neither_mlflow_nor_scikit_learn() -> None:
    # `repro <stage>` starts a process per stage, and DVC another: importing these for nothing cost
    # seconds per stage, so the CLI and the DVC driver import them only where they are used.
    heavy = ["mlflow", "sklearn", "pipeline.promote"]
    driver = "pipeline.__main__, pipeline.run, pipeline.versioning, pipeline.handoff"
    probe = f"import sys, {driver}; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_every_tag_name_is_spelled_in_the_registry_module() -> None:
    """core/registry.py is the one home of the MLflow contract: no other module names a tag."""
    spelled = {
        str(path.relative_to(PROJECT)): re.findall(
            r"^\s*([A-Z_]+) = TAG \+", path.read_text(), flags=re.MULTILINE
        )
        for folder in ("core", "pipeline", "api")
        for path in (PROJECT / folder).rglob("*.py")
        if path != PROJECT / "core" / "registry.py"
    }
    assert {path: names for path, names in spelled.items() if names} == {}


def packages_imported(path: Path) -> set[str]:
    """The top-level packages a module imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
    return found


@pytest.mark.parametrize(
    ("folder", "never"), [("api", {"pipeline"}), ("core", {"api", "pipeline"}), ("pipeline", {"api"})]
)
def test_the_rooms_import_only_what_stands_beneath_them(folder: str, never: set[str]) -> None:
    """`core` is shared and imports neither side; the model server and the pipeline stand on it
    side by side and never import each other."""
    crossings = {
        str(path.relative_to(PROJECT)): sorted(packages_imported(path) & never)
        for path in sorted((PROJECT / folder).rglob("*.py"))
    }
    assert {path: found for path, found in crossings.items() if found} == {}


def test_the_model_server_loads_no_pipeline_module() -> None:
    probe = (
        "import sys, api.main, api.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pipeline'))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_the_model_server_image_carries_core_and_api_only() -> None:
    dockerfile = (PROJECT / "ops" / "docker" / "Dockerfile").read_text()
    stage = dockerfile.split("FROM builder AS venv-api")[1].split("\nFROM ")[0]
    assert re.findall(r"^COPY (\w+) \1$", stage, flags=re.MULTILINE) == ["core", "api"]
