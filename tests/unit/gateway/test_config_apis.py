"""Configs, the cluster and DeleteRecords over the Kafka protocol (raystream.gateway.config_apis), driven by
kafka-python's KafkaAdminClient and confluent-kafka's AdminClient against the gateway in front of the
in-process fake cluster; the protocol corners (versions, whole-set AlterConfigs, bad resources) with raw
kio requests."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as ConfluentTopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import ConfigResource as KafkaConfigResource
from kafka.admin import ConfigResourceType
from kafka.errors import OffsetOutOfRangeError, UnknownTopicOrPartitionError
from kio.schema.alter_configs.v2 import request as alter_v2
from kio.schema.describe_configs.v4 import request as describe_v4
from test_kafka_python import _call

from raystream.config import TopicConfig
from raystream.errors import InvalidConfigurationError, InvalidRequestError
from raystream.gateway.config_apis import TOPIC_KEYS, incremental_changes, whole_set_changes
from raystream.protocol import TopicPartition

DEFAULTS = TopicConfig().to_dict()


@pytest.fixture
def admin(gateway):
    client = KafkaAdminClient(bootstrap_servers=gateway.bootstrap)
    yield client
    client.close()


def topic_configs(admin, name, **options):
    return admin.describe_configs([KafkaConfigResource(ConfigResourceType.TOPIC, name)], **options)["topic"][name]


def alter(admin, name, configs, **options):
    return admin.alter_configs([KafkaConfigResource(ConfigResourceType.TOPIC, name, configs)], **options)["topic"][name]


def produce(gateway, n, topic="clicks"):
    producer = KafkaProducer(bootstrap_servers=gateway.bootstrap)
    for i in range(n):
        producer.send(topic, value=b"v%d" % i, partition=0)
    producer.flush(10)
    producer.close()


# -- DescribeConfigs ----------------------------------------------------------------------------------------
def test_every_topic_config_is_described_with_its_source_and_synonyms(fake, gateway, admin):
    fake.topic_defaults = TopicConfig(retention_ms=3_600_000)  # as from the cluster's defaults file
    fake.add_topic("clicks")
    fake.alter_topic_config("clicks", {"segment.ms": 60_000})
    described = topic_configs(admin, "clicks", config_filter="all", include_synonyms=True)
    assert set(described) == set(DEFAULTS)
    assert described["segment.ms"]["value"] == "60000"
    assert described["segment.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert [(s["name"], s["value"], s["source"]) for s in described["segment.ms"]["synonyms"]] == [
        ("segment.ms", "60000", "DYNAMIC_TOPIC_CONFIG"), ("log.roll.ms", str(DEFAULTS["segment.ms"]), "DEFAULT_CONFIG")]
    assert described["retention.ms"]["config_source"] == "STATIC_BROKER_CONFIG"
    assert [s["name"] for s in described["retention.ms"]["synonyms"]] == ["log.retention.ms", "log.retention.ms"]
    assert described["cleanup.policy"] | {"synonyms": None} == {
        "value": "delete", "read_only": False, "config_source": "DEFAULT_CONFIG", "is_sensitive": False,
        "synonyms": None, "config_type": "LIST", "documentation": None}
    assert described["unclean.leader.election.enable"]["value"] == "false"
    # kafka-python's default filter keeps what the topic itself sets
    assert list(topic_configs(admin, "clicks")) == ["segment.ms"]


def test_documentation_and_key_filters_as_the_version_allows(fake, gateway):
    fake.add_topic("clicks")
    resource = describe_v4.DescribeConfigsResource(resource_type=2, resource_name="clicks",
                                                   configuration_keys=("retention.ms", "no.such.config"))
    request = describe_v4.DescribeConfigsRequest(resources=(resource,), include_synonyms=False,
                                                 include_documentation=True)
    (result,) = _call(gateway, request, 4).results
    (entry,) = result.configs
    assert (entry.name, entry.value, entry.synonyms, entry.config_type) == ("retention.ms", str(DEFAULTS["retention.ms"]),
                                                                            (), 5)
    assert "segment" in entry.documentation
    without = _call(gateway, dataclasses.replace(request, include_documentation=False), 4).results[0].configs[0]
    assert without.documentation is None


def test_unknown_topics_bad_broker_ids_and_resource_types_get_their_own_error(fake, gateway):
    fake.add_topic("clicks")
    resources = tuple(describe_v4.DescribeConfigsResource(resource_type=kind, resource_name=name,
                                                          configuration_keys=None)
                      for kind, name in [(2, "nope"), (2, "clicks"), (4, "7"), (8, "0"), (4, "")])
    results = _call(gateway, describe_v4.DescribeConfigsRequest(resources=resources), 4).results
    assert [r.error_code for r in results] == [3, 0, 42, 42, 0]  # UNKNOWN_TOPIC_OR_PARTITION, INVALID_REQUEST
    assert "nope" in results[0].error_message and results[0].configs == ()
    assert len(results[1].configs) == len(DEFAULTS) and results[4].configs


def test_broker_configs_are_the_controllers_and_read_only(fake, gateway, admin):
    fake.broker_config = dataclasses.replace(fake.broker_config, replica_lag_time_max_ms=5000)
    described = admin.describe_configs([KafkaConfigResource(ConfigResourceType.BROKER, "0")],
                                       config_filter="all")["broker"]["0"]
    assert described["replica.lag.time.max.ms"]["value"] == "5000"
    assert described["replica.lag.time.max.ms"]["config_source"] == "STATIC_BROKER_CONFIG"
    assert described["num.partitions"]["config_source"] == "DEFAULT_CONFIG"
    assert described["log.retention.ms"]["value"] == str(DEFAULTS["retention.ms"])  # topic defaults, broker names
    assert all(entry["read_only"] for entry in described.values())
    answer = admin.alter_configs([KafkaConfigResource(ConfigResourceType.BROKER, "0", {"num.partitions": "3"})],
                                 raise_on_unknown=False)
    assert "InvalidConfigurationError" in answer["broker"]["0"] and "read-only" in answer["broker"]["0"]


# -- IncrementalAlterConfigs and AlterConfigs -------------------------------------------------------------
def test_set_append_subtract_and_delete(fake, gateway, admin):
    fake.add_topic("clicks", partitions=2)
    assert alter(admin, "clicks", {"retention.ms": "1000", "cleanup.policy": ("APPEND", "compact")}) == "OK"
    assert fake.topics["clicks"].config["retention.ms"] == 1000
    assert fake.topics["clicks"].config["cleanup.policy"] == "compact,delete"
    assert fake.logs[TopicPartition("clicks", 1)].log.config.compact  # every partition's log got it
    assert alter(admin, "clicks", {"cleanup.policy": ("SUBTRACT", "delete")}) == "OK"
    assert fake.topics["clicks"].config["cleanup.policy"] == "compact"
    fake.topic_defaults = TopicConfig(retention_ms=7_000)
    assert alter(admin, "clicks", {"retention.ms": ("DELETE", None)}) == "OK"
    assert fake.topics["clicks"].config["retention.ms"] == 7_000  # the cluster's default for new topics
    assert set(topic_configs(admin, "clicks")) == {"cleanup.policy"}


@pytest.mark.parametrize("configs,expected", [
    ({"retention.ms": "soon"}, "invalid value"),
    ({"no.such.config": "1"}, "unknown topic config"),
    ({"segment.bytes": ("APPEND", "1")}, "not a list config"),
    ({"cleanup.policy": ("SUBTRACT", "delete")}, "cleanup.policy must be one of"),  # nothing would be left
    ({"cleanup.policy": "forever"}, "cleanup.policy must be one of"),
])
def test_invalid_names_and_values_are_invalid_config(fake, gateway, admin, configs, expected):
    fake.add_topic("clicks")
    answer = alter(admin, "clicks", configs, raise_on_unknown=False)
    assert "InvalidConfigurationError" in answer and expected in answer
    assert fake.count("alter_topic_config") == 0


def test_validate_only_validates_without_applying(fake, gateway, admin):
    fake.add_topic("clicks")
    assert alter(admin, "clicks", {"retention.ms": "1000"}, validate_only=True) == "OK"
    assert "InvalidConfigurationError" in alter(admin, "clicks", {"retention.ms": "-7"}, validate_only=True)
    assert fake.count("alter_topic_config") == 0
    assert topic_configs(admin, "clicks") == {}


def test_alter_configs_sets_the_whole_set(fake, gateway):
    fake.add_topic("clicks")
    fake.alter_topic_config("clicks", {"retention.ms": 1000, "cleanup.policy": "compact"})
    resource = alter_v2.AlterConfigsResource(resource_type=2, resource_name="clicks", configs=(
        alter_v2.AlterableConfig(name="segment.ms", value="5000"),))
    (answer,) = _call(gateway, alter_v2.AlterConfigsRequest(resources=(resource,), validate_only=False), 2).responses
    assert (answer.error_code, answer.resource_name) == (0, "clicks")
    config = fake.topics["clicks"].config
    assert (config["segment.ms"], config["retention.ms"], config["cleanup.policy"]) == (
        5000, DEFAULTS["retention.ms"], "delete")  # what it does not list reverts to the default


def test_incremental_changes_refuse_repeats_unknown_operations_and_empty_sets():
    current = TopicConfig().to_dict()
    with pytest.raises(InvalidRequestError, match="more than once"):
        incremental_changes([("retention.ms", 0, "1"), ("retention.ms", 1, None)], current, current)
    with pytest.raises(InvalidRequestError, match="unknown config operation 9"):
        incremental_changes([("retention.ms", 9, "1")], current, current)
    with pytest.raises(InvalidConfigurationError, match="needs a value"):
        incremental_changes([("retention.ms", 0, None)], current, current)
    assert incremental_changes([("cleanup.policy", 2, "delete")], current, current) == {"cleanup.policy": "delete"}
    with pytest.raises(InvalidRequestError):
        whole_set_changes([("retention.ms", "1"), ("retention.ms", "2")], current, current)


def test_every_topic_config_has_kafkas_broker_synonym_and_type():
    assert set(TOPIC_KEYS) == set(DEFAULTS)


# -- DescribeCluster ---------------------------------------------------------------------------------------
def test_the_gateway_is_the_clusters_one_broker_and_controller(fake, gateway, admin):
    described = admin.describe_cluster()
    host, port = gateway.bootstrap.split(":")
    assert described["cluster_id"] == fake.cluster and described["controller_id"] == 0
    assert described["brokers"] == [{"broker_id": 0, "host": host, "port": int(port), "rack": None,
                                     "is_fenced": False}]
    client = AdminClient({"bootstrap.servers": gateway.bootstrap})  # held: its futures die with it
    cluster = client.describe_cluster().result(10)
    assert (cluster.cluster_id, cluster.controller.id, [n.port for n in cluster.nodes]) == (fake.cluster, 0, [int(port)])


# -- DeleteRecords -----------------------------------------------------------------------------------------
def test_delete_records_moves_the_log_start_for_kafka_clients(fake, gateway, admin):
    fake.add_topic("clicks")
    produce(gateway, 20)
    tp = KafkaTopicPartition("clicks", 0)
    assert admin.delete_records({tp: 5})[tp]["low_watermark"] == 5
    assert fake.logs[TopicPartition("clicks", 0)].log_start_offset == 5
    consumer = KafkaConsumer(bootstrap_servers=gateway.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000, enable_auto_commit=False)
    assert consumer.beginning_offsets([tp]) == {tp: 5}
    consumer.assign([tp])
    assert [m.offset for m in consumer][:2] == [5, 6]
    consumer.close()
    assert admin.delete_records({tp: 2})[tp]["low_watermark"] == 5  # never backwards
    assert admin.delete_records({tp: -1})[tp]["low_watermark"] == 20  # -1: the high watermark
    with pytest.raises(OffsetOutOfRangeError):
        admin.delete_records({tp: 21})
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.delete_records({KafkaTopicPartition("clicks", 3): 0}, partition_leader_id=0)


def test_confluent_kafka_describes_alters_and_deletes(fake, gateway):
    fake.add_topic("clicks")
    produce(gateway, 10)
    client = AdminClient({"bootstrap.servers": gateway.bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, "clicks", incremental_configs=[
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND)])
    for future in client.incremental_alter_configs([resource]).values():
        future.result(10)
    (described,) = client.describe_configs([ConfigResource(ResourceType.TOPIC, "clicks")]).values()
    entries = described.result(10)
    assert entries["cleanup.policy"].value == "compact,delete" and not entries["cleanup.policy"].is_default
    assert entries["retention.ms"].is_default
    (missing,) = client.describe_configs([ConfigResource(ResourceType.TOPIC, "nope")]).values()
    with pytest.raises(KafkaException, match="(?i)unknown"):
        missing.result(10)
    (deleted,) = client.delete_records([ConfluentTopicPartition("clicks", 0, 4)]).values()
    assert deleted.result(10).low_watermark == 4
    (beyond,) = client.delete_records([ConfluentTopicPartition("clicks", 0, 11)]).values()
    with pytest.raises(KafkaException, match="(?i)out of range"):
        beyond.result(10)


def test_delete_records_timeout_reaches_the_leader(fake, gateway):
    from kio.schema.delete_records.v2 import request as delete_v2

    fake.add_topic("clicks")
    produce(gateway, 3)
    request = delete_v2.DeleteRecordsRequest(timeout=datetime.timedelta(milliseconds=1234), topics=(
        delete_v2.DeleteRecordsTopic(name="clicks", partitions=(
            delete_v2.DeleteRecordsPartition(partition_index=0, offset=2),)),))
    (topic,) = _call(gateway, request, 2).topics
    assert [(p.partition_index, p.low_watermark, p.error_code) for p in topic.partitions] == [(0, 2, 0)]
    assert ("delete_records", TopicPartition("clicks", 0), 0, 2, 1234) in fake.calls
