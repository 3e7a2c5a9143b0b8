"""Real servers for tests: started on 127.0.0.1 with free ports, stopped by PID."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after `grace` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def serve(
    command: Sequence[str],
    health_url: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[subprocess.Popen[bytes]]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        wait_until_healthy(health_url, process, timeout, log)
        yield process
    finally:
        stop(process)


def mlflow_command(workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """A lean MLflow tracking server's command and environment: SQLite backend, local artefacts, one
    worker, no job runner."""
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--expose-prometheus",
        str(workdir / "metrics"),
    ]
    env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    return command, env


@contextmanager
def mlflow_server(workdir: Path, port: int | None = None) -> Iterator[str]:
    """A lean MLflow tracking server on `port` (default: a free one); its URI."""
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    command, env = mlflow_command(workdir, port)
    with serve(command, f"{uri}/health", workdir, env):
        yield uri


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (`apt-get install postgresql`), newest version first."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class Postgres:
    """A real PostgreSQL on a free 127.0.0.1 port with its data in a new directory; `url` has a password.

    The server refuses to run as root, so under root it runs as Debian's `postgres` user. It can be
    stopped and started again on the same port and data, to take the database away from a client.
    """

    def __init__(self) -> None:
        # Its own directory under /tmp: pytest's are the owner's only, and the server may run as `postgres`.
        workdir = Path(tempfile.mkdtemp(prefix="bitloop-postgres-"))
        programs = postgres_bin()
        if programs is None:
            raise FileNotFoundError("no PostgreSQL server programs under /usr/lib/postgresql")
        self.programs, self.workdir = programs, workdir
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.port = free_port()
        password = secrets.token_urlsafe(12)
        self.url = f"postgresql://bitloop:{password}@127.0.0.1:{self.port}/postgres"
        (workdir / "sockets").mkdir(exist_ok=True)
        (workdir / "password").write_text(password)
        if self.as_user:
            subprocess.run(["chown", "-R", "postgres", str(workdir)], check=True)
        subprocess.run(
            [
                *self.as_user,
                str(programs / "initdb"),
                "-D",
                str(workdir / "data"),
                "-U",
                "bitloop",
                "-A",
                "scram-sha-256",
                f"--pwfile={workdir / 'password'}",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.workdir / "server.log"
        self.process = subprocess.Popen(
            [
                *self.as_user,
                str(self.programs / "postgres"),
                "-D",
                str(self.workdir / "data"),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.workdir / "sockets"),
                "-c",
                "fsync=off",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while subprocess.run(
            [str(self.programs / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
        ).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """A fast shutdown (clients are disconnected), waited for; a kill only if that fails."""
        if self.process is None:
            return
        subprocess.run(
            [
                *self.as_user,
                str(self.programs / "pg_ctl"),
                "stop",
                "-D",
                str(self.workdir / "data"),
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
            ],
            capture_output=True,
            check=False,
        )
        stop(self.process)
        self.process = None


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
