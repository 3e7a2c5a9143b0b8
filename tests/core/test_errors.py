"""One error model: every exception bitloop defines is a `BitloopError`, reported by its class in one
place for the CLI (exit code) and one for the server (HTTP status)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import api
import core
import pipeline
from core.errors import BitloopError, InvalidData, InvalidInput, ServiceUnavailable
from core.params import ParamsError
from core.registry import TrackingUnavailable
from pipeline.__main__ import _reported
from pipeline.driver.versioning import StageFailed
from pipeline.stages.validate import ValidationFailed


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in `core`, `api` and `pipeline`, by its qualified name."""
    found = {}
    for package in (core, api, pipeline):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            loaded = importlib.import_module(module.name)
            for name, value in vars(loaded).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.name
                ):
                    found[f"{module.name}.{name}"] = value
    return found


def test_every_exception_bitloop_defines_is_a_bitloop_error() -> None:
    exceptions = defined_exceptions()
    assert len(exceptions) >= 25  # the walk found the modules
    assert [name for name, kind in exceptions.items() if not issubclass(kind, BitloopError)] == []
    for name, kind in exceptions.items():
        assert getattr(kind, "exit_code", None) in (1, 2, 3), name
        assert getattr(kind, "http_status", 0) in (None, 400, 422, 503), name


@pytest.mark.parametrize(
    ("error", "code", "prefix"),
    [
        (ParamsError("params.yaml: train.candidates is empty"), 2, "error: "),
        (ValidationFailed("validation FAILED: 0 rows accepted"), 3, ""),
        (TrackingUnavailable("MLflow at http://127.0.0.1:5000 does not answer"), 1, "error: "),
        (StageFailed("validate", 3, "stage validate refused the batch"), 3, "error: "),
        (StageFailed("train", 137, "stage train was killed"), 1, "error: "),
    ],
)
def test_the_cli_reports_a_bitloop_error_by_its_class(
    error: BitloopError, code: int, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _reported(error, None) == code
    assert capsys.readouterr().err.strip() == f"{prefix}{error}"


def test_anything_else_is_a_bug_that_keeps_its_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert _reported(KeyError("model"), None) is None
    assert capsys.readouterr().err == ""


def test_the_kinds_say_how_they_are_answered() -> None:
    assert (InvalidInput.exit_code, InvalidInput.http_status) == (2, 422)
    assert (InvalidData.exit_code, InvalidData.http_status) == (3, 422)
    assert (ServiceUnavailable.exit_code, ServiceUnavailable.http_status) == (1, 503)
    assert BitloopError.http_status is None  # by default an error never reaches a client
