"""One error model for the CLI and the model server: a failure someone can act on is a `BitloopError`,
whose message says what to do and whose class says how it is reported: the CLI's exit code and the
server's HTTP status. Each is mapped in one place (`pipeline.__main__._reported`, the server's one
handler in `api.main`); an exception of any other type is a bug, reported as such.
"""

from __future__ import annotations

from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2  # the command or its configuration is wrong: fix it, then run again
EXIT_INVALID_DATA = 3  # a bad batch: retrying cannot help, so orchestrators should not retry


class BitloopError(Exception):
    """A failure with a message fit for the person or program that caused it or can fix it."""

    exit_code: int = EXIT_FAILED
    http_status: int | None = None
    """What the model server answers; None for an error the server never lets reach a client (the
    code that raises it also catches it)."""

    def detail(self) -> Any:
        """The answer's `detail`."""
        return str(self)


class InvalidInput(BitloopError):
    """The request, command or configuration is wrong: fix it and try again."""

    exit_code = EXIT_USAGE
    http_status = 422


class InvalidData(BitloopError):
    """The data is refused: retrying the same data cannot help."""

    exit_code = EXIT_INVALID_DATA
    http_status = 422


class ServiceUnavailable(BitloopError):
    """A dependency (the registry, the prediction log, a model) cannot serve now: try again later."""

    http_status = 503
