"""External tools the tests need: a missing one skips a test on a developer's machine and fails it
in CI (`CI` set), where `.ci/run` installs every tool."""

from __future__ import annotations

import os
import shutil
import subprocess

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


def compose_client() -> list[str]:
    """docker-compose (v1, Debian's) where installed, else Compose v2 (`docker compose`, GitHub's)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    v2 = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True)
    if v2 and v2.returncode == 0:
        return ["docker", "compose"]
    require("docker-compose", install="apt-get install docker-compose, or Docker's Compose v2 plugin")
    return []
