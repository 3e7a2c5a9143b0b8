"""Structured logging: `message key=value ...` for people, JSON lines for machines."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from typing import Any

# user:password@ in any URL (MLflow, PostgreSQL, S3 endpoints): the password never reaches a log line.
_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


def redact(text: str) -> str:
    """`text` with the password of every URL replaced by ***."""
    return _CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text)


class RedactedStream:
    """A text stream that writes through `redact`: what a command prints (its result, its errors, a
    traceback) never shows a URL's password, whichever code printed it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding: the stream's own
        return getattr(self._stream, name)


def redact_output() -> None:
    """Route this process's stdout and stderr through `redact` (the CLI's first step)."""
    if not isinstance(sys.stdout, RedactedStream):
        sys.stdout = RedactedStream(sys.stdout)
    if not isinstance(sys.stderr, RedactedStream):
        sys.stderr = RedactedStream(sys.stderr)


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in _extras(record).items())
        when = self.formatTime(record, "%H:%M:%S")
        base = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        text = f"{base} {fields}" if fields else base
        return redact(text + ("\n" + self.formatException(record.exc_info) if record.exc_info else ""))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(payload, default=str))


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def _install_redaction() -> None:
    """Redact every record as it is made, whichever handler (ours, MLflow's, uvicorn's) prints it."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if record.args:
            # Flatten only a message that needs redacting: formatters such as uvicorn's access
            # log read the arguments themselves.
            message = record.getMessage()
            redacted = redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        else:
            record.msg = _redacted(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class _RedactExtras(logging.Filter):
    """Extras are set on the record after the factory made it: redact them on the way out."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class _NoPipVersionWarning(logging.Filter):
    """MLflow warns, once per model it logs, that it cannot find pip's version: a uv-made environment
    has no pip. Each model's requirements are pinned from this environment explicitly
    (`pipeline.stages.register.pip_requirements`), so the warning says nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to resolve installed pip version")


def configure_logging(level: str | None = None) -> None:
    """Log to stderr; BITLOOP_LOG_FORMAT=json switches to JSON lines, BITLOOP_LOG_LEVEL sets the level."""
    handler = logging.StreamHandler(sys.stderr)
    json_lines = os.environ.get("BITLOOP_LOG_FORMAT", "text").lower() == "json"
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    handler.addFilter(_RedactExtras())
    _install_redaction()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("BITLOOP_LOG_LEVEL", "INFO").upper())
    for noisy in ("urllib3", "httpx", "httpcore", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    environment = logging.getLogger("mlflow.utils.environment")
    if not any(isinstance(f, _NoPipVersionWarning) for f in environment.filters):
        environment.addFilter(_NoPipVersionWarning())
