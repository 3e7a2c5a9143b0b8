"""External tools the tests need: a missing one skips a test on a developer's machine and fails it
in CI (`CI` set), where `.ci/run` installs every tool."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


def require(*tools: str, install: str) -> None:
    """Skip (fail under CI) unless every tool is on PATH; `install` says how to get them."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        not_installed(f"{', '.join(missing)} not installed ({install})")


def not_installed(message: str) -> None:
    """Skip the test on a developer's machine; fail it in CI, where `.ci/run` installs every tool."""
    if os.environ.get("CI"):
        pytest.fail(f"{message}: .ci/run installs it, so CI must have it")
    pytest.skip(message)


def require_postgres() -> None:
    """Debian's PostgreSQL server programs, which live off PATH."""
    from tests.servers import postgres_bin

    if postgres_bin() is None:
        not_installed("PostgreSQL is not installed (apt-get install postgresql)")


def compose_client() -> list[str]:
    """docker-compose (v1, Debian's) where installed, else Compose v2 (`docker compose`, GitHub's)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    v2 = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True)
    if v2 and v2.returncode == 0:
        return ["docker", "compose"]
    require("docker-compose", install="apt-get install docker-compose, or Docker's Compose v2 plugin")
    return []


def chromium_path() -> str | None:
    """The system's Chromium, which Playwright drives (it downloads no browser here)."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A headless Chromium under Playwright; skips (fails under CI) when it is not installed."""
    if chromium_path() is None:
        require("chromium", install="apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()
