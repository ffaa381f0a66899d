"""Kafka records <-> rows of an Arrow-native topic: each record's value is one row as a JSON object.

An Arrow-native topic (created with a schema) stores rows, not key/value records. For Kafka clients the
gateway maps them with JSON, the lingua franca of Kafka producers in every language:

* Produce: each record's value must be a JSON object whose fields are the schema's columns (a missing
  field is null; an unknown field, a value of the wrong type, a null value or a non-object is refused,
  the whole partition request with INVALID_RECORD, nothing appended). The record's timestamp becomes the
  row's ``_timestamp``. Record keys only choose the partition (on the client, as for any Kafka topic) and
  are not stored: a row's key is its topic's key column. Records with headers are refused, since rows
  have nowhere to keep them.
* Fetch: each row goes back as one record: the value is the row as a JSON object, the key the key
  column's value as JSON (null without a key column), the timestamp the row's ``_timestamp``, no headers.

JSON types: numbers, strings, booleans, null, arrays and objects as Arrow's JSON reader maps them to the
schema; timestamps as ISO 8601 strings; binary columns as base64 strings going out, and coming in as
Arrow's JSON reader reads a string into binary (its UTF-8 bytes).

Parsing is vectorised (pyarrow's JSON reader over the values joined by newlines); values holding a
newline are first put on one line each (``json.loads``/``json.dumps`` per record). Encoding converts rows to Python objects (``to_pylist``)
and ``json.dumps`` each: a Kafka client asked for JSON text.

Pure functions; thread-safe.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from raystream.errors import InvalidRecordError
from raystream.record import OFFSET_COLUMN, TIMESTAMP_COLUMN

#: Block size for Arrow's JSON reader: one block per request (a request is at most 100 MiB).
_BLOCK_BYTES = 1 << 26


def rows_from_records(records: pa.RecordBatch, schema: pa.Schema, topic: str) -> pa.RecordBatch:
    """The rows (``schema`` plus ``_timestamp``) that decoded Kafka records (key, value, headers,
    ``_timestamp``) carry as JSON values; InvalidRecordError for anything that does not map."""
    if records.num_rows == 0:
        return pa.RecordBatch.from_pylist([], schema=schema.append(pa.field(TIMESTAMP_COLUMN, pa.int64())))
    values = records.column("value")
    if values.null_count:
        raise InvalidRecordError(f"topic {topic!r} is Arrow-native: a record's value must be a JSON object, "
                                 f"got a null value")
    if "headers" in records.schema.names and pc.any(pc.greater(pc.list_value_length(records.column("headers")),
                                                                0)).as_py():
        raise InvalidRecordError(f"topic {topic!r} is Arrow-native: its rows keep no record headers")
    table = _parse(values, schema, topic)
    columns = [c.combine_chunks() for c in table.columns] + [records.column(TIMESTAMP_COLUMN)]
    return pa.RecordBatch.from_arrays(columns, schema=schema.append(pa.field(TIMESTAMP_COLUMN, pa.int64())))


def _parse(values: pa.Array, schema: pa.Schema, topic: str) -> pa.Table:
    """One vectorised parse of the values as newline-delimited JSON; values holding newlines are first
    re-serialised on one line each."""
    binary = values.cast(pa.binary())
    if pc.any(pc.match_substring(binary, "\n")).as_py():
        binary = pa.array([_one_line(v, i, topic) for i, v in enumerate(binary.to_pylist())], pa.binary())
    data = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(binary)], pa.int32()), binary), b"\n")[0]
    data = data.as_py()
    try:
        table = pa_json.read_json(
            io.BytesIO(data), read_options=pa_json.ReadOptions(block_size=max(_BLOCK_BYTES, len(data) + 1)),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error"))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise InvalidRecordError(f"topic {topic!r}: record values are not JSON objects of its schema: "
                                 f"{exc}") from None
    if table.num_rows != len(binary):  # an empty value, or several objects in one
        raise InvalidRecordError(f"topic {topic!r}: {len(binary)} record values hold {table.num_rows} JSON "
                                 f"objects; each value must be exactly one")
    return table.select(schema.names).cast(schema)  # a missing non-nullable field: refused by the reader


def _one_line(value: bytes, i: int, topic: str) -> bytes:
    try:
        row = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRecordError(f"topic {topic!r}: record {i}'s value is not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise InvalidRecordError(f"topic {topic!r}: record {i}'s value is a JSON {type(row).__name__}, "
                                 f"not an object")
    return json.dumps(row, separators=(",", ":")).encode()


def records_from_rows(batch: pa.RecordBatch, key_column: str | None) -> pa.RecordBatch:
    """Kafka records (``_offset``, ``_timestamp``, ``key``, ``value``) of stored rows, values as JSON."""
    user = [n for n in batch.schema.names if n not in (OFFSET_COLUMN, TIMESTAMP_COLUMN)]
    rows = batch.select(user).to_pylist()
    values = [json.dumps(row, default=_json_default, separators=(",", ":")).encode() for row in rows]
    keys = ([json.dumps(row[key_column], default=_json_default).encode() for row in rows]
            if key_column is not None else [None] * len(rows))
    return pa.RecordBatch.from_arrays(
        [batch.column(OFFSET_COLUMN), batch.column(TIMESTAMP_COLUMN), pa.array(keys, pa.binary()),
         pa.array(values, pa.binary())], names=[OFFSET_COLUMN, TIMESTAMP_COLUMN, "key", "value"])


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} has no JSON form")
