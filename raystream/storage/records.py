"""Checks of incoming batches against a log's schema (the record shapes themselves are in
:mod:`raystream.record`). Pure functions; thread-safe.
"""

from __future__ import annotations

import pyarrow as pa

from raystream.errors import SchemaMismatchError
from raystream.record import OFFSET_COLUMN, TIMESTAMP_COLUMN


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
