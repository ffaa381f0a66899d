"""Per-batch column statistics and filtered reads that skip batches without decoding them."""

from __future__ import annotations

import math

import msgpack
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers import BIG

from raystream.clock import now_ms
from raystream.record import stored_schema
from raystream.storage import statistics
from raystream.storage.batch import BatchHeader

SCHEMA = pa.schema([("id", pa.int64()), ("score", pa.float64()), ("name", pa.string()),
                    ("at", pa.timestamp("ms"))])


def _table(start: int, n: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()),
                     "score": pa.array([float(i % 7) for i in range(start, start + n)]),
                     "name": pa.array([f"user-{i:06d}" for i in range(start, start + n)]),
                     "at": pa.array(range(start, start + n), pa.timestamp("ms"))}, schema=SCHEMA)


def _stats(batch: pa.RecordBatch) -> dict:
    return msgpack.unpackb(statistics.compute(batch))


# -- what is computed ------------------------------------------------------------------------------------------
def test_statistics_of_each_supported_type():
    stats = _stats(_table(10, 5).to_batches()[0])
    assert stats == {"id": [10, 14, 0], "score": [0.0, 6.0, 0], "name": ["user-000010", "user-000014", 0],
                     "at": [10, 14, 0]}


def test_nan_long_strings_nulls_and_unordered_types():
    batch = pa.RecordBatch.from_pydict({
        "f": pa.array([1.0, math.nan, 2.0]),
        "s": pa.array(["a", "z" * (statistics.MAX_STRING_BYTES + 1), None]),
        "n": pa.array([None, None, None], pa.int32()),
        "b": pa.array([b"x", b"y", b"z"]),
        "_offset": pa.array([0, 1, 2], pa.int64()),
    })
    stats = _stats(batch)
    assert "f" not in stats  # Arrow's min_max skips NaN; a NaN row would wrongly be excluded
    assert stats["s"] == ["a", None, 1]  # the over-long maximum is left open, the minimum kept
    assert stats["n"] == [None, None, 3]
    assert "b" not in stats and "_offset" not in stats  # binary is not ordered here; headers bound offsets


# -- soundness: a skipped batch never holds a matching row -------------------------------------------------------
_values = st.lists(st.one_of(st.none(), st.integers(-50, 50)), min_size=1, max_size=20)
_literal = st.integers(-60, 60)


@st.composite
def _filters(draw, depth=0):
    x = pc.field("x")
    leaf = draw(st.sampled_from(["lt", "le", "gt", "ge", "eq", "ne", "null", "valid", "isin"]))
    value = draw(_literal)
    expr = {"lt": x < value, "le": x <= value, "gt": x > value, "ge": x >= value, "eq": x == value,
            "ne": x != value, "null": x.is_null(), "valid": x.is_valid(),
            "isin": x.isin(draw(st.lists(_literal, min_size=1, max_size=3)))}[leaf]
    if depth < 2 and draw(st.booleans()):
        other = draw(_filters(depth + 1))
        expr = draw(st.sampled_from([expr & other, expr | other, ~expr]))
    return expr


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(_values, min_size=1, max_size=6), row_filter=_filters())
def test_skipped_batches_have_no_matching_rows(batches, row_filter):
    schema = stored_schema(pa.schema([("x", pa.int64())]))
    guarantees, datas, base = [], [], 0
    for values in batches:
        data = pa.RecordBatch.from_arrays([pa.array(range(base, base + len(values)), pa.int64()),
                                           pa.array([0] * len(values), pa.int64()),
                                           pa.array(values, pa.int64())], schema=schema)
        header = BatchHeader(base, len(values) - 1, len(values), 0, 0, 0)
        guarantees.append(statistics.guarantee(statistics.compute(data), header, schema, schema))
        datas.append(data)
        base += len(values)
    for data, keep in zip(datas, statistics.may_match(row_filter, guarantees, schema), strict=True):
        if not keep:
            assert data.filter(row_filter).num_rows == 0, (data.column(2).to_pylist(), row_filter)


