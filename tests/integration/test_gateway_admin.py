"""Kafka's admin APIs through the gateway in front of a real raystream cluster: records deleted with
DeleteRecords are gone for raystream's Consumer and ListOffsets' earliest moves; configs altered with
IncrementalAlterConfigs are the controller's; Admin.delete_records on the same cluster.

The shared test cluster is one Ray node, hence one broker: topics here have one replica (replication factor
2 is covered at the replica actors, tests/integration/test_replica_delete_records.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import OffsetOutOfRangeError

import raystream as rs
from raystream import errors

pytestmark = pytest.mark.integration


@pytest.fixture
def kafka_admin(gateway):
    client = KafkaAdminClient(bootstrap_servers=gateway.bootstrap)
    yield client
    client.close()


def fill(topic: str, n: int, batches: int = 1) -> None:
    with rs.Producer(acks="all") as producer:
        for b in range(batches):
            values = [b"r%d" % (b * n + i) for i in range(n)]
            producer.send_batch(topic, pa.table({"value": values}), partition=0).result(30)


def read_all(topic: str, expected: int, wait_for) -> list:
    got: list = []
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic, 0)])
        wait_for(lambda: got.extend(consumer.poll(timeout=0.5)) or len(got) >= expected, timeout_s=30,
                 message=f"{expected} records of {topic}")
    return got


def test_records_deleted_through_kafka_are_gone_for_raystream(gateway, kafka_admin, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=1, replication_factor=1, config={"segment.bytes": 1024})
    fill(topic_name, 20, batches=5)  # several segments: the whole ones below the offset leave the disk
    tp = KafkaTopicPartition(topic_name, 0)
    assert kafka_admin.delete_records({tp: 45})[tp]["low_watermark"] == 45
    assert [r.offset for r in read_all(topic_name, 55, wait_for)] == list(range(45, 100))
    (partition,) = rs.Admin().describe_topic(topic_name).partitions
    assert partition.log_start_offset == 45
    consumer = KafkaConsumer(bootstrap_servers=gateway.bootstrap)
    assert consumer.beginning_offsets([tp]) == {tp: 45}  # ListOffsets earliest
    consumer.close()
    with pytest.raises(OffsetOutOfRangeError):
        kafka_admin.delete_records({tp: 101})
    assert kafka_admin.delete_records({tp: -1})[tp]["low_watermark"] == 100


def test_admin_delete_records_on_the_cluster(cluster, topic_name, wait_for):
    admin = rs.Admin()
    admin.create_topic(topic_name, partitions=2, replication_factor=1)
    fill(topic_name, 10)
    tp, other = rs.TopicPartition(topic_name, 0), rs.TopicPartition(topic_name, 1)
    assert admin.delete_records({tp: 7, other: -1}) == {tp: 7, other: 0}
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([tp])
        consumer.seek_to_beginning()
        assert consumer.position(tp) == 7
    with pytest.raises(errors.OffsetOutOfRangeError):
        admin.delete_records({tp: 11})
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        admin.delete_records({rs.TopicPartition(topic_name, 2): 0})


def test_configs_altered_through_kafka_are_the_controllers(gateway, kafka_admin, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1, replication_factor=1)
    resource = ConfigResource(ConfigResourceType.TOPIC, topic_name,
                              {"retention.ms": "60000", "cleanup.policy": ("APPEND", "compact")})
    assert kafka_admin.alter_configs([resource]) == {"topic": {topic_name: "OK"}}
    config = rs.Admin().describe_topic(topic_name).config
    assert (config["retention.ms"], config["cleanup.policy"]) == (60000, "compact,delete")
    described = kafka_admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)])
    assert {k: v["value"] for k, v in described["topic"][topic_name].items()} == {
        "retention.ms": "60000", "cleanup.policy": "compact,delete"}
    # the broker resource shows the controller's settings (the shared cluster's conftest sets this one)
    broker = kafka_admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "0")], config_filter="all")
    assert broker["broker"]["0"]["replica.lag.time.max.ms"]["value"] == "3000"
    reverted = ConfigResource(ConfigResourceType.TOPIC, topic_name, {"retention.ms": ("DELETE", None)})
    assert kafka_admin.alter_configs([reverted]) == {"topic": {topic_name: "OK"}}
    assert rs.Admin().describe_topic(topic_name).config["retention.ms"] == 7 * 24 * 3600 * 1000
    assert kafka_admin.describe_cluster()["brokers"][0]["port"] == gateway.gateway.port
