"""Kafka transactions through the gateway on a real cluster: confluent-kafka (librdkafka) commits and
aborts, read back read_committed by librdkafka and by raystream's Consumer; consume-transform-produce with
the group's offsets in the transaction; a newer producer with the same transactional id fences the old."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

import raystream as rs

pytestmark = pytest.mark.integration


def _producer(gateway, transactional_id: str) -> Producer:
    producer = Producer({"bootstrap.servers": gateway.bootstrap, "transactional.id": transactional_id,
                         "linger.ms": 5, "transaction.timeout.ms": 60_000})
    producer.init_transactions(30)
    return producer


def _read(gateway, topic: str, isolation: str) -> list[bytes]:
    """Everything a librdkafka consumer with ``isolation`` reads of partition 0, up to its end (the data is
    all written before: the first end-of-partition event means all of it was read)."""
    consumer = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": f"reader-{isolation}",
                         "isolation.level": isolation, "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error() is not None:
            assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
            break
        got.append(message.value())
    else:
        raise AssertionError(f"{isolation} consumer never reached the end of {topic}-0 (read {len(got)})")
    consumer.close()
    return got


def test_committed_and_aborted_transactions_read_back_read_committed(gateway, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=1, replication_factor=1)
    producer = _producer(gateway, f"txn-{topic_name}")
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic_name, value=b"committed-%d" % i, partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic_name, value=b"aborted-%d" % i, partition=0)
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic_name, value=b"last", partition=0)
    producer.commit_transaction(30)

    committed = [b"committed-%d" % i for i in range(10)] + [b"last"]
    assert _read(gateway, topic_name, "read_committed") == committed
    everything = _read(gateway, topic_name, "read_uncommitted")
    assert everything == committed[:10] + [b"aborted-%d" % i for i in range(5)] + [b"last"]
    with rs.Consumer(isolation_level="read_committed", auto_offset_reset="earliest") as ours:
        ours.assign([rs.TopicPartition(topic_name, 0)])
        values: list[bytes] = []
        wait_for(lambda: values.extend(r.value for r in ours.poll(timeout=0.2)) or len(values) >= 11,
                 timeout_s=30, message="raystream's read_committed consumer reads the committed records")
    assert values == committed


def test_consume_transform_produce_commits_the_groups_offsets_with_the_output(gateway, topic_name, wait_for):
    source, sink, group = f"{topic_name}-in", f"{topic_name}-out", f"etl-{topic_name}"
    admin = rs.Admin()
    admin.create_topic(source, partitions=1, replication_factor=1)
    admin.create_topic(sink, partitions=1, replication_factor=1)
    with rs.Producer(acks="all") as ours:
        ours.send_batch(source, pa.table({"value": [b"in-%d" % i for i in range(20)]}), partition=0).result(30)
    consumer = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(source, 0, 0)])
    producer = _producer(gateway, f"etl-{topic_name}")
    seen: list[bytes] = []
    wait_for(lambda: seen.extend(m.value() for m in consumer.consume(20, 0.5) if m.error() is None)
             or len(seen) >= 20, timeout_s=60, message="the source's records")
    producer.begin_transaction()
    for value in seen:
        producer.produce(sink, value=value.replace(b"in", b"out"), partition=0)
    producer.send_offsets_to_transaction([TopicPartition(source, 0, 20)], consumer.consumer_group_metadata(), 30)
    producer.commit_transaction(30)
    consumer.close()

    with rs.Consumer(group_id=group) as ours:
        assert ours.committed([rs.TopicPartition(source, 0)]) == {rs.TopicPartition(source, 0): 20}
    assert _read(gateway, sink, "read_committed") == [b"out-%d" % i for i in range(20)]


def test_a_newer_producer_with_the_same_transactional_id_fences_the_older(gateway, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=1, replication_factor=1)
    old = _producer(gateway, f"fence-{topic_name}")
    old.begin_transaction()
    old.produce(topic_name, value=b"zombie", partition=0)
    old.flush(30)
    new = _producer(gateway, f"fence-{topic_name}")  # aborts the old one's open transaction
    with pytest.raises(KafkaException) as raised:
        old.commit_transaction(30)
    assert raised.value.args[0].fatal() or "fenced" in str(raised.value).lower()
    new.begin_transaction()
    new.produce(topic_name, value=b"alive", partition=0)
    new.commit_transaction(30)
    with rs.Consumer(isolation_level="read_committed", auto_offset_reset="earliest") as ours:
        ours.assign([rs.TopicPartition(topic_name, 0)])
        values: list[bytes] = []
        wait_for(lambda: values.extend(r.value for r in ours.poll(timeout=0.2)) or values, timeout_s=30,
                 message="the new producer's committed record")
    assert values == [b"alive"]
