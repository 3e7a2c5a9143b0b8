"""External tools the tests need: a missing one skips a test on a developer's machine and fails it
in CI (`CI` set), where `.ci/run` installs every tool."""

from __future__ import annotations

import os
import shutil

import pytest


def require(*tools: str, install: str) -> None:
    """Skip (fail under CI) unless every tool is on PATH; `install` says how to get them."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: .ci/run installs it, so CI must have it")
    pytest.skip(message)
