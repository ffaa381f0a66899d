"""Kafka records with JSON values <-> rows of an Arrow-native topic (raystream.gateway.json_values)."""

from __future__ import annotations

import datetime
import json

import pyarrow as pa
import pytest

from raystream.errors import InvalidRecordError
from raystream.gateway.json_values import records_from_rows, rows_from_records
from raystream.record import OFFSET_COLUMN, TIMESTAMP_COLUMN

SCHEMA = pa.schema([("id", pa.int64(), False), ("name", pa.string()), ("at", pa.timestamp("ms")),
                    ("tags", pa.list_(pa.string())), ("blob", pa.binary())])
HEADERS = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))


def _records(values, headers=None) -> pa.RecordBatch:
    n = len(values)
    return pa.RecordBatch.from_pydict({
        "key": pa.array([None] * n, pa.binary()), "value": pa.array(values, pa.binary()),
        "headers": pa.array(headers or [[]] * n, HEADERS), TIMESTAMP_COLUMN: pa.array(range(n), pa.int64())})


def test_json_objects_become_rows_with_the_records_timestamps():
    values = [b'{"id": 1, "name": "a", "at": "2024-05-01T12:00:00", "tags": ["x", "y"]}',
              b'{"id": 2,\n "name": "multi-line"}',  # a newline inside a value: re-serialised, same rows
              b'{"name": "c", "id": 3}']
    rows = rows_from_records(_records(values), SCHEMA, "t")
    assert rows.schema == SCHEMA.append(pa.field(TIMESTAMP_COLUMN, pa.int64()))
    assert rows.to_pylist() == [
        {"id": 1, "name": "a", "at": datetime.datetime(2024, 5, 1, 12), "tags": ["x", "y"], "blob": None,
         TIMESTAMP_COLUMN: 0},
        {"id": 2, "name": "multi-line", "at": None, "tags": None, "blob": None, TIMESTAMP_COLUMN: 1},
        {"id": 3, "name": "c", "at": None, "tags": None, "blob": None, TIMESTAMP_COLUMN: 2}]


@pytest.mark.parametrize("value", [b"[1, 2]", b'{"id": 1, "unknown": 2}', b'{"id": "one"}', b"not json", b"",
                                   b'{"id": 1}{"id": 2}', b'{"id": 1,\n "x": 2}', b'"text"'])
def test_values_that_are_no_row_of_the_schema_are_refused(value):
    with pytest.raises(InvalidRecordError):
        rows_from_records(_records([b'{"id": 9}', value]), SCHEMA, "t")


def test_a_missing_non_nullable_field_is_refused():
    with pytest.raises(InvalidRecordError, match="required field"):
        rows_from_records(_records([b'{"name": "no id"}']), SCHEMA, "t")


def test_null_values_and_headers_have_no_place_in_a_row():
    with pytest.raises(InvalidRecordError, match="null"):
        rows_from_records(pa.RecordBatch.from_pydict({"key": pa.array([None], pa.binary()),
                                                      "value": pa.array([None], pa.binary()),
                                                      TIMESTAMP_COLUMN: pa.array([0], pa.int64())}), SCHEMA, "t")
    with pytest.raises(InvalidRecordError, match="headers"):
        rows_from_records(_records([b'{"id": 1}'], headers=[[{"key": "h", "value": b"v"}]]), SCHEMA, "t")


def test_rows_go_out_as_json_values_keyed_by_the_key_column():
    stored = pa.RecordBatch.from_pydict({
        "id": pa.array([7, 8], pa.int64()), "name": ["a", None],
        "at": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5), None], pa.timestamp("ms")),
        "tags": pa.array([["t"], []], pa.list_(pa.string())), "blob": pa.array([b"\x00\xff", None], pa.binary()),
        OFFSET_COLUMN: pa.array([10, 11], pa.int64()), TIMESTAMP_COLUMN: pa.array([5, 6], pa.int64())})
    records = records_from_rows(stored, key_column="id")
    assert records.column(OFFSET_COLUMN).to_pylist() == [10, 11]
    assert records.column(TIMESTAMP_COLUMN).to_pylist() == [5, 6]
    assert records.column("key").to_pylist() == [b"7", b"8"]
    assert [json.loads(v) for v in records.column("value").to_pylist()] == [
        {"id": 7, "name": "a", "at": "2024-01-02T03:04:05", "tags": ["t"], "blob": "AP8="},
        {"id": 8, "name": None, "at": None, "tags": [], "blob": None}]
    assert records_from_rows(stored, key_column=None).column("key").null_count == 2
    # And back: what goes out as JSON comes in as the same rows (binary aside: base64 text out, UTF-8 in).
    back = rows_from_records(_records(records.column("value").to_pylist()),
                             SCHEMA.remove(SCHEMA.get_field_index("blob")).append(pa.field("blob", pa.string())),
                             "t")
    assert back.column("id").to_pylist() == [7, 8] and back.column("at").to_pylist()[0] == datetime.datetime(
        2024, 1, 2, 3, 4, 5)
