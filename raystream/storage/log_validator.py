"""What :meth:`raystream.storage.log.Log.append` does before a leader's batch is written: check it and
stamp it with offsets and timestamps (Kafka's ``LogValidator``); and what an append returns.

Pure functions (``now`` comes in as an argument, in ms); thread-safe.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from raystream.config import TopicConfig
from raystream.errors import InvalidRecordError, RecordTooLargeError
from raystream.record import ATTR_LOG_APPEND_TIME, TIMESTAMP_COLUMN, stored_schema
from raystream.storage.batch import BatchHeader
from raystream.storage.records import check_batch_schema


@dataclasses.dataclass(frozen=True)
class AppendInfo:
    """What an append returns (Kafka's LogAppendInfo)."""

    base_offset: int
    last_offset: int
    max_timestamp: int
    log_append_time: int
    record_count: int
    header: BatchHeader  # the stored batch's header, exactly as recovery and followers will see it


def as_record_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """One record batch for one append (a table's chunks are combined)."""
    if isinstance(batch, pa.RecordBatch):
        return batch
    if isinstance(batch, pa.Table):
        batches = batch.combine_chunks().to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=batch.schema)
    raise TypeError(f"expected a pyarrow RecordBatch or Table, got {type(batch).__name__}")


def validate_batch(batch: pa.RecordBatch, user_schema: pa.Schema, config: TopicConfig, key_column: str,
                   log_name: str) -> None:
    """Raise SchemaMismatchError, InvalidRecordError or RecordTooLargeError for a batch the log refuses."""
    check_batch_schema(user_schema, batch, where=f"append to {log_name}")
    if batch.num_rows == 0:
        raise InvalidRecordError("cannot append an empty batch")
    size = batch.nbytes
    if size > config.max_message_bytes:
        raise RecordTooLargeError(
            f"batch of {size} bytes exceeds max.message.bytes={config.max_message_bytes}",
            size=size, limit=config.max_message_bytes)
    if config.compact and key_column in batch.schema.names and batch.column(key_column).null_count:
        raise InvalidRecordError(f"compacted topic requires a non-null {key_column!r} for every record")


def assign_offsets_and_timestamps(batch: pa.RecordBatch, user_schema: pa.Schema, base: int, attributes: int,
                                  now: int) -> tuple[pa.RecordBatch, int, int]:
    """The stored batch (system columns first) with its first and max timestamps. Offsets run from
    ``base``; each row's timestamp is its ``_timestamp`` (a null one is ``now``) unless the batch has none or
    ``attributes`` say LogAppendTime: then every row gets ``now``."""
    n = batch.num_rows
    offsets = pa.array(np.arange(base, base + n, dtype=np.int64))
    if TIMESTAMP_COLUMN in batch.schema.names and not attributes & ATTR_LOG_APPEND_TIME:
        timestamps = batch.column(TIMESTAMP_COLUMN)
        if timestamps.null_count:
            timestamps = timestamps.fill_null(now)
        ts = timestamps.to_numpy()
        first_ts, max_ts = int(ts[0]), int(ts.max())
    else:
        timestamps = pa.array(np.full(n, now, dtype=np.int64))
        first_ts = max_ts = now
    columns = [offsets, timestamps] + [batch.column(name) for name in user_schema.names]
    stored = pa.RecordBatch.from_arrays(columns, schema=stored_schema(user_schema))
    return stored, first_ts, max_ts
