"""Arrow-native topics: schema enforcement and compatible evolution end to end."""

from __future__ import annotations

import time

import pandas as pd
import pyarrow as pa
import pytest

import raystream as rs
from raystream import errors

pytestmark = pytest.mark.integration
V1 = pa.schema([("id", pa.int32()), ("name", pa.string())])
V2 = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64())])


def read_all(topic, n, columns=None):
    with rs.Consumer(auto_offset_reset="earliest") as c:
        c.assign([rs.TopicPartition(topic, 0)])
        tables, got = [], 0
        deadline = time.monotonic() + 30
        while got < n and time.monotonic() < deadline:
            t = c.poll_arrow(timeout=0.5, columns=columns)
            tables.append(t)
            got += t.num_rows
        return pa.concat_tables(tables)


def test_schema_is_enforced_and_evolves_compatibly(cluster, topic_name):
    admin = rs.Admin()
    admin.create_topic(topic_name, partitions=1, schema=V1)
    with rs.Producer(acks="all") as old_producer:
        old_producer.send_batch(topic_name, pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["a", "b"]}))
        old_producer.send_batch(topic_name, pd.DataFrame({"id": pd.Series([3], dtype="int32"), "name": ["c"]}))
        old_producer.send_batch(topic_name, [{"id": 4, "name": "d"}]).result(timeout=30)
        with pytest.raises(errors.SchemaMismatchError, match="name"):
            old_producer.send_batch(topic_name, pa.table({"id": pa.array([9], pa.int32()), "name": [1]})).result(
                timeout=30)
        with pytest.raises(errors.SchemaMismatchError, match="removed|non-nullable|cannot change"):
            admin.alter_topic_schema(topic_name, pa.schema([("id", pa.int16())]))
        admin.alter_topic_schema(topic_name, V2)
        assert admin.describe_topic(topic_name).schema.equals(V2)
        # a producer that still has the old schema cached keeps working: the replica evolves its batches
        old_producer.send_batch(topic_name, pa.table({"id": pa.array([5], pa.int32()), "name": ["e"]})).result(
            timeout=30)
    with rs.Producer(acks="all") as new_producer:
        new_producer.send_batch(topic_name, pa.table({"id": [6], "name": ["f"], "score": [0.5]}, schema=V2)).result(
            timeout=30)
    table = read_all(topic_name, 6)
    assert table.schema.field("id").type == pa.int64()
    assert table.select(["id", "name", "score"]).to_pylist() == [
        {"id": i, "name": n, "score": s} for i, n, s in
        [(1, "a", None), (2, "b", None), (3, "c", None), (4, "d", None), (5, "e", None), (6, "f", 0.5)]]
    only_score = read_all(topic_name, 6, columns=["score"])
    assert only_score.column_names == ["topic", "partition", "offset", "timestamp", "score"]
