"""The prediction log's rows, and what may go in them: the answered record (`Row`), a logged
prediction with its outcome (`LoggedPrediction`), the strings no store can keep (`unstorable`), and
the store's URL with its password hidden (`redacted`, `scrubbed`)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from core.errors import ServiceUnavailable

SHADOW = "shadow"
"""The one variant that answered nobody: a shadow row repeats inputs another variant's row logged.
Every other variant (champion, canary, challenger, and any added later) answered a request, so the
readers below filter shadow rows out by name rather than list the variants that count."""


class PredictionLogUnavailable(ServiceUnavailable, RuntimeError):
    """The prediction log cannot be opened; the message names the setting and never a password."""


class Row(NamedTuple):
    """One answered record. A named tuple, not a validated model nor a frozen dataclass: rows are
    built on the request path, and a frozen dataclass's __init__ costs 3 ms per 1,000-row batch."""

    ts: float
    """Unix seconds."""
    request_id: str
    model_name: str
    model_version: str
    variant: str
    """champion, challenger or shadow."""
    features: dict[str, Any]
    prediction: Any
    probabilities: dict[str, float] | None
    row_index: int = 0
    """The record's position in its request (0 for /predict)."""
    entity_id: str | None = None
    """The client's id for what the record describes (a customer, say), when it sent one."""


class LoggedPrediction(NamedTuple):
    """One logged prediction and its true outcome, when one arrived."""

    ts: float
    version: str
    variant: str
    prediction: Any
    probabilities: dict[str, float] | None
    outcome: Any = None
    received_at: float | None = None

    @property
    def labelled(self) -> bool:
        return self.received_at is not None


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """The URL fit for logs and answers: any password replaced by ***."""
    if not is_postgres(url):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def scrubbed(text: str, url: str) -> str:
    """`text` (an error message, say) with the URL's password replaced by ***."""
    password = urlsplit(url).password if is_postgres(url) else None
    text = text.replace(url, redacted(url))
    return text.replace(password, "***") if password else text


def unstorable(text: str) -> str | None:
    """Why the log cannot keep `text` exactly on every store, or None when it can.

    Two kinds of string are refused at the door wherever a client sends one: a NUL character
    (PostgreSQL's text and JSONB refuse it, so one such row used to stop the log for good) and a
    lone surrogate (U+D800 to U+DFFF: not text at all in UTF-8, which both stores keep). Every other
    string is stored and read back exactly."""
    if "\x00" in text:
        return "holds a NUL character (U+0000), which the prediction log cannot store"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (U+D800 to U+DFFF), which is not UTF-8 text"
    return None


def quarantine_text(row: Row) -> str:
    """A row as JSON text of ASCII only: every character any store refuses (NUL, a lone surrogate)
    escaped, so the row can be kept, read and replayed by hand."""
    return json.dumps(row._asdict(), ensure_ascii=True, default=repr)
