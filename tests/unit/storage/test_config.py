"""TopicConfig / BrokerConfig: Kafka names and attribute names, coercion, validation."""

from __future__ import annotations

import dataclasses

import pytest

from raystream.config import LONG_MAX, NO_LIMIT, BrokerConfig, TopicConfig
from raystream.errors import InvalidConfigurationError


def test_defaults_are_kafkas():
    c = TopicConfig()
    assert c.retention_ms == 604800000 and c.retention_bytes == NO_LIMIT
    assert c.segment_bytes == 1073741824 and c.segment_ms == 604800000
    assert c.cleanup_policy == "delete" and c.delete and not c.compact
    assert c.max_message_bytes == 16 * 1024 * 1024 + 12 and c.delete_retention_ms == 86400000
    assert c.flush_messages == c.flush_ms == LONG_MAX
    assert c.index_interval_bytes == 4096 and c.message_timestamp_type == "CreateTime"
    assert c.min_insync_replicas == 1 and c.unclean_leader_election_enable is False


@pytest.mark.parametrize("key", ["retention.ms", "retention_ms"])
def test_dotted_and_underscore_names_are_both_accepted(key):
    assert TopicConfig.from_dict({key: 5000}).retention_ms == 5000


def test_from_dict_over_a_base_and_to_dict_roundtrip():
    base = TopicConfig.from_dict({"segment.bytes": 1000, "cleanup.policy": "compact"})
    derived = TopicConfig.from_dict({"retention_bytes": 10}, base=base)
    assert (derived.segment_bytes, derived.cleanup_policy, derived.retention_bytes) == (1000, "compact", 10)
    as_dict = derived.to_dict()
    assert as_dict["segment.bytes"] == 1000 and as_dict["unclean.leader.election.enable"] is False
    assert "segment_bytes" not in as_dict
    assert TopicConfig.from_dict(as_dict) == derived
    with pytest.raises(dataclasses.FrozenInstanceError):
        derived.segment_bytes = 5  # type: ignore[misc]


@pytest.mark.parametrize("values, attr, expected", [
    ({"retention.ms": "123"}, "retention_ms", 123),
    ({"segment.bytes": 2048.0}, "segment_bytes", 2048),
    ({"retention.ms": -1}, "retention_ms", -1),
    ({"unclean.leader.election.enable": "TRUE"}, "unclean_leader_election_enable", True),
    ({"unclean.leader.election.enable": False}, "unclean_leader_election_enable", False),
    ({"cleanup.policy": ["compact", "delete"]}, "cleanup_policy", "compact,delete"),
    ({"cleanup.policy": "compact, delete"}, "cleanup_policy", "compact,delete"),
    ({"cleanup.policy": ("compact",)}, "cleanup_policy", "compact"),
    ({"message.timestamp.type": "LogAppendTime"}, "message_timestamp_type", "LogAppendTime"),
    ({"delete.retention.ms": 0}, "delete_retention_ms", 0),
    ({"segment.bytes": 14}, "segment_bytes", 14),
])
def test_coercion(values, attr, expected):
    assert getattr(TopicConfig.from_dict(values), attr) == expected


@pytest.mark.parametrize("policy", ["delete,compact", ["delete", "compact"], "compact,delete"])
def test_cleanup_policy_list_order_does_not_matter(policy):
    """Kafka's cleanup.policy is a list: 'delete,compact' means the same as 'compact,delete'."""
    config = TopicConfig.from_dict({"cleanup.policy": policy})
    assert config.compact and config.delete


@pytest.mark.parametrize("values, names", [
    ({"retention.msec": 1}, "retention.msec"),
    ({"no_such_thing": 1}, "no_such_thing"),
    ({"compact": True}, "compact"),                       # a property, not a config
    ({"retention.ms": "soon"}, "retention.ms"),
    ({"retention.ms": 1.5}, "retention.ms"),
    ({"retention.ms": True}, "retention.ms"),
    ({"retention.ms": None}, "retention.ms"),
    ({"retention.ms": -2}, "retention.ms"),
    ({"retention.bytes": -5}, "retention.bytes"),
    ({"segment.bytes": 0}, "segment.bytes"),
    ({"segment.bytes": 13}, "segment.bytes"),
    ({"segment.ms": 0}, "segment.ms"),
    ({"max.message.bytes": 0}, "max.message.bytes"),
    ({"flush.messages": 0}, "flush.messages"),
    ({"flush.ms": -1}, "flush.ms"),
    ({"index.interval.bytes": 0}, "index.interval.bytes"),
    ({"min.insync.replicas": 0}, "min.insync.replicas"),
    ({"delete.retention.ms": -1}, "delete.retention.ms"),
    ({"cleanup.policy": "archive"}, "cleanup.policy"),
    ({"cleanup.policy": 3}, "cleanup.policy"),
    ({"message.timestamp.type": "WallClock"}, "message.timestamp.type"),
    ({"unclean.leader.election.enable": "yes"}, "unclean.leader.election.enable"),
    ({"unclean.leader.election.enable": 1}, "unclean.leader.election.enable"),
    ({1: 2}, "1"),
])
def test_invalid_configs_name_the_key(values, names):
    with pytest.raises(InvalidConfigurationError) as info:
        TopicConfig.from_dict(values)
    assert names in str(info.value)
    assert not info.value.retriable


def test_unknown_key_is_in_the_error_details():
    with pytest.raises(InvalidConfigurationError) as info:
        TopicConfig.from_dict({"retention.msec": 1})
    assert info.value.key == "retention.msec"


def test_direct_construction_is_validated_by_validate():
    with pytest.raises(InvalidConfigurationError):
        TopicConfig(segment_bytes=0).validate()
    TopicConfig(segment_bytes=14).validate()


def test_broker_config():
    c = BrokerConfig.from_dict({"replica.lag.time.max.ms": "100", "num_partitions": 3})
    assert (c.replica_lag_time_max_ms, c.num_partitions) == (100, 3)
    assert BrokerConfig() == BrokerConfig.from_dict(None)
    for bad in ({"nope": 1}, {"num.partitions": 0}, {"request.timeout.ms": "x"}):
        with pytest.raises(InvalidConfigurationError):
            BrokerConfig.from_dict(bad)
