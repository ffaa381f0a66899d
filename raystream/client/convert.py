"""Fetched Arrow batches → what ``poll`` and ``poll_arrow`` return.

``poll`` converts to Python only the rows it returns (a fetched batch is sliced first). ``poll_arrow``
never converts: it relabels ``_offset``/``_timestamp`` as ``offset``/``timestamp`` and adds ``topic``
(dictionary-encoded string: one dictionary entry, int32 indices) and ``partition`` (int32) columns in
front of the user's columns. Pure functions; thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.protocol import Record, TopicMetadata, TopicPartition
from raystream.record import OFFSET_COLUMN, RECORD_SCHEMA, SYSTEM_COLUMNS, TIMESTAMP_COLUMN

TOPIC_TYPE = pa.dictionary(pa.int32(), pa.string())
SYSTEM_OUTPUT_FIELDS = [pa.field("topic", TOPIC_TYPE, nullable=False), pa.field("partition", pa.int32(), nullable=False),
                        pa.field("offset", pa.int64(), nullable=False),
                        pa.field("timestamp", pa.int64(), nullable=False)]


def requested_columns(columns: Any) -> tuple[str, ...] | None:
    """The user columns a ``columns=`` argument asks for (system and output columns dropped: they always
    come), checked for type; None means all."""
    if columns is None:
        return None
    if isinstance(columns, str) or not isinstance(columns, Iterable):
        raise TypeError("columns must be a list of column names or None")
    columns = list(columns)
    if not all(isinstance(c, str) for c in columns):
        raise TypeError("columns must be a list of column names")
    output = {f.name for f in SYSTEM_OUTPUT_FIELDS}
    return tuple(dict.fromkeys(c for c in columns if c not in output and c not in SYSTEM_COLUMNS))


def checked_selection(columns: Any, schemas: list[pa.Schema]) -> tuple[str, ...] | None:
    """The user columns ``columns`` selects, each checked to be a column of one of ``schemas`` (the
    assigned topics'; none assigned yet: anything goes)."""
    wanted = requested_columns(columns)
    if wanted is None or not schemas:
        return wanted
    known = {name for schema in schemas for name in schema.names}
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; the assigned topics have {sorted(known)}")
    return wanted


def user_schema(meta: TopicMetadata) -> pa.Schema:
    """The user columns a topic's fetched batches carry."""
    return meta.schema if meta.schema is not None else RECORD_SCHEMA


def to_records(tp: TopicPartition, batch: pa.RecordBatch, meta: TopicMetadata,
               key_deserializer: Callable[[bytes], Any] | None,
               value_deserializer: Callable[[bytes], Any] | None) -> list[Record]:
    """Records of ``batch`` (all user columns). For a topic with a schema, ``value`` is the row as a dict
    and ``key`` the row's key column value (or None)."""
    offsets = batch.column(OFFSET_COLUMN).to_pylist()
    timestamps = batch.column(TIMESTAMP_COLUMN).to_pylist()
    if meta.schema is None:
        keys = batch.column("key").to_pylist()
        values = batch.column("value").to_pylist()
        column = batch.column("headers")
        if column.null_count == len(column):
            headers = [()] * len(offsets)  # the common case: no headers at all, no per-record objects
        else:
            headers = [tuple((h["key"], h["value"]) for h in hs) if hs else () for hs in column.to_pylist()]
    else:
        names = [n for n in batch.schema.names if n not in SYSTEM_COLUMNS]
        values = batch.select(names).to_pylist()
        column = meta.key_column
        keys = [row.get(column) for row in values] if column else [None] * len(values)
        headers = [()] * len(values)
    if key_deserializer is not None:
        keys = [None if k is None else key_deserializer(k) for k in keys]
    if value_deserializer is not None:
        values = [None if v is None else value_deserializer(v) for v in values]
    topic, partition = tp.topic, tp.partition
    return [Record(topic, partition, o, t, k, v, h)
            for o, t, k, v, h in zip(offsets, timestamps, keys, values, headers, strict=True)]


def to_arrow(tp: TopicPartition, batch: pa.RecordBatch, columns: tuple[str, ...] | None) -> pa.RecordBatch:
    """``batch`` with topic, partition, offset, timestamp columns first, then ``columns`` (None: all)."""
    n = batch.num_rows
    names = [c for c in batch.schema.names if c not in SYSTEM_COLUMNS] if columns is None else list(columns)
    topic = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([tp.topic]))
    partition = pa.array(np.full(n, tp.partition, dtype=np.int32))
    arrays = [topic, partition, batch.column(OFFSET_COLUMN), batch.column(TIMESTAMP_COLUMN)]
    arrays += [batch.column(name) for name in names]
    schema = pa.schema(SYSTEM_OUTPUT_FIELDS + [batch.schema.field(name) for name in names])
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def output_schema(metas: list[TopicMetadata], columns: tuple[str, ...] | None) -> pa.Schema:
    """The schema of ``poll_arrow``'s table over topics ``metas`` (for an empty answer)."""
    fields: dict[str, pa.Field] = {}
    for meta in metas:
        schema = user_schema(meta)
        for name in (schema.names if columns is None else columns):
            if name in schema.names and name not in fields:
                fields[name] = schema.field(name)
    return pa.schema(SYSTEM_OUTPUT_FIELDS + list(fields.values()))


def arrow_table(pieces: list[pa.RecordBatch], empty_schema: pa.Schema) -> pa.Table:
    if not pieces:
        return empty_schema.empty_table()
    first = pieces[0].schema
    if all(p.schema.equals(first) for p in pieces):
        return pa.Table.from_batches(pieces, schema=first)
    return pa.concat_tables([pa.Table.from_batches([p]) for p in pieces], promote_options="default")
