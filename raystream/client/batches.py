"""Arrow helpers for ``send_batch``: shaping a user table into a produce batch, partitioning its rows by
key (vectorised murmur2) and cutting it into requests. No per-row Python conversion except of the key
column, which murmur2 needs as bytes. Pure functions; thread-safe."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raystream.core.partitioner import partitions_for_keys
from raystream.errors import RecordTooLargeError
from raystream.record import HEADER_TYPE, TIMESTAMP_COLUMN

_BINARY_LIKE = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_string, pa.types.is_large_string,
                pa.types.is_binary_view, pa.types.is_string_view, pa.types.is_null)
_RECORD_COLUMNS = ("key", "value", "timestamp", "headers", TIMESTAMP_COLUMN)


def _as_binary(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    if not any(check(column.type) for check in _BINARY_LIKE):
        raise TypeError(f"column {name!r} must be binary or string, got {column.type}")
    return column if column.type == pa.binary() else column.cast(pa.binary())


def _as_timestamp_ms(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    if pa.types.is_timestamp(column.type):
        if column.type.unit != "ms":
            column = column.cast(pa.timestamp("ms", tz=column.type.tz))
        return column.cast(pa.int64())
    if pa.types.is_integer(column.type):
        return column if column.type == pa.int64() else column.cast(pa.int64())
    raise TypeError(f"column {name!r} must be int64 milliseconds or an Arrow timestamp, got {column.type}")


def record_table(table: pa.Table) -> pa.Table:
    """A user table (``value`` and optional ``key``, ``timestamp``, ``headers``) as a produce table of a
    topic without schema: ``key``, ``value``, ``headers`` and, when given, ``_timestamp``."""
    names = table.column_names
    unknown = [n for n in names if n not in _RECORD_COLUMNS]
    if unknown:
        raise ValueError(f"unexpected columns {unknown}: a topic without schema takes value, key, timestamp "
                         "and headers")
    if "value" not in names:
        raise ValueError("the table needs a 'value' column")
    if "timestamp" in names and TIMESTAMP_COLUMN in names:
        raise ValueError(f"pass either 'timestamp' or '{TIMESTAMP_COLUMN}', not both")
    n = table.num_rows
    value = _as_binary(table.column("value"), "value")
    key = _as_binary(table.column("key"), "key") if "key" in names else pa.chunked_array([pa.nulls(n, pa.binary())])
    if "headers" in names:
        headers = table.column("headers")
        if headers.type != HEADER_TYPE:
            try:
                headers = headers.cast(HEADER_TYPE)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise TypeError(f"column 'headers' must be {HEADER_TYPE}, got {headers.type}") from exc
    else:
        headers = pa.chunked_array([pa.nulls(n, HEADER_TYPE)])
    arrays, fields = [key, value, headers], [pa.field("key", pa.binary()), pa.field("value", pa.binary()),
                                             pa.field("headers", HEADER_TYPE)]
    ts_name = "timestamp" if "timestamp" in names else TIMESTAMP_COLUMN if TIMESTAMP_COLUMN in names else None
    if ts_name is not None:
        arrays.append(_as_timestamp_ms(table.column(ts_name), ts_name))
        fields.append(pa.field(TIMESTAMP_COLUMN, pa.int64()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def key_partitions(keys: pa.ChunkedArray, n_partitions: int) -> np.ndarray:
    """Kafka's partition (murmur2) of every key; -1 for null keys. Keys that are not binary or strings are
    hashed as their string form (``5`` as ``b"5"``)."""
    if not any(check(keys.type) for check in _BINARY_LIKE):
        try:
            keys = keys.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise TypeError(f"cannot partition by a key column of type {keys.type}") from exc
    if keys.num_chunks == 0:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([partitions_for_keys(chunk, n_partitions) for chunk in keys.chunks])


def split_by_partition(table: pa.Table, partitions: np.ndarray | int,
                       max_request_size: int) -> list[tuple[int, pa.RecordBatch]]:
    """``(partition, batch)`` pieces of ``table``: rows grouped by partition (in row order within a
    partition: one stable sort, then zero-copy slices) and cut to at most ``max_request_size`` bytes.
    Raises RecordTooLargeError (before anything is sent) for a single row above the limit."""
    if isinstance(partitions, (int, np.integer)):
        groups = [(int(partitions), table)]
    else:
        order = np.argsort(partitions, kind="stable")
        ordered = partitions[order]
        if ordered[0] == ordered[-1]:
            groups = [(int(ordered[0]), table)]
        else:
            table = table.take(pa.array(order))
            bounds = np.flatnonzero(np.diff(ordered)) + 1
            starts = np.concatenate([[0], bounds])
            ends = np.concatenate([bounds, [len(ordered)]])
            groups = [(int(ordered[s]), table.slice(s, e - s)) for s, e in zip(starts, ends, strict=True)]
    pieces = []
    for partition, group in groups:
        for batch in group.combine_chunks().to_batches():
            pieces.extend((partition, piece) for piece in _cut(batch, max_request_size))
    return pieces


def _cut(batch: pa.RecordBatch, limit: int) -> list[pa.RecordBatch]:
    if batch.nbytes <= limit:
        return [batch]
    if batch.num_rows == 1:
        raise RecordTooLargeError(f"a row of {batch.nbytes} bytes exceeds max_request_size={limit}",
                                  size=batch.nbytes, limit=limit)
    rows = max(1, int(batch.num_rows * limit / batch.nbytes * 0.9))
    out = []
    for start in range(0, batch.num_rows, rows):
        out.extend(_cut(batch.slice(start, rows), limit))
    return out

