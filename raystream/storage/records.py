"""The two record shapes a log stores, and checks of incoming batches against a log's schema.

* Kafka-style records: ``key`` (binary, nullable), ``value`` (binary, nullable: a null value is a
  tombstone for compaction) and ``headers`` (list of key/value structs; keys may repeat, as in Kafka).
* Arrow-native rows: any ``pyarrow.Schema`` of the topic, optionally with a key column.

Either way the producer may add an int64 ``_timestamp`` column (CreateTime, ms); the log adds
``_offset`` (and ``_timestamp`` when absent). Pure functions; thread-safe.
"""

from __future__ import annotations

import pyarrow as pa

from raystream.errors import SchemaMismatchError
from raystream.storage.batch import OFFSET_COLUMN, SYSTEM_COLUMNS, TIMESTAMP_COLUMN

HEADER_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
RECORD_SCHEMA = pa.schema([("key", pa.binary()), ("value", pa.binary()), ("headers", HEADER_TYPE)])


def schema_differences(expected: pa.Schema, actual: pa.Schema) -> list[str]:
    """Human-readable differences, one per field, in ``expected`` order."""
    diffs = []
    actual_by_name = {f.name: f for f in actual}
    for field in expected:
        other = actual_by_name.pop(field.name, None)
        if other is None:
            diffs.append(f"missing field {field.name!r} ({field.type})")
        elif not other.type.equals(field.type):
            diffs.append(f"field {field.name!r} is {other.type}, expected {field.type}")
        elif other.nullable and not field.nullable:
            diffs.append(f"field {field.name!r} is nullable, expected non-nullable")
    diffs.extend(f"unexpected field {name!r} ({f.type})" for name, f in actual_by_name.items())
    if not diffs and [f.name for f in expected] != [f.name for f in actual]:
        diffs.append(f"field order {[f.name for f in actual]} differs from {[f.name for f in expected]}")
    return diffs


def check_user_schema(schema: pa.Schema) -> None:
    """A topic schema may not use the system column names."""
    if not isinstance(schema, pa.Schema):
        raise TypeError(f"schema must be a pyarrow.Schema, got {type(schema).__name__}")
    reserved = [f.name for f in schema if f.name in SYSTEM_COLUMNS]
    if reserved:
        raise SchemaMismatchError(f"schema uses reserved column names {reserved}", fields=reserved)


def check_batch_schema(expected: pa.Schema, batch: pa.RecordBatch, where: str) -> None:
    """Raise SchemaMismatchError naming every differing field unless ``batch`` (minus an optional
    ``_timestamp`` column) has exactly the ``expected`` user schema."""
    actual = batch.schema
    if TIMESTAMP_COLUMN in actual.names:
        ts_field = actual.field(TIMESTAMP_COLUMN)
        if not ts_field.type.equals(pa.int64()):
            raise SchemaMismatchError(f"{where}: {TIMESTAMP_COLUMN} must be int64 ms, got {ts_field.type}",
                                      fields=[TIMESTAMP_COLUMN])
        actual = actual.remove(actual.get_field_index(TIMESTAMP_COLUMN))
    if OFFSET_COLUMN in actual.names:
        raise SchemaMismatchError(f"{where}: batches may not carry {OFFSET_COLUMN}; the log assigns offsets",
                                  fields=[OFFSET_COLUMN])
    if actual.equals(expected):
        return
    diffs = schema_differences(expected, actual)
    if diffs:
        raise SchemaMismatchError(f"{where}: " + "; ".join(diffs), fields=diffs)
