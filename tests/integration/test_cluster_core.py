"""Clients ↔ actors end to end on one shared local Ray."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest
import ray

import raystream as rs
from raystream import errors
from raystream.core.partitioner import partition_for_key
from raystream.protocol import ACTOR_NAMESPACE, FetchRequest, controller_actor_name, replica_actor_name

pytestmark = pytest.mark.integration


def consume_all(consumer, expected, timeout_s=30.0):
    import time

    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        out.extend(consumer.poll(timeout=0.5))
    return out


def test_bytes_round_trip_keeps_keys_order_and_headers(cluster, topic_name):
    admin = rs.Admin()
    admin.create_topic(topic_name, partitions=3, replication_factor=1)
    with rs.Producer(acks="all", linger_ms=2) as producer:
        futures = [producer.send(topic_name, value=f"v{i}".encode(), key=f"key-{i % 7}".encode(),
                                 headers={"n": str(i).encode()}) for i in range(300)]
        producer.flush()
        metas = [f.result(timeout=30) for f in futures]
    for i, meta in enumerate(metas):
        assert meta.partition == partition_for_key(f"key-{i % 7}".encode(), 3)
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, p) for p in range(3)])
        records = consume_all(consumer, 300)
    assert len(records) == 300
    by_partition: dict[int, list] = {}
    for r in records:
        by_partition.setdefault(r.partition, []).append(r)
        assert r.partition == partition_for_key(r.key, 3)
        headers = dict(r.headers) if not isinstance(r.headers, dict) else r.headers
        assert headers["n"] == r.value[1:]
    for part, recs in by_partition.items():
        offsets = [r.offset for r in recs]
        assert offsets == list(range(len(recs))), f"partition {part} offsets not contiguous"
        values = [int(r.value[1:]) for r in recs]
        assert values == sorted(values), "per-partition order not preserved"


def test_arrow_batches_round_trip(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    table = pa.table({"key": pa.array([b"a", b"b", b"c"] * 1000), "value": pa.array([b"x" * 10] * 3000)})
    with rs.Producer(acks=1) as producer:
        producer.send_batch(topic_name, table, partition=0).result(timeout=30)
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, 0)])
        got = []
        import time

        deadline = time.monotonic() + 30
        while sum(t.num_rows for t in got) < 3000 and time.monotonic() < deadline:
            got.append(consumer.poll_arrow(timeout=0.5))
    result = pa.concat_tables([t for t in got if t.num_rows])
    assert result.num_rows == 3000
    for column in ("topic", "partition", "offset", "timestamp", "key", "value"):
        assert column in result.column_names
    assert result.column("offset").to_pylist() == list(range(3000))
    assert result.column("key").to_pylist() == table.column("key").to_pylist()


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks_levels(cluster, topic_name, acks):
    rs.Admin().create_topic(topic_name, partitions=1)
    with rs.Producer(acks=acks) as producer:
        meta = producer.send(topic_name, value=b"hello").result(timeout=30)
    if acks == 0:
        assert meta.offset == -1  # as Kafka: no offset without an acknowledgement
    else:
        assert meta.offset == 0
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, 0)])
        assert [r.value for r in consume_all(consumer, 1)] == [b"hello"]


def test_long_poll_wakes_up_when_data_arrives(cluster, topic_name):
    md = rs.Admin()
    md.create_topic(topic_name, partitions=1)
    leader = ray.get_actor(replica_actor_name("it", topic_name, 0, 0), namespace=ACTOR_NAMESPACE)
    pending = leader.fetch.remote(FetchRequest(0, 1 << 20, 120_000, 1, None))  # would wait two minutes if not woken
    ready, _ = ray.wait([pending], timeout=0.5)
    assert not ready, "fetch returned before any data existed"
    with rs.Producer() as producer:
        producer.send(topic_name, value=b"wake").result(timeout=30)
    result = ray.get(pending, timeout=30)
    assert result.next_offset == 1 and result.high_watermark == 1


def test_topic_errors_are_typed(cluster, topic_name):
    admin = rs.Admin()
    for bad in ["", ".", "..", "a/b", "x" * 250, "white space", "ünïcode"]:
        with pytest.raises(errors.InvalidTopicError):
            admin.create_topic(bad, partitions=1)
    admin.create_topic(topic_name, partitions=1)
    with pytest.raises(errors.TopicAlreadyExistsError):
        admin.create_topic(topic_name, partitions=1)
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        admin.describe_topic(topic_name + "-missing")
    with pytest.raises(errors.InvalidReplicationFactorError):
        admin.create_topic(topic_name + "-rf", partitions=1, replication_factor=3)
    with pytest.raises(errors.InvalidConfigurationError):
        admin.create_topic(topic_name + "-cfg", partitions=1, config={"retention.ms": "soon"})
    with pytest.raises(errors.InvalidConfigurationError):
        admin.create_topic(topic_name + "-cfg2", partitions=1, config={"no.such.config": 1})
    assert topic_name + "-rf" not in admin.list_topics()


def test_produce_errors_are_typed_and_nothing_is_lost(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1, config={"max.message.bytes": 2048})
    with rs.Producer(acks=1) as producer:
        producer.send(topic_name, value=b"ok").result(timeout=30)
        with pytest.raises(errors.RecordTooLargeError):
            producer.send(topic_name, value=b"x" * 5000).result(timeout=30)
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            producer.send(topic_name + "-missing", value=b"x").result(timeout=30)
        with pytest.raises(TypeError):
            producer.send(topic_name, value=12345)
        producer.send(topic_name, value=b"ok2").result(timeout=30)
    with pytest.raises(errors.ClosedError):
        producer.send(topic_name, value=b"late")
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, 0)])
        assert [r.value for r in consume_all(consumer, 2)] == [b"ok", b"ok2"]


def test_out_of_range_seek_resets_by_policy(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    with rs.Producer() as producer:
        producer.send(topic_name, value=b"a").result(timeout=30)
    tp = rs.TopicPartition(topic_name, 0)
    with rs.Consumer(auto_offset_reset="none") as consumer:
        consumer.assign([tp])
        with pytest.raises(errors.NoOffsetForPartitionError):
            consumer.poll(timeout=1)
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([tp])
        consumer.seek(tp, 1000)
        assert [r.value for r in consume_all(consumer, 1)] == [b"a"]


def test_controller_restart_keeps_metadata(cluster, topic_name, wait_for):
    admin = rs.Admin()
    admin.create_topic(topic_name, partitions=2, config={"retention.ms": 3600000})
    with rs.Producer() as producer:
        producer.send(topic_name, value=b"before", partition=1).result(timeout=30)
    controller = ray.get_actor(controller_actor_name("it"), namespace=ACTOR_NAMESPACE)
    ray.kill(controller, no_restart=False)
    wait_for(lambda: topic_name in admin.list_topics(), message="controller back with the topic")
    description = admin.describe_topic(topic_name)
    assert len(description.partitions) == 2
    assert description.config["retention.ms"] == 3600000
    with rs.Producer() as producer:
        producer.send(topic_name, value=b"after", partition=1).result(timeout=30)
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, 1)])
        assert [r.value for r in consume_all(consumer, 2)] == [b"before", b"after"]


def test_replica_restart_recovers_its_log(cluster, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=1)
    with rs.Producer(acks="all") as producer:
        for i in range(50):
            producer.send(topic_name, value=b"%d" % i)
        producer.flush()
    replica = ray.get_actor(replica_actor_name("it", topic_name, 0, 0), namespace=ACTOR_NAMESPACE)
    ray.kill(replica, no_restart=False)
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, 0)])
        values = [r.value for r in consume_all(consumer, 50, timeout_s=60)]
    assert values == [b"%d" % i for i in range(50)]


def test_alter_config_and_add_partitions(cluster, topic_name):
    admin = rs.Admin()
    admin.create_topic(topic_name, partitions=1)
    admin.alter_topic_config(topic_name, {"retention.ms": 1000})
    assert admin.describe_topic(topic_name).config["retention.ms"] == 1000
    admin.create_partitions(topic_name, total=3)
    assert len(admin.describe_topic(topic_name).partitions) == 3
    with pytest.raises(errors.InvalidPartitionsError):
        admin.create_partitions(topic_name, total=2)
    with rs.Producer() as producer:
        assert producer.send(topic_name, value=b"x", partition=2).result(timeout=30).partition == 2
    admin.delete_topic(topic_name)
    assert topic_name not in admin.list_topics()


def test_concurrent_producers_keep_offsets_unique(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    results = []

    def produce(tag):
        with rs.Producer(acks=1, linger_ms=1) as producer:
            futures = [producer.send(topic_name, value=f"{tag}-{i}".encode()) for i in range(200)]
            results.extend(f.result(timeout=30).offset for f in futures)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(600))
