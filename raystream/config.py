"""Topic (and log) configuration with Kafka's names and defaults.

Users write Kafka's dotted names (``retention.ms``); code reads the attribute form (``retention_ms``).
Both spellings are accepted on input. Values are validated here, once, so the storage layer can trust
them; a bad value raises :class:`~raystream.errors.InvalidConfigurationError` naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from raystream.errors import InvalidConfigurationError

NO_LIMIT = -1
#: Kafka's Long.MAX_VALUE default for flush.messages / flush.ms, meaning "leave flushing to the OS".
LONG_MAX = 2**63 - 1

#: The data path's request and fetch sizes, where raystream's defaults differ from Kafka's (1 MiB each).
#: Every produce and fetch is one Ray actor call, and a call costs ~2 ms before its first byte here plus
#: ~1 ms per MiB through the object store (``benchmarks/cluster.py``): at 1 MiB two thirds of a call is
#: fixed cost, at 16 MiB a tenth. So producers send (``max_request_size``), topics accept
#: (``max.message.bytes``, + Kafka's 12 bytes of slack) and consumers and followers fetch
#: (``max_partition_fetch_bytes``, ``replica.fetch.max.bytes``) up to 16 MiB per partition by default.
DATA_PATH_BYTES = 16 * 1024 * 1024

CLEANUP_POLICIES = ("delete", "compact", "compact,delete")
TIMESTAMP_TYPES = ("CreateTime", "LogAppendTime")


@dataclasses.dataclass(frozen=True)
class TopicConfig:
    """One topic's configuration; every partition log of the topic uses it. Immutable value object."""

    retention_ms: int = 7 * 24 * 3600 * 1000
    retention_bytes: int = NO_LIMIT
    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * 24 * 3600 * 1000
    cleanup_policy: str = "delete"
    min_insync_replicas: int = 1
    max_message_bytes: int = DATA_PATH_BYTES + 12  # Kafka: 1048588 (see DATA_PATH_BYTES)
    delete_retention_ms: int = 24 * 3600 * 1000
    unclean_leader_election_enable: bool = False
    flush_messages: int = LONG_MAX
    flush_ms: int = LONG_MAX
    index_interval_bytes: int = 4096
    message_timestamp_type: str = "CreateTime"

    @property
    def compact(self) -> bool:
        return "compact" in self.cleanup_policy

    @property
    def delete(self) -> bool:
        return "delete" in self.cleanup_policy

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, base: TopicConfig | None = None) -> TopicConfig:
        """Build a config from Kafka (``retention.ms``) or attribute (``retention_ms``) names over ``base``."""
        current = dataclasses.asdict(base or cls())
        for raw_key, value in (values or {}).items():
            if not isinstance(raw_key, str):
                raise InvalidConfigurationError(f"config keys must be strings, got {raw_key!r}")
            key = raw_key.replace(".", "_")
            if key not in current:
                raise InvalidConfigurationError(f"unknown topic config {raw_key!r}", key=raw_key)
            current[key] = _coerce(raw_key, value, type(current[key]))
        config = cls(**current)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Kafka-named view, for describe output and the metadata log."""
        return {k.replace("_", "."): v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        positive = ("segment_bytes", "segment_ms", "max_message_bytes", "flush_messages", "flush_ms",
                    "min_insync_replicas", "index_interval_bytes")
        for name in positive:
            if getattr(self, name) < 1:
                raise InvalidConfigurationError(f"{name.replace('_', '.')} must be >= 1, got {getattr(self, name)}")
        for name in ("retention_ms", "retention_bytes"):
            if getattr(self, name) < NO_LIMIT:
                raise InvalidConfigurationError(f"{name.replace('_', '.')} must be >= -1 (-1: no limit)")
        if self.delete_retention_ms < 0:
            raise InvalidConfigurationError("delete.retention.ms must be >= 0")
        if self.segment_bytes < 14:
            raise InvalidConfigurationError("segment.bytes must be >= 14")
        if self.cleanup_policy not in CLEANUP_POLICIES:
            raise InvalidConfigurationError(
                f"cleanup.policy must be one of {CLEANUP_POLICIES}, got {self.cleanup_policy!r}")
        if self.message_timestamp_type not in TIMESTAMP_TYPES:
            raise InvalidConfigurationError(
                f"message.timestamp.type must be one of {TIMESTAMP_TYPES}, got {self.message_timestamp_type!r}")


def _coerce(key: str, value: Any, target: type) -> Any:
    """Accept what Kafka tools accept: ints as strings, booleans as 'true'/'false', policies as lists."""
    try:
        if target is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if target is int:
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if target is str:
            if isinstance(value, (list, tuple)):
                value = ",".join(value)
            if not isinstance(value, str):
                raise ValueError(value)
            value = value.replace(" ", "")
            if key.replace(".", "_") == "cleanup_policy":  # Kafka accepts the two policies in any order
                value = ",".join(sorted(set(value.split(","))))
            return value
    except (TypeError, ValueError):
        raise InvalidConfigurationError(
            f"invalid value {value!r} for {key}: expected {target.__name__}", key=key) from None
    raise AssertionError(f"unhandled config type {target}")


_BROKER_ZERO_OK = {"group_initial_rebalance_delay_ms"}


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    """Cluster-wide (broker) settings, Kafka's names and defaults unless noted."""

    replica_lag_time_max_ms: int = 30000
    replica_fetch_max_bytes: int = DATA_PATH_BYTES  # Kafka: 1048576 (see DATA_PATH_BYTES)
    request_timeout_ms: int = 30000
    #: Kafka's replica.fetch.backoff.ms is 1000; a push replicator retries a dead follower sooner.
    replica_retry_backoff_ms: int = 100
    log_retention_check_interval_ms: int = 300000
    default_replication_factor: int = 1
    num_partitions: int = 1
    #: How often the controller checks every replica (raystream's stand-in for broker heartbeats).
    replica_heartbeat_interval_ms: int = 500
    #: A replica that answered no heartbeat for this long is failed: leaders are re-elected and it leaves
    #: every ISR (Kafka's broker.session.timeout.ms is 9000; a replica here is a process, not a broker, and
    #: the failover target is 3 s, so the default is shorter).
    replica_session_timeout_ms: int = 1500
    #: raystream's: a replica actor the controller just created counts as live (not failed) until it first
    #: answers a heartbeat, for at most this long (then a session from its last answer). Its process may
    #: take seconds to start on a busy node (Ray starts worker processes a few at a time), far longer than
    #: a session; a replica that dies meanwhile is failed at once (ActorDiedError, or its node dead).
    replica_startup_timeout_ms: int = 30_000
    #: Re-replication: a broker dead for this long has its replicas rebuilt on other live brokers.
    replica_reassignment_delay_ms: int = 60000
    #: Kafka's: how long the first join of an empty group waits for more members.
    group_initial_rebalance_delay_ms: int = 3000
    #: Kafka's offsets.retention.minutes (7 days): committed offsets of a group empty that long are deleted.
    offsets_retention_minutes: int = 10080
    #: Kafka's producer.id.expiration.ms: a replica forgets an idempotent producer whose last batch is this
    #: old (by the batch's max timestamp); its next batch then starts a new sequence (the client bumps its
    #: epoch and retries).
    producer_id_expiration_ms: int = 86_400_000
    #: raystream's: how often the group coordinator computes every group's lag for the
    #: ``raystream_consumer_group_lag`` gauge (one ListOffsets per partition with a committed offset a round;
    #: a round finishes before the next one is due). Ray exports metrics every 10 s by default.
    metrics_group_lag_interval_ms: int = 10_000
    #: raystream's (``broker.registration.timeout.ms``): how long the controller waits for Ray nodes to
    #: register as brokers — every live node at start, the nodes without a broker yet before a placement
    #: (create_topic, create_partitions). A node that does not answer in time is left out of that placement
    #: and registered by the failure monitor later.
    broker_registration_timeout_ms: int = 30_000

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None) -> BrokerConfig:
        current = dataclasses.asdict(cls())
        for raw_key, value in (values or {}).items():
            key = str(raw_key).replace(".", "_")
            if key not in current:
                raise InvalidConfigurationError(f"unknown broker config {raw_key!r}", key=raw_key)
            current[key] = _coerce(raw_key, value, int)
            minimum = 0 if key in _BROKER_ZERO_OK else 1
            if current[key] < minimum:
                raise InvalidConfigurationError(f"{raw_key} must be >= {minimum}, got {value!r}")
        return cls(**current)

    def to_dict(self) -> dict[str, Any]:
        """Kafka-named view (``replica.lag.time.max.ms``), as the configuration file spells it."""
        return {k.replace("_", "."): v for k, v in dataclasses.asdict(self).items()}
