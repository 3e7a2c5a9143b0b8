"""How the code is divided: stages never import each other, the MLflow contract has one home, and
the model server does not load the training stack."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.driver.run import STAGES as PIPELINE_STAGES
from tests.factories import PROJECT

ROOMS = ("data", "stages", "loop", "driver", "backtest")
STAGE_MODULES = {f"pipeline.stages.{stage}" for stage in (*PIPELINE_STAGES, "summary")}
"""Each DVC stage's module (pipeline.driver.run.STAGES) and the training run's summary beside them."""

# What each room of pipeline/ may import of the others (`core` is everyone's). The CLI (__main__)
# may import every room; the workspace none.
MAY_IMPORT = {
    "data": {"data", "workspace"},
    "stages": {"data", "stages", "workspace"},
    "loop": {"loop", "driver", "workspace"},  # stages only through the driver
    "driver": {"driver", "stages", "data", "workspace"},
    "backtest": {"backtest", "loop", "stages", "data", "workspace"},
    "workspace": set(),
}


def imported_pipeline_modules(path: Path) -> set[str]:
    """Every `pipeline.…` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline.")}
    return found


def room_of(module: str) -> str:
    """`pipeline.stages.train.fit` → `stages`; `pipeline.workspace` → `workspace`."""
    return module.split(".")[1]


def test_the_import_reader_sees_top_level_and_function_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from pipeline.data.store import x\ndef f():\n    import pipeline.stages.train\n")
    assert imported_pipeline_modules(module) == {
        "pipeline.data.store",
        "pipeline.data.store.x",
        "pipeline.stages.train",
    }
    assert {room_of(m) for m in imported_pipeline_modules(module)} == {"data", "stages"}


def test_every_pipeline_module_lives_in_a_room() -> None:
    """Only the CLI and the workspace stand at the root: a new module has to choose its room."""
    root = sorted(p.name for p in (PROJECT / "pipeline").glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "workspace.py"]
    rooms = sorted(p.name for p in (PROJECT / "pipeline").iterdir() if (p / "__init__.py").exists())
    assert rooms == sorted(ROOMS)


def test_each_room_imports_only_the_rooms_beneath_it() -> None:
    crossings = {}
    for path in sorted((PROJECT / "pipeline").rglob("*.py")):
        parts = path.relative_to(PROJECT / "pipeline").with_suffix("").parts
        if parts[0] in ("__init__", "__main__"):
            continue
        room = parts[0]
        found = sorted(m for m in imported_pipeline_modules(path) if room_of(m) not in MAY_IMPORT[room])
        if found:
            crossings[str(path.relative_to(PROJECT))] = found
    assert crossings == {}


def test_no_stage_imports_another_stage() -> None:
    """Stages hand each other files, which DVC tracks; an import would be a dependency it cannot see.
    Helpers in stages/ (candidates, reports, …) are shared; another stage's module is not."""
    crossings = {
        module: sorted((imported_pipeline_modules(module_path(module)) & STAGE_MODULES) - {module})
        for module in sorted(STAGE_MODULES)
    }
    assert {module: found for module, found in crossings.items() if found} == {}


def module_path(module: str) -> Path:
    return PROJECT.joinpath(*module.split(".")).with_suffix(".py")


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


def test_running_a_stage_through_dvc_loads_neither_mlflow_nor_scikit_learn() -> None:
    # `repro <stage>` starts a process per stage, and DVC another: importing these for nothing cost
    # seconds per stage, so the CLI and the DVC driver import them only where they are used.
    heavy = ["mlflow", "sklearn", "pipeline.stages.promote"]
    driver = "pipeline.__main__, pipeline.driver.run, pipeline.driver.versioning, pipeline.driver.handoff"
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
    # Lazy imports included: loading a model must not pull in a stage (and matplotlib with it).
    probe = (
        "import sys, api.main, api.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'matplotlib')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_the_model_server_image_carries_core_and_api_only() -> None:
    dockerfile = (PROJECT / "ops" / "docker" / "Dockerfile").read_text()
    stage = dockerfile.split("FROM builder AS venv-api")[1].split("\nFROM ")[0]
    assert re.findall(r"^COPY (\w+) \1$", stage, flags=re.MULTILINE) == ["core", "api"]
