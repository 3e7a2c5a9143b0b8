"""The README's commands, variables and params keys exist, so it cannot drift from the code."""

from __future__ import annotations

import importlib.util
import re
import sys

import yaml

from api.settings import ApiSettings
from pipeline.logs import configure_logging
from tests.factories import PROJECT

README = (PROJECT / "README.md").read_text()


def _stack_fields() -> set[str]:
    spec = importlib.util.spec_from_file_location("stack", PROJECT / "ops" / "local" / "stack.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stack"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return set(module.StackSettings.model_fields)


def test_every_make_target_in_the_readme_exists() -> None:
    makefile = (PROJECT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.MULTILINE))
    mentioned = set(re.findall(r"\bmake ([a-z][a-z-]+)", README))
    assert mentioned
    assert mentioned <= targets


def test_every_documented_variable_is_read_by_a_settings_class() -> None:
    api = {f"BITLOOP_API_{name.upper()}" for name in ApiSettings.model_fields}
    stack = {f"BITLOOP_{name.upper()}" for name in _stack_fields()}
    logging_vars = set(re.findall(r"BITLOOP_LOG_\w+", (PROJECT / "pipeline" / "logs.py").read_text()))
    assert configure_logging is not None
    dag_vars = {
        v
        for path in (PROJECT / "dags").glob("*.py")
        for v in re.findall(r'os\.environ\.get\("(BITLOOP_\w+)"', path.read_text())
    }
    mentioned = set(re.findall(r"\bBITLOOP_[A-Z_]+[A-Z]", README))
    assert mentioned
    assert mentioned <= api | stack | logging_vars | dag_vars


def test_every_params_key_in_the_readme_exists() -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    mentioned = set(
        re.findall(r"`((?:data|model|validate|split|train|evaluate|promote|drift)\.[a-z_]+)`", README)
    )
    assert mentioned
    for key in mentioned:
        section, name = key.split(".")
        assert name in params[section], key


def test_files_the_readme_links_exist() -> None:
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        if not link.startswith("http"):
            assert (PROJECT / link).exists(), link
