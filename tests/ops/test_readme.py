"""The README and docs/ cannot drift from the code.

The configuration reference lists exactly the params keys and environment variables the code
reads; every `bash` block (the runnable ones: output is shown in json/yaml/text blocks) uses
make targets, files, pipeline commands, routes and variables that exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.main import create_app
from api.settings import ApiSettings
from core.settings import PipelineSettings
from pipeline.__main__ import _parser
from tests.durations import STATED, stated_minutes, within_stated
from tests.factories import PROJECT
from tests.ops.test_makefile import make_targets

README = (PROJECT / "README.md").read_text()
DOCS = {
    path.name: path.read_text() for path in [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
}
SECTIONS = (
    "data",
    "model",
    "validate",
    "split",
    "train",
    "evaluate",
    "promote",
    "drift",
    "quality",
    "retrain",
)
# Made by running the system, not kept in git.
GENERATED = (".bitloop", ".env", "data/", "models/", "reports/", "metrics.json", "bitloop.sql")
# Variables of make and of the scripts that only the command line sets.
# Words shaped like paths that name something else.
NOT_FILES = {"deployment/bitloop-api", "application/json", "apache-airflow/airflow"}  # a chart, a type
COMMAND_VARIABLES = {"STACK", "BUILDER", "ENGINE", "BASE_IMAGE", "GRAFANA_URL", "PYTEST_ARGS"}


def _stack_settings() -> Any:
    spec = importlib.util.spec_from_file_location("stack", PROJECT / "ops" / "local" / "stack.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stack"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.StackSettings


def variables_the_code_reads() -> set[str]:
    """Every environment variable a settings class, a DAG, the logging setup or the stack reads."""
    api = {
        str(field.validation_alias or f"BITLOOP_API_{name.upper()}")
        for name, field in ApiSettings.model_fields.items()
    }
    stack = {f"BITLOOP_{name.upper()}" for name in _stack_settings().model_fields}
    pipeline = {str(f.validation_alias) for f in PipelineSettings.model_fields.values() if f.validation_alias}
    read = {
        variable
        for folder in ("dags", "core", "pipeline", "api", "ops/local")
        for path in (PROJECT / folder).glob("*.py")
        for variable in re.findall(r'os\.environ\.get\("([A-Z][A-Z_]+)"', path.read_text())
    }
    return api | stack | pipeline | read


def configuration_reference() -> str:
    start = README.index("## Configuration reference")
    return README[start : README.index("\n## ", start + 1)]


def test_the_configuration_reference_lists_exactly_the_variables_the_code_reads() -> None:
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", configuration_reference(), flags=re.MULTILINE))
    read = variables_the_code_reads()
    assert read - documented == set(), "read by the code but missing from the README's reference"
    assert documented - read == set(), "in the README's reference but read by nothing"


def test_every_variable_the_docs_mention_exists() -> None:
    known = variables_the_code_reads() | COMMAND_VARIABLES
    compose_and_env = (PROJECT / ".env.example").read_text() + (PROJECT / "docker-compose.yml").read_text()
    for name, text in DOCS.items():
        for variable in set(re.findall(r"\bBITLOOP_[A-Z_]*[A-Z]\b", text)):
            assert variable in known or variable in compose_and_env, f"{name}: {variable}"


def _params_keys() -> set[str]:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    return {f"{section}.{key}" for section, values in params.items() for key in values}


def test_the_configuration_reference_lists_exactly_the_params_keys() -> None:
    documented = set(re.findall(r"^\| `([a-z]+\.[a-z_]+)` \|", configuration_reference(), flags=re.MULTILINE))
    assert documented == _params_keys()


def test_every_params_key_the_docs_mention_exists() -> None:
    pattern = rf"`((?:{'|'.join(SECTIONS)})\.[a-z_]+)"
    for name, text in DOCS.items():
        for key in set(re.findall(pattern, text)):
            assert key in _params_keys(), f"{name}: {key}"


def runnable_commands() -> Iterator[tuple[str, str]]:
    """(document, command) for every command line of every bash block, continuations joined."""
    for name, text in DOCS.items():
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
            for command in block.replace("\\\n", " ").splitlines():
                if command.strip():
                    yield name, command.split(" #")[0].strip()


COMMANDS = list(runnable_commands())


def test_there_are_runnable_blocks_to_check() -> None:
    assert len(COMMANDS) > 20
    assert {name for name, _ in COMMANDS} >= {"README.md", "operations.md"}


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


@pytest.mark.parametrize(("document", "command"), COMMANDS)
def test_runnable_commands_use_what_exists(document: str, command: str) -> None:
    targets = make_targets()
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    stages = set(commands.choices)
    # A route's parameters ({name}) match any one path segment.
    routes = [
        re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(getattr(route, "path", "")))
        for route in create_app().routes
    ]
    known = variables_the_code_reads() | COMMAND_VARIABLES
    for part in re.split(r"&&|\|", command):
        words = _words(part.strip())
        for word in words:
            if re.fullmatch(r"[A-Z][A-Z0-9_]*=(?!\$\().*", word):
                assert word.split("=")[0] in known, f"{document}: unknown variable in `{command}`"
            else:
                break
        for target in re.findall(r"\bmake ([a-z][a-z0-9-]+)", part):
            assert target in targets, f"{document}: no make target {target!r}"
        if "-m pipeline" in part:
            stage = part.split("-m pipeline", 1)[1].split()[0]
            assert stage in stages, f"{document}: no pipeline command {stage!r}"
        for path in re.findall(r"http://127\.0\.0\.1:8000(/[^\s'\"?]*)", part):
            assert any(re.fullmatch(route, path) for route in routes), (
                f"{document}: the model server has no route {path}"
            )
    _check_files(document, command)


def _check_files(document: str, command: str) -> None:
    cwd = PROJECT
    for part in re.split(r"&&", command):
        words = _words(part.strip())
        if words[:1] == ["cd"]:
            cwd = PROJECT / words[1]
            assert cwd.is_dir(), f"{document}: no directory {words[1]}"
            continue
        for word in words:
            path_like = re.fullmatch(r"\.?[\w.-]+(/[\w.-]+)+/?", word) or re.fullmatch(
                r"[\w-]+\.(ya?ml|md)", word
            )
            if not path_like or word.startswith(GENERATED) or word in NOT_FILES:
                continue
            assert (cwd / word).exists() or (PROJECT / word).exists(), (
                f"{document}: no file {word} in `{command}`"
            )


def test_files_and_pictures_the_docs_link_exist() -> None:
    for name, text in DOCS.items():
        base = PROJECT if name == "README.md" else PROJECT / "docs"
        for link in re.findall(r"\]\(([^)#\s]+)", text):
            if not link.startswith("http"):
                assert (base / link).exists(), f"{name}: {link}"


CODE_FOLDERS = ("core", "api", "pipeline", "dags", "ops", "bench", "tests")


def named_paths(text: str) -> set[str]:
    """The project paths a document names in backticks: `pipeline/stages/promote.py`, `core/`."""
    words = re.findall(r"`([^`\s]+)`", text)
    return {
        w.rstrip(".,:;")
        for w in words
        if w.split("/")[0] in CODE_FOLDERS and "/" in w and not set("*<") & set(w)
    }


def test_every_code_path_the_docs_name_exists() -> None:
    """A module that moved leaves no stale path behind in README or docs/."""
    missing = {
        name: sorted(path for path in named_paths(text) if not (PROJECT / path.split(":")[0]).exists())
        for name, text in DOCS.items()
    }
    assert {name: paths for name, paths in missing.items() if paths} == {}
    assert "pipeline/loop/judgement.py" in named_paths(DOCS["architecture.md"])


def test_every_picture_in_docs_img_is_shown_and_small() -> None:
    pictures = sorted((PROJECT / "docs" / "img").glob("*.png"))
    assert pictures
    shown = set(re.findall(r"\(docs/img/([\w.-]+\.png)\)", README))
    for document in sorted((PROJECT / "docs").glob("*.md")):  # docs/backtest.md shows its charts
        shown |= set(re.findall(r"\(img/([\w.-]+\.png)\)", document.read_text()))
    for picture in pictures:
        assert picture.name in shown, f"{picture.name} is shown in no document"
        assert picture.stat().st_size < 400_000, f"{picture.name} is not optimised"


def test_the_readme_urls_are_the_stacks_defaults() -> None:
    defaults = _stack_settings()()
    for port in (defaults.api_port, defaults.mlflow_port, defaults.airflow_port, defaults.data_source_port):
        assert f"http://127.0.0.1:{port}" in README


def test_every_duration_the_checks_time_is_stated_in_the_readme() -> None:
    # The stack test and .ci/run compare what they measure with these figures (LookupError if gone).
    assert all(stated_minutes(command, README) > 0 for command in STATED)


def test_a_duration_over_the_readmes_figure_is_reported() -> None:
    text = "make test   # the whole suite (about 6 minutes)\n... timing each step (about a minute here)"
    assert within_stated("make test", 9 * 60, text) is None
    assert "took 9.1 minutes, but the README says about 6" in str(within_stated("make test", 9.1 * 60, text))
    assert within_stated("make drift-demo", 90, text) is None
    assert within_stated("make drift-demo", 91, text) is not None
    # A figure twice too high is as stale as one too low.
    assert within_stated("make test", 3 * 60, text) is None
    assert "took 2.9 minutes, but the README says about 6" in str(within_stated("make test", 2.9 * 60, text))
    with pytest.raises(LookupError, match="make up"):
        stated_minutes("make up", text)


def test_the_throughput_ratio_the_readme_states_is_the_last_benchmarks() -> None:
    measured = re.search(
        r"throughput at concurrency 64, bitloop / mlflow serve \| ([\d.]+)x",
        (PROJECT / "docs" / "benchmarks.md").read_text(),
    )
    stated = re.search(
        r"about (\d+) times the\s+throughput of\s+`mlflow models serve`", README, re.IGNORECASE
    )
    assert measured, "docs/benchmarks.md (make bench) has no throughput ratio"
    assert stated, "the README states no throughput ratio"
    assert int(stated[1]) == round(float(measured[1]))
    runtimes = re.search(
        r"concurrency 64, ONNX runtime / scikit-learn runtime \| ([\d.]+)x",
        (PROJECT / "docs" / "benchmarks.md").read_text(),
    )
    stated_runtimes = re.search(r"\(([\d.]+)\s+times the scikit-learn\s+runtime's\)", README)
    assert runtimes, "docs/benchmarks.md (make bench) has no runtime ratio"
    assert stated_runtimes, "the README states no runtime ratio"
    assert float(stated_runtimes[1]) == round(float(runtimes[1]), 1)
    batch = re.search(
        r"1,000-row batch, bitloop / mlflow serve \| ([\d.]+)x",
        (PROJECT / "docs" / "benchmarks.md").read_text(),
    )
    assert batch, "docs/benchmarks.md (make bench) has no batch ratio"
    claims_faster = re.search(r"1,000-row batch faster than\s+`mlflow models serve`", README) is not None
    assert claims_faster == (float(batch[1]) < 1.0)


def scale_results(million: float, drift: float, batched: int, growth: float) -> dict[str, Any]:
    """What bench/scale.py measures, with chosen figures."""
    level = {"stages": {"train": 1.0, "evaluate": 1.0, "register": 1.0, "ingest": 1.0}, "peak_rss_mib": 500}
    return {
        "machine": {"cpus": 2, "arch": "x86_64", "memory_gib": 24, "system": "Linux", "python": "3.11"},
        "training": [
            {**level, "rows": 10_000, "seconds": million / 100},
            {**level, "rows": 1_000_000, "seconds": million},
        ],
        "drift": [{"store": "SQLite", "rows_read": 5000, "seconds": drift, "peak_rss_mib": 300}],
        "writes": [{"store": "SQLite", "batched_rows_per_s": batched, "writer_rows_per_s": batched}],
        "soak": {
            "minutes": 30,
            "requests_per_s": 400.0,
            "rss_mib_first_sixth": 300,
            "rss_mib_last_sixth": round(300 * (1 + growth)),
            "rss_mib_max": 400,
            "growth": growth,
        },
    }


def test_the_scale_report_says_a_goal_is_met_only_when_the_figures_meet_it(tmp_path: Path) -> None:
    from bench.scale import write_markdown

    report = tmp_path / "scale.md"
    write_markdown(scale_results(540, 2.0, 40_000, 0.03), report)
    assert report.read_text().count(": met.") == 4
    for missed in (
        scale_results(660, 2.0, 40_000, 0.03),  # a million rows in 11 minutes
        scale_results(540, 31.0, 40_000, 0.03),
        scale_results(540, 2.0, 19_000, 0.03),
        scale_results(540, 2.0, 40_000, 0.12),
    ):
        write_markdown(missed, report)
        assert report.read_text().count(": met.") == 3
        assert report.read_text().count(": **not met**.") == 1
    # Time growing faster than the rows is not linear, however fast it is.
    faster = scale_results(300, 2.0, 40_000, 0.03)
    faster["training"][0]["seconds"] = 1.0
    write_markdown(faster, report)
    assert "on 2 cores: **not met**." in report.read_text()


def test_docs_scale_is_the_report_bench_scale_writes() -> None:
    text = (PROJECT / "docs" / "scale.md").read_text()
    assert text.startswith("# Scale\n\nGenerated by `make bench-scale`")
    assert re.findall(r"^## (\w+)", text, flags=re.MULTILINE) == ["Training", "Drift", "Prediction", "Model"]
    assert "1,000,000 |" in text  # the million-row level was run


def test_the_readme_counts_the_alert_rules() -> None:
    groups = yaml.safe_load((PROJECT / "ops" / "prometheus" / "rules" / "bitloop.yml").read_text())["groups"]
    rules = sum(len(g["rules"]) for g in groups)
    words = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen")
    (stated,) = re.findall(r"lists the (\w+) rules of `ops/prometheus/rules/`", README)
    assert words.index(stated) + 10 == rules


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces
    as hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    }


def test_every_link_to_a_section_finds_its_heading() -> None:
    documents = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
    links = 0
    for document in documents:
        text = document.read_text()
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?#([\w-]+)\)", text):
            linked = (document.parent / target) if target else document
            assert linked.is_file(), f"{document.name} links to {target}, which does not exist"
            assert anchor in heading_anchors(linked.read_text()), (
                f"{document.name}: no heading for {target}#{anchor}"
            )
            links += 1
    assert links >= 10  # the README's next steps alone link ten sections


def test_the_runbooks_scale_figures_are_the_last_bench_scale_runs() -> None:
    """docs/operations.md quotes docs/scale.md: the PostgreSQL log's batched rows a second (to the
    thousand) and a million rows' training time (to the minute)."""
    runbook = (PROJECT / "docs" / "operations.md").read_text().replace("\n", " ")
    scale = (PROJECT / "docs" / "scale.md").read_text()
    writes = scale.partition("## Prediction-log writes")[2]
    written = re.search(r"^\| PostgreSQL \| ([\d,]+) \|", writes, flags=re.MULTILINE)
    trained = re.search(r"^\| 1,000,000 \| (\d+) \|", scale, flags=re.MULTILINE)
    assert written, "docs/scale.md (make bench-scale) has no PostgreSQL write rate"
    assert trained, "docs/scale.md (make bench-scale) has no million-row training time"
    stated_rows = re.search(r"([\d,]+) rows a second measured", runbook)
    stated_minutes = re.search(r"a million rows train in about (\d+) minutes", runbook)
    assert stated_rows, "docs/operations.md no longer quotes docs/scale.md's write rate"
    assert stated_minutes, "docs/operations.md no longer quotes docs/scale.md's training time"
    assert int(stated_rows[1].replace(",", "")) == round(int(written[1].replace(",", "")), -3)
    assert int(stated_minutes[1]) == round(int(trained[1]) / 60)
