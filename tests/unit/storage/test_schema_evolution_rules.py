"""Schema evolution rules and reading old batches in a new schema (pure, and through the Log)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from raystream.clock import now_ms
from raystream.storage.log import Log
from raystream.storage.schema_evolution import compatibility_problems, evolve

OLD = pa.schema([("id", pa.int32()), ("name", pa.string())])
NEW = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64())])


@pytest.mark.parametrize("old,new", [(pa.int8(), pa.int64()), (pa.uint16(), pa.int32()), (pa.float32(), pa.float64()),
                                     (pa.int32(), pa.float64()), (pa.string(), pa.large_string())])
def test_widening_is_compatible(old, new):
    assert compatibility_problems(pa.schema([("x", old)]), pa.schema([("x", new)])) == []


def test_incompatible_changes_name_each_field():
    problems = compatibility_problems(NEW, pa.schema([("id", pa.int32()), ("extra", pa.int8(), False)]))
    assert any("'id'" in p for p in problems) and any("'name'" in p for p in problems)
    assert any("'score'" in p for p in problems) and any("'extra'" in p for p in problems)
    assert compatibility_problems(OLD, NEW) == []


def test_evolve_casts_and_fills_nulls_without_copying_unchanged_columns():
    batch = pa.record_batch({"id": pa.array([1, 2], pa.int32()), "name": ["a", "b"]})
    out = evolve(batch, NEW)
    assert out.schema.equals(NEW) and out.to_pydict() == {"id": [1, 2], "name": ["a", "b"], "score": [None, None]}
    assert out.column(1).buffers()[2].address == batch.column(1).buffers()[2].address  # zero-copy


def test_log_reads_old_segments_in_the_new_schema(tmp_path):
    log = Log(tmp_path / "t-0", schema=OLD, now=now_ms())
    log.append(pa.record_batch({"id": pa.array([1, 2], pa.int32()), "name": ["a", "b"]}), now=now_ms())
    log.change_schema(NEW)
    log.append(pa.record_batch({"id": pa.array([3], pa.int64()), "name": ["c"], "score": [0.5]}), now=now_ms())
    rows = pa.Table.from_batches(log.read(0, 1 << 20)).select(["id", "name", "score"]).to_pylist()
    assert rows == [{"id": 1, "name": "a", "score": None}, {"id": 2, "name": "b", "score": None},
                    {"id": 3, "name": "c", "score": 0.5}]
    projected = log.read(0, 1 << 20, columns=["_offset", "score"])
    assert [b.num_columns for b in projected] == [2, 2]
    log.close()
