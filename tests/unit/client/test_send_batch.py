"""Producer.send_batch and Arrow-native topics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raystream import errors
from raystream.core.partitioner import partition_for_key
from raystream.protocol import BatchMetadata, TopicPartition

SCHEMA = pa.schema([("user", pa.string()), ("amount", pa.int64())])


def test_record_topic_table_is_split_by_key_partition(fake, make_producer):
    fake.add_topic("t", partitions=3)
    producer = make_producer()
    keys = [f"k{i % 10}".encode() for i in range(100)]
    table = pa.table({"key": keys, "value": [b"v%d" % i for i in range(100)],
                      "timestamp": pa.array(np.arange(100), pa.int64())})
    metas = producer.send_batch("t", table).result(timeout=10)
    assert all(isinstance(m, BatchMetadata) for m in metas)
    assert sum(m.count for m in metas) == 100
    assert len(metas) == fake.count("produce") <= 3
    for p in range(3):
        stored = fake.records(TopicPartition("t", p))
        expected = [i for i in range(100) if partition_for_key(keys[i], 3) == p]
        assert stored.column("value").to_pylist() == [b"v%d" % i for i in expected]  # row order kept
        assert stored.column("_timestamp").to_pylist() == expected
        assert all(partition_for_key(k, 3) == p for k in stored.column("key").to_pylist())


def test_send_batch_without_key_goes_to_one_partition(fake, make_producer):
    fake.add_topic("t", partitions=4)
    producer = make_producer()
    metas = producer.send_batch("t", pa.table({"value": ["a", "b", "c"]})).result(10)
    assert len(metas) == 1 and metas[0].count == 3 and metas[0].base_offset == 0
    assert fake.values(TopicPartition("t", metas[0].partition)) == [b"a", b"b", b"c"]


def test_send_batch_to_an_explicit_partition_and_record_batch_input(fake, make_producer):
    fake.add_topic("t", partitions=2)
    producer = make_producer()
    batch = pa.RecordBatch.from_pydict({"value": [b"x", b"y"], "key": [b"a", b"b"]})
    metas = producer.send_batch("t", batch, partition=1).result(10)
    assert [(m.partition, m.base_offset, m.count) for m in metas] == [(1, 0, 2)]


def test_large_tables_are_cut_to_max_request_size(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(max_request_size=10_000)
    table = pa.table({"value": [b"x" * 100] * 1000})
    metas = producer.send_batch("t", table).result(10)
    assert len(metas) > 10
    assert [m.base_offset for m in metas] == list(np.cumsum([0] + [m.count for m in metas[:-1]]))
    assert all(c[5].nbytes <= 10_000 for c in fake.calls if c[0] == "produce")
    with pytest.raises(errors.RecordTooLargeError):
        producer.send_batch("t", pa.table({"value": [b"x" * 20_000]}))


def test_send_batch_rejects_bad_tables_before_sending(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer()
    with pytest.raises(ValueError):
        producer.send_batch("t", pa.table({"key": [b"k"]}))  # no value column
    with pytest.raises(ValueError):
        producer.send_batch("t", pa.table({"value": [b"v"], "extra": [1]}))
    with pytest.raises(TypeError):
        producer.send_batch("t", pa.table({"value": [1]}))
    assert fake.count("produce") == 0
    assert producer.send_batch("t", pa.table({"value": pa.array([], pa.binary())})).result(1) == []


def test_arrow_native_topic_send_batch_partitions_by_key_column(fake, make_producer):
    fake.add_topic("events", partitions=3, schema=SCHEMA, key_column="user")
    producer = make_producer()
    users = [f"u{i % 7}" for i in range(70)]
    table = pa.table({"user": users, "amount": list(range(70))}, schema=SCHEMA)
    metas = producer.send_batch("events", table).result(10)
    assert sum(m.count for m in metas) == 70
    for p in range(3):
        stored = fake.records(TopicPartition("events", p))
        assert stored.schema.names == ["_offset", "_timestamp", "user", "amount"]
        assert all(partition_for_key(u.encode(), 3) == p for u in stored.column("user").to_pylist())


def test_arrow_native_topic_accepts_rows_through_send(fake, make_producer):
    fake.add_topic("events", partitions=3, schema=SCHEMA, key_column="user")
    producer = make_producer(linger_ms=0)
    meta = producer.send("events", value={"user": "ann", "amount": 5}).result(10)
    assert meta.partition == partition_for_key(b"ann", 3)
    stored = fake.records(TopicPartition("events", meta.partition))
    assert stored.select(["user", "amount"]).to_pylist() == [{"user": "ann", "amount": 5}]
    with pytest.raises(TypeError):
        producer.send("events", value=b"raw bytes")


def test_integer_key_column_is_hashed_as_its_string_form(fake, make_producer):
    schema = pa.schema([("id", pa.int64()), ("v", pa.float64())])
    fake.add_topic("nums", partitions=5, schema=schema, key_column="id")
    producer = make_producer()
    producer.send_batch("nums", pa.table({"id": [1, 22, 333], "v": [0.1, 0.2, 0.3]}, schema=schema)).result(10)
    for i in (1, 22, 333):
        stored = fake.records(TopicPartition("nums", partition_for_key(str(i).encode(), 5)))
        assert i in stored.column("id").to_pylist()
