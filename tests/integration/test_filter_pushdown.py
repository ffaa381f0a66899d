"""poll_arrow(filter=...): the row filter runs inside the partition replica; less data crosses Ray."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray

import raystream as rs
from raystream.protocol import ACTOR_NAMESPACE, FetchRequest, replica_actor_name

pytestmark = pytest.mark.integration
SCHEMA = pa.schema([("x", pa.int64()), ("name", pa.string()), ("payload", pa.binary())])


def fill(topic):
    rs.Admin().create_topic(topic, partitions=1, schema=SCHEMA)
    table = pa.table({"x": list(range(1000)), "name": [f"n{i % 7}" for i in range(1000)],
                      "payload": [b"p" * 200] * 1000}, schema=SCHEMA)
    with rs.Producer(acks="all") as producer:
        producer.send_batch(topic, table).result(timeout=30)


def poll_all(consumer, want, timeout_s=30):
    tables, got = [], 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = consumer.poll_arrow(**want, timeout=0.5)
        tables.append(t)
        got += t.num_rows
        if consumer.position(rs.TopicPartition(consumer._topic, 0)) >= 1000:
            break
    return pa.concat_tables(tables) if tables else None


def test_filter_and_projection_run_in_the_replica(cluster, topic_name):
    fill(topic_name)
    with rs.Consumer(auto_offset_reset="earliest") as c:
        c._topic = topic_name
        c.assign([rs.TopicPartition(topic_name, 0)])
        table = poll_all(c, {"filter": (pc.field("x") >= 990) & (pc.field("name") != "n0"), "columns": ["x"]})
    assert table.column("x").to_pylist() == [i for i in range(990, 1000) if i % 7 != 0]
    assert table.column_names == ["topic", "partition", "offset", "timestamp", "x"]
    assert table.column("offset").to_pylist() == table.column("x").to_pylist()  # offsets are the true ones
    leader = ray.get_actor(replica_actor_name("it", topic_name, 0, 0), namespace=ACTOR_NAMESPACE)
    everything = ray.get(leader.fetch.remote(FetchRequest(0, 1 << 20, 0, 1, ["x", "name", "payload"])))
    filtered = ray.get(leader.fetch.remote(FetchRequest(0, 1 << 20, 0, 1, ["x"], None, pc.field("x") >= 990)))
    assert filtered.next_offset == everything.next_offset == 1000  # positions move past rejected rows
    assert sum(b.num_rows for b in filtered.batches) == 10
    assert filtered.bytes * 50 < everything.bytes  # what crossed Ray


def test_a_filter_that_cannot_apply_is_a_clear_error(cluster, topic_name):
    fill(topic_name)
    with rs.Consumer(auto_offset_reset="earliest") as c:
        c.assign([rs.TopicPartition(topic_name, 0)])
        with pytest.raises(TypeError):
            c.poll_arrow(filter="x > 3")
        with pytest.raises(ValueError, match="cannot be applied"):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                c.poll_arrow(filter=pc.field("missing") > 3, timeout=0.5)


def test_batches_the_statistics_exclude_are_skipped_in_the_replica(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1, schema=SCHEMA)
    with rs.Producer(acks="all") as producer:
        for start in range(0, 1000, 100):  # ten batches of increasing x
            table = pa.table({"x": list(range(start, start + 100)), "name": ["n"] * 100,
                              "payload": [b"p"] * 100}, schema=SCHEMA)
            producer.send_batch(topic_name, table).result(timeout=30)
    leader = ray.get_actor(replica_actor_name("it", topic_name, 0, 0), namespace=ACTOR_NAMESPACE)
    result = ray.get(leader.fetch.remote(FetchRequest(0, 1 << 20, 0, 1, ["x"], None, pc.field("x") >= 950)))
    assert result.batches_skipped == 9
    assert [x for b in result.batches for x in b.column("x").to_pylist()] == list(range(950, 1000))
    assert result.next_offset == 1000
    with rs.Consumer(auto_offset_reset="earliest") as c:  # a consumer sees the same rows
        c._topic = topic_name
        c.assign([rs.TopicPartition(topic_name, 0)])
        table = poll_all(c, {"filter": pc.field("x") < 120, "columns": ["x"]})
    assert table.column("x").to_pylist() == list(range(120))
