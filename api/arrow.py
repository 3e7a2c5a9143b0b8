"""Apache Arrow IPC stream bodies for `/predict/batch`: read into columns, answered in kind.

pyarrow reads and writes them, and every stream is validated in full before a value is read: the
IPC reader trusts the offsets and lengths it is sent. (Not nanoarrow, a twentieth of the size:
byte-flipped streams crash it with a segmentation fault; pyarrow with full validation reads or
refuses them, as tests/api/test_arrow.py checks.) pandas loads pyarrow anyway when it is installed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import Any

import flatbuffers.encode
import flatbuffers.number_types as fb
import pyarrow as pa
from fastapi.exceptions import RequestValidationError
from flatbuffers.table import Table

from api.schemas import datatype
from core.errors import BitloopError
from core.registry import TAG as METADATA_PREFIX  # one namespace for bitloop's keys

ARROW_STREAM = "application/vnd.apache.arrow.stream"
CONTINUATION = -1
SCHEMA, DICTIONARY_BATCH, RECORD_BATCH = 1, 2, 3


class ArrowInvalid(BitloopError, ValueError):
    """The body is not an Arrow IPC stream bitloop can read within its limits."""


def _refuse(message: str, *loc: Any) -> RequestValidationError:
    return RequestValidationError([{"type": "arrow_invalid", "loc": ("body", *loc), "msg": message}])


def _int(data: bytes, at: int, size: int = 4) -> int:
    if at < 0 or at + size > len(data):
        raise ArrowInvalid("the stream ends inside a message")
    return int.from_bytes(data[at : at + size], "little", signed=True)


def _messages(body: bytes) -> Iterator[tuple[int, Table | None, bytes]]:
    """(header type, header table, message body) per message of an IPC stream, read from the framing
    and the flatbuffer metadata only, without decoding (or decompressing) any buffer."""
    pos = 0
    while pos < len(body):
        size = _int(body, pos)
        pos += 4
        if size == CONTINUATION:
            size = _int(body, pos)
            pos += 4
        if size == 0:
            return
        if size < 0 or pos + size > len(body):
            raise ArrowInvalid("the stream ends inside a message")
        meta = body[pos : pos + size]
        pos += size
        root = Table(meta, flatbuffers.encode.Get(fb.UOffsetTFlags.packer_type, meta, 0))
        kind = root.GetSlot(6, 0, fb.Uint8Flags)
        length = root.GetSlot(10, 0, fb.Int64Flags)
        if length < 0 or pos + length > len(body):
            raise ArrowInvalid("the stream ends inside a message")
        header = None
        if (at := root.Offset(8)) != 0:
            header = Table(meta, root.Indirect(root.Pos + at))
        yield kind, header, body[pos : pos + length]
        pos += length


def _batch(kind: int, header: Table | None) -> Table | None:
    """The RecordBatch table of a record batch or dictionary batch message."""
    if header is None or kind not in (RECORD_BATCH, DICTIONARY_BATCH):
        return None
    if kind == DICTIONARY_BATCH:
        at = header.Offset(6)
        return Table(header.Bytes, header.Indirect(header.Pos + at)) if at else None
    return header


def _decoded_size(batch: Table, data: bytes) -> int:
    """Bytes the batch's buffers take once decoded: a compressed buffer starts with its decoded size."""
    if batch.Offset(10) == 0:  # no BodyCompression: the buffers are the message body
        return len(data)
    at = batch.Offset(8)
    if at == 0:
        return 0
    start, count = batch.Vector(at), batch.VectorLen(at)
    if count * 16 > len(batch.Bytes):
        raise ArrowInvalid("a record batch lists more buffers than its metadata holds")
    total = 0
    for i in range(count):
        offset = batch.Get(fb.Int64Flags, start + 16 * i)
        length = batch.Get(fb.Int64Flags, start + 16 * i + 8)
        if length >= 8:
            declared = _int(data, offset, 8)
            total += length - 8 if declared == -1 else declared  # -1: stored as is
    return total


def check_limits(body: bytes, max_rows: int, max_bytes: int) -> None:
    """Refuse a stream whose rows or decoded bytes exceed the limits before anything is decoded.

    Written here because pyarrow decompresses and allocates a whole record batch before its size
    is known: 2 kB of zstd can declare gigabytes. The IPC framing and the sizes it declares are
    read with the flatbuffers runtime, which ONNX Runtime already brings.
    """
    rows = size = 0
    try:
        for kind, header, data in _messages(body):
            if (batch := _batch(kind, header)) is None:
                continue
            size += _decoded_size(batch, data)
            if kind == RECORD_BATCH:
                rows += batch.GetSlot(4, 0, fb.Int64Flags)
    except ArrowInvalid as err:
        raise _refuse(f"not a readable Arrow IPC stream: {err}") from None
    except (IndexError, TypeError, ValueError, OverflowError, struct.error) as err:
        raise _refuse(f"not a readable Arrow IPC stream: bad metadata ({type(err).__name__})") from None
    if size > max_bytes:
        raise _refuse(f"the stream decodes to {size} bytes; the limit is {max_bytes}")
    if not 1 <= rows <= max_rows:
        raise _refuse(f"the stream has {rows} rows: send between 1 and {max_rows}", "columns")


def read_columns(body: bytes, max_rows: int, max_bytes: int) -> dict[str, list[Any]]:
    """An Arrow IPC stream's columns as Python values (null as None), any number of record batches."""
    check_limits(body, max_rows, max_bytes)
    try:
        table = pa.ipc.open_stream(body).read_all()
        table.validate(full=True)
    except (pa.ArrowException, ValueError, TypeError, OSError) as err:
        raise _refuse(f"not a readable Arrow IPC stream: {str(err)[:200]}") from None
    names = table.column_names
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise _refuse(f"columns {twice} appear more than once", "columns")
    try:
        return {name: table.column(i).to_pylist() for i, name in enumerate(names)}
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:  # e.g. a date out of range
        raise _refuse(f"a column cannot be read as values: {str(err)[:200]}") from None


def wants_arrow(accept: str) -> bool:
    """Whether an Accept header prefers the Arrow stream to JSON (by quality, then by order)."""
    best: tuple[float, int, str] | None = None
    for order, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        wanted = media in (ARROW_STREAM, "application/json") and quality > 0
        if wanted and (best is None or (quality, -order) > (best[0], best[1])):
            best = (quality, -order, media)
    return best is not None and best[2] == ARROW_STREAM


TYPES = {"BOOL": "bool", "INT64": "int64", "FP64": "float64", "BYTES": "string"}


def write_predictions(
    labels: list[Any],
    probabilities: list[dict[str, float]] | None,
    classes: list[str],
    metadata: Mapping[str, str],
) -> bytes:
    """One record batch: `prediction`, then `probability_<class>` per class (classification);
    `metadata` (model name, version, variant, request id) in the schema as `bitloop.<key>`."""
    kind = datatype(labels)
    columns = {"prediction": pa.array([str(v) for v in labels] if kind == "BYTES" else labels, TYPES[kind])}
    for name in classes if probabilities is not None else []:
        columns[f"probability_{name}"] = pa.array([p[name] for p in probabilities or []], pa.float64())
    table = pa.table(columns, metadata={f"{METADATA_PREFIX}{key}": value for key, value in metadata.items()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