def test_an_unbindable_filter_keeps_every_batch():
    schema = stored_schema(pa.schema([("x", pa.int64())]))
    header = BatchHeader(0, 0, 1, 0, 0, 0)
    assert statistics.may_match(pc.field("nope") > 1, [statistics.guarantee(b"", header, schema, schema)],
                                schema) == [True]


# -- filtered log reads -------------------------------------------------------------------------------------------
def _filled_log(make_log, batches=20, rows=100):
    log = make_log(schema=SCHEMA)
    for i in range(batches):
        log.append(_table(i * rows, rows), now=now_ms())
    return log


def test_read_filtered_skips_batches_the_statistics_exclude(make_log):
    log = _filled_log(make_log)
    result = log.read_filtered(0, BIG, row_filter=pc.field("id") >= 1950)
    assert result.batches_skipped == 19
    assert [b.column("id").to_pylist() for b in result.batches] == [list(range(1950, 2000))]
    assert result.next_offset == log.log_end_offset == 2000


@pytest.mark.parametrize("row_filter", [
    pc.field("id") > 1234, (pc.field("id") < 150) | (pc.field("name") == "user-001999"),
    pc.field("score") == 3.0, pc.field("at") >= pa.scalar(1900, pa.timestamp("ms")),
    pc.field("name").isin(["user-000042", "user-000777"]), pc.field("_offset") < 5,
])
def test_read_filtered_returns_exactly_what_filtering_everything_returns(make_log, row_filter):
    log = _filled_log(make_log)
    expected = pa.Table.from_batches(log.read(0, BIG)).filter(row_filter)
    result = log.read_filtered(0, BIG, row_filter=row_filter, columns=["_offset", "id"])
    got = pa.Table.from_batches(result.batches, schema=expected.select(["_offset", "id"]).schema)
    assert got.equals(expected.select(["_offset", "id"]))
    assert result.next_offset == 2000


def test_read_filtered_moves_past_skipped_batches_within_max_bytes_and_max_offset(make_log):
    log = _filled_log(make_log)
    result = log.read_filtered(0, 1, max_offset=1000, row_filter=pc.field("id") >= 5000)
    assert result.batches == [] and result.batches_skipped == 10
    assert result.next_offset == 1000  # the next read starts after every batch it ruled out
    undecidable = pc.equal(pc.bit_wise_and(pc.field("id"), 1), 0)  # even ids: no statistics rule it out
    first = log.read_filtered(0, 1, row_filter=undecidable)
    assert first.batches_skipped == 0 and first.next_offset == 100  # one batch read (max_bytes=1)


def test_batches_of_an_older_schema_skip_filters_on_columns_they_lack(make_log):
    log = make_log(schema=pa.schema([("id", pa.int64())]))
    log.append(pa.table({"id": pa.array(range(100), pa.int64())}), now=now_ms())
    widened = pa.schema([("id", pa.int64()), ("region", pa.string())])
    log.change_schema(widened)
    log.append(pa.table({"id": pa.array(range(100, 200), pa.int64()), "region": ["eu"] * 100}), now=now_ms())
    hit = log.read_filtered(0, BIG, row_filter=pc.field("region") == "eu")
    assert hit.batches_skipped == 1 and sum(b.num_rows for b in hit.batches) == 100
    nulls = log.read_filtered(0, BIG, row_filter=pc.field("region").is_null())
    assert nulls.batches_skipped == 1 and [b.column("id")[0].as_py() for b in nulls.batches] == [0]


def test_statistics_survive_reopening_the_log(make_log, log_dir):
    log = _filled_log(make_log, batches=5)
    log.close()
    reopened = make_log(path=log_dir)
    result = reopened.read_filtered(0, BIG, row_filter=pc.field("id") < 10)
    assert result.batches_skipped == 4 and result.batches[0].num_rows == 10
