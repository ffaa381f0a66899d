"""The Kafka gateway in front of a real raystream cluster: kafka-python writes what raystream's Consumer
reads, raystream's Producer writes what kafka-python reads; an Arrow-native topic's rows are JSON values
to Kafka clients."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition

import raystream as rs

pytestmark = pytest.mark.integration


def test_kafka_python_and_raystream_clients_read_each_others_records(gateway, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=2, replication_factor=1)
    producer = KafkaProducer(bootstrap_servers=gateway.bootstrap, compression_type="gzip", linger_ms=5)  # idempotent
    futures = [producer.send(topic_name, key=b"k%d" % i, value=b"kafka-%d" % i, headers=[("h", b"%d" % i)],
                             partition=i % 2, timestamp_ms=1_700_000_000_000 + i) for i in range(100)]
    producer.flush(30)
    assert sorted((f.get(10).partition, f.get(10).offset) for f in futures) == sorted(
        (p, o) for p in range(2) for o in range(50))
    producer.close()
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, p) for p in range(2)])
        got = []
        wait_for(lambda: got.extend(consumer.poll(timeout=0.5)) or len(got) >= 100, timeout_s=30,
                 message="raystream's consumer reads kafka-python's records")
    assert sorted((r.key, r.value, r.timestamp) for r in got) == sorted(
        (b"k%d" % i, b"kafka-%d" % i, 1_700_000_000_000 + i) for i in range(100))
    assert list({r.key: r.headers for r in got}[b"k7"]) == [("h", b"7")]
    # And Ray Data reads them as a dataset (one task per partition), the same records as Arrow columns.
    rows = pa.concat_tables(rs.data.read_topic(topic_name, cluster="it").iter_batches(batch_format="pyarrow"))
    assert sorted(zip(rows["key"].to_pylist(), rows["value"].to_pylist(), rows["timestamp"].to_pylist(),
                      strict=True)) == sorted((b"k%d" % i, b"kafka-%d" % i, 1_700_000_000_000 + i) for i in range(100))

    with rs.Producer(acks="all") as ours:
        ours.send_batch(topic_name, pa.table({"value": [b"arrow-%d" % i for i in range(20)]}), partition=1).result(30)
    tp = KafkaTopicPartition(topic_name, 1)
    consumer = KafkaConsumer(bootstrap_servers=gateway.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    consumer.assign([tp])
    consumer.seek(tp, 50)
    values = [m.value for m in consumer]
    consumer.close()
    assert values == [b"arrow-%d" % i for i in range(20)]


def test_kafka_json_values_are_the_rows_of_an_arrow_native_topic(gateway, topic_name, wait_for):
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64())])
    rs.Admin().create_topic(topic_name, partitions=1, schema=schema, key_column="id")
    producer = KafkaProducer(bootstrap_servers=gateway.bootstrap, acks="all", linger_ms=5)
    rows = [{"id": i, "name": f"n{i}", "amount": i / 4} for i in range(50)]
    for row in rows:
        producer.send(topic_name, value=json.dumps(row).encode(), partition=0, timestamp_ms=1_700_000_000_000)
    producer.flush(30)
    with pytest.raises(Exception, match="(?i)invalid.?record"):  # not a row of the schema: refused whole
        producer.send(topic_name, value=b'{"id": "not a number"}', partition=0).get(10)
    producer.close()

    with rs.Consumer(auto_offset_reset="earliest") as ours:  # the rows, as Arrow columns
        ours.assign([rs.TopicPartition(topic_name, 0)])
        tables = []
        wait_for(lambda: tables.append(ours.poll_arrow(timeout=0.5)) or sum(t.num_rows for t in tables) >= 50,
                 timeout_s=30, message="poll_arrow reads the Kafka client's rows")
    table = pa.concat_tables(tables)
    assert table.select(["id", "name", "amount"]).to_pylist() == rows
    assert set(table.column("timestamp").to_pylist()) == {1_700_000_000_000}

    with rs.Producer(acks="all") as ours:
        ours.send_batch(topic_name, pa.table({"id": [100], "name": ["arrow"], "amount": [1.5]}, schema=schema),
                        partition=0).result(30)
    tp = KafkaTopicPartition(topic_name, 0)
    consumer = KafkaConsumer(bootstrap_servers=gateway.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=5000)
    consumer.assign([tp])
    got = [(m.key, json.loads(m.value)) for m in consumer]
    consumer.close()
    assert got == [(b"%d" % r["id"], r) for r in rows] + [(b"100", {"id": 100, "name": "arrow", "amount": 1.5})]


def test_group_offsets_committed_by_kafka_clients_are_raystreams(gateway, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1, replication_factor=1)
    with rs.Producer(acks="all") as ours:
        ours.send_batch(topic_name, pa.table({"value": [b"r%d" % i for i in range(10)]})).result(30)
    tp = KafkaTopicPartition(topic_name, 0)
    group = f"g-{topic_name}"
    first = KafkaConsumer(bootstrap_servers=gateway.bootstrap, group_id=group, auto_offset_reset="earliest",
                          enable_auto_commit=False, consumer_timeout_ms=5000, max_poll_records=4)
    first.assign([tp])
    records = first.poll(timeout_ms=10_000, max_records=4)[tp]
    assert [m.value for m in records] == [b"r0", b"r1", b"r2", b"r3"]
    first.commit()
    first.close()
    with rs.Consumer(group_id=group) as ours:  # raystream's consumer sees the Kafka client's commit
        assert ours.committed([rs.TopicPartition(topic_name, 0)]) == {rs.TopicPartition(topic_name, 0): 4}
    second = KafkaConsumer(bootstrap_servers=gateway.bootstrap, group_id=group, enable_auto_commit=False,
                           consumer_timeout_ms=5000)
    second.assign([tp])
    assert second.committed(tp) == 4
    assert [m.value for m in second] == [b"r%d" % i for i in range(4, 10)]  # resumes at the commit
    second.close()
    admin = KafkaAdminClient(bootstrap_servers=gateway.bootstrap)
    assert group in [g["group_id"] for g in admin.list_groups()]
    admin.close()


def test_topics_created_by_kafka_admin_are_raystream_topics(gateway, topic_name):
    from kafka.admin import NewTopic
    from kafka.errors import InvalidTopicError

    admin = KafkaAdminClient(bootstrap_servers=gateway.bootstrap)
    admin.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1,
                                  topic_configs={"retention.ms": "86400000"})])
    described = rs.Admin().describe_topic(topic_name)
    assert len(described.partitions) == 3 and int(described.config["retention.ms"]) == 86_400_000
    with pytest.raises(InvalidTopicError):
        admin.create_topics([NewTopic("../escape", num_partitions=1, replication_factor=1)])
    admin.delete_topics([topic_name])
    assert topic_name not in rs.Admin().list_topics()
    admin.close()
