"""The Makefile is the self-documenting command surface."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.factories import PROJECT

REQUIRED = {
    "help",
    "setup",
    "test",
    "test-stack",
    "lint",
    "repro",
    "bench",
    "up",
    "down",
    "status",
    "logs",
    "clean",
}


def make(*args: str) -> str:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout


def test_help_is_the_default_goal_and_lists_every_target() -> None:
    listed = set(re.findall(r"^\s+(?:\x1b\[36m)?([a-z-]+)", make(), flags=re.MULTILINE))
    assert listed >= REQUIRED


def make_targets(documented: bool = False) -> set[str]:
    """The Makefile's targets; with `documented`, those with a `## description`."""
    pattern = r"^([a-z][a-z0-9-]*):" + (r".*## \S" if documented else "")
    return set(re.findall(pattern, (PROJECT / "Makefile").read_text(), flags=re.MULTILINE))


def test_every_target_documents_itself() -> None:
    assert "test-e2e" in make_targets()
    assert make_targets() == make_targets(documented=True)


def test_setup_is_a_no_op_when_the_environment_is_current() -> None:
    assert "uv sync" not in make("-n", "setup")


def test_test_target_runs_pytest_without_stack_or_compose_tests() -> None:
    assert re.search(
        r"pytest -m \"not stack and not compose and not scale and not repro and not rollout and not e2e\"",
        make("-n", "test"),
    )
    assert re.search(r"pytest -m e2e", make("-n", "test-e2e"))
    assert re.search(r"pytest -m rollout", make("-n", "test-rollout"))
    assert re.search(r"pytest -m \"compose and not repro\"", make("-n", "test-compose"))
    assert re.search(r"pytest -m scale", make("-n", "test-scale"))


def test_the_pre_commit_hooks_run_what_make_lint_runs(tmp_path: Path) -> None:
    hooks = yaml.safe_load((PROJECT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    recipe = make("-n", "lint").replace(str(PROJECT) + "/", "")
    lint = [line.strip().removesuffix(" .") for line in recipe.splitlines() if line.strip()]
    assert [hook["entry"].replace(" --force-exclude", "") for hook in hooks] == lint
    pre_commit = [str(PROJECT / ".venv" / "bin" / "pre-commit")]
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache")}
    subprocess.run([*pre_commit, "validate-config"], cwd=PROJECT, check=True, env=env)
    # A file ruff would reformat fails the commit.
    unformatted = tmp_path / "unformatted.py"
    unformatted.write_text("x=1\n")
    hook = subprocess.run(
        [*pre_commit, "run", "ruff-format", "--files", str(unformatted)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert hook.returncode == 1, hook.stdout
    assert "would be reformatted" in hook.stdout
