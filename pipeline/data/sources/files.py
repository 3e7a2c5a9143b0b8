"""CSV or Parquet tables from a local path or an HTTP(S) URL, read as the source wrote them."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pandas as pd

from core.errors import BitloopError

PARQUET_MAGIC = b"PAR1"


class SourceError(BitloopError, RuntimeError):
    """The configured data source could not be read."""


def fetch_bytes(location: str, timeout: float = 60.0) -> bytes:
    """The raw bytes at a file path or an http(s) URL."""
    if location.startswith(("http://", "https://")):
        try:
            response = httpx.get(location, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise SourceError(f"could not fetch {location}: {err}") from None
        return response.content
    path = Path(location).expanduser()
    if not path.is_file():
        raise SourceError(f"data.path {location!r} does not exist (resolved to {path.resolve()})")
    return path.read_bytes()


def parse_table(content: bytes, location: str) -> pd.DataFrame:
    """Parse CSV or Parquet bytes; CSV cells stay strings so nothing is lost before validation."""
    if content[:4] == PARQUET_MAGIC:
        return pd.read_parquet(io.BytesIO(content))
    try:
        frame = pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False, skipinitialspace=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise SourceError(f"{location} is neither Parquet nor readable CSV: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def load_table(location: str) -> pd.DataFrame:
    return parse_table(fetch_bytes(location), location)
