"""Shared helpers for the storage unit tests (imported by the test modules; not a test module itself)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from raystream.clock import now_ms
from raystream.config import TopicConfig
from raystream.record import RECORD_SCHEMA, stored_schema
from raystream.storage.batch import BatchHeader, StoredBatch
from raystream.storage.log import Log

BIG = 1 << 40  # a max_bytes that never limits a read


def records(n: int | None = None, *, start: int = 0, keys: Sequence[bytes | None] | None = None,
            values: Sequence[bytes | None] | None = None, timestamps: Sequence[int | None] | None = None,
            headers: Sequence[list] | None = None) -> pa.RecordBatch:
    """A Kafka-style record batch; keys/values default to ``k<i>`` / ``v<i>`` for i in [start, start+n)."""
    if n is None:
        n = len(keys if keys is not None else values)
    keys = [f"k{i}".encode() for i in range(start, start + n)] if keys is None else list(keys)
    values = [f"v{i}".encode() for i in range(start, start + n)] if values is None else list(values)
    headers = [[] for _ in range(n)] if headers is None else list(headers)
    batch = pa.RecordBatch.from_pylist(
        [{"key": k, "value": v, "headers": h} for k, v, h in zip(keys, values, headers, strict=True)],
        schema=RECORD_SCHEMA)
    if timestamps is not None:
        batch = batch.append_column("_timestamp", pa.array(list(timestamps), pa.int64()))
    return batch


def stored(base: int, n: int, *, timestamps: Sequence[int] | None = None, leader_epoch: int = 0,
           user_schema: pa.Schema = RECORD_SCHEMA, **header_fields) -> StoredBatch:
    """A stored batch of ``n`` Kafka-style records at offsets [base, base+n) (as the log would build it)."""
    ts = list(timestamps) if timestamps is not None else [1000 + base + i for i in range(n)]
    user = records(n, start=base)
    columns = [pa.array(range(base, base + n), pa.int64()), pa.array(ts, pa.int64())] + list(user.columns)
    data = pa.RecordBatch.from_arrays(columns, schema=stored_schema(user_schema))
    header = BatchHeader(base, n - 1, n, ts[0], max(ts), leader_epoch, **header_fields)
    return StoredBatch(header, data)


def open_log(path: Path, config: TopicConfig | dict | None = None, *, now: int | None = None, **kwargs) -> Log:
    """Open a Log; ``now`` (the open time, which starts the flush and checkpoint intervals) defaults to the
    wall clock, as the replica actor passes it — the storage layer itself never reads a clock."""
    if isinstance(config, dict):
        config = TopicConfig.from_dict(config)
    return Log(path, config, now=now_ms() if now is None else now, **kwargs)


def rows(log: Log, start: int | None = None, max_offset: int | None = None) -> list[tuple]:
    """Every record readable from ``start`` (default: the log start) as (offset, timestamp, key, value)."""
    start = log.log_start_offset if start is None else start
    out = []
    for batch in log.read(start, BIG, max_offset=max_offset):
        d = batch.to_pydict()
        out.extend(zip(d["_offset"], d["_timestamp"], d.get("key", [None] * batch.num_rows),
                       d.get("value", [None] * batch.num_rows), strict=True))
    return out


def offsets_of(batches: Sequence[pa.RecordBatch]) -> list[int]:
    return [o for b in batches for o in b.column("_offset").to_pylist()]


def batch_positions(log: Log, segment_index: int = -1) -> list[int]:
    """File positions of the batches of one segment (default: the active one)."""
    return [pos for pos, _ in log.segments[segment_index].headers()]


def flip_byte(path: Path, position: int, mask: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


def truncate_file(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
