"""Configs, the cluster and deleting records over the Kafka protocol: DescribeConfigs, AlterConfigs,
IncrementalAlterConfigs, DescribeCluster, DeleteRecords.

Topic configs are raystream's (:class:`raystream.config.TopicConfig`) under Kafka's names. A raystream topic
records its full config when created (docs/concepts.md), so a value's *source* is derived: a value other
than the cluster's default for new topics is the topic's own (DYNAMIC_TOPIC_CONFIG), a default the
cluster's defaults file sets is STATIC_BROKER_CONFIG (Kafka's server.properties), Kafka's built-in default
is DEFAULT_CONFIG. A topic set explicitly to the default value therefore shows as a default. Synonyms name
the broker-level config each topic config falls back to (``retention.ms`` -> ``log.retention.ms``).

Broker resources (the gateway's own node id, or "" for the cluster default) describe the settings the
controller runs with (:class:`raystream.config.BrokerConfig`) and the topic defaults under their broker
names; they are read-only (set in the configuration file, docs/operations.md): altering them is
INVALID_CONFIG. BROKER_LOGGER and other resource types are INVALID_REQUEST.

Alters reach topics through the controller's ``alter_topic_config`` (which validates again and tells every
replica). The new values are validated here first by the same rules (``TopicConfig.from_dict`` over the
topic's config), which is what ``validate_only`` runs without applying. DELETE reverts a config to the
cluster's default for new topics; APPEND and SUBTRACT apply to the list config ``cleanup.policy``.
AlterConfigs (the older API) sets the whole set: every config it does not list reverts to its default.
Unlike Kafka's controller, an alter reads the topic's config and then writes the result, so two
concurrent APPEND/SUBTRACT of the same list may lose one change (the last write wins).

DescribeCluster: the running gateways are the brokers, and the coordinator gateway is the controller (as
Metadata says). DeleteRecords: each
partition's leader moves its log start offset (``PartitionReplica.delete_records``) and answers the low
watermark once every in-sync replica has.

Concurrency: coroutines on the gateway's event loop; controller calls run in threads, DeleteRecords are
awaited futures of the client transport.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from raystream.config import BrokerConfig, TopicConfig
from raystream.errors import InvalidConfigurationError, InvalidRequestError, UnknownTopicOrPartitionError
from raystream.gateway.data_apis import _forget_on_stale, _leader, error_code
from raystream.gateway.framing import Request
from raystream.protocol import ClusterConfig, TopicPartition

TOPIC, BROKER = 2, 4  # Kafka's config resource types
DYNAMIC_TOPIC_CONFIG, STATIC_BROKER_CONFIG, DEFAULT_CONFIG = 1, 4, 5  # config sources
BOOLEAN, STRING, INT, LONG, LIST = 1, 2, 3, 5, 7  # config types
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3  # IncrementalAlterConfigs operations
BROKERS_ENDPOINT = 1  # DescribeCluster's endpoint type for brokers (2: controllers)
#: Kafka's "authorized operations not requested" marker (INT32_MIN), as in apis.metadata.
NO_AUTHORIZED_OPERATIONS = -2147483648


@dataclasses.dataclass(frozen=True)
class TopicKey:
    """What Kafka says about one topic config: the broker config it falls back to, its type, its meaning."""

    broker_name: str
    config_type: int
    documentation: str


#: Every raystream topic config (tests check this covers TopicConfig), with Kafka's broker synonyms and types.
TOPIC_KEYS: dict[str, TopicKey] = {
    "retention.ms": TopicKey("log.retention.ms", LONG,
                             "How long a partition keeps a sealed segment, by its newest record (-1: forever)."),
    "retention.bytes": TopicKey("log.retention.bytes", LONG,
                                "The size a partition may reach before its oldest segments go (-1: no limit)."),
    "segment.bytes": TopicKey("log.segment.bytes", INT, "The size at which the active segment is sealed."),
    "segment.ms": TopicKey("log.roll.ms", LONG, "The age at which the active segment is sealed."),
    "cleanup.policy": TopicKey("log.cleanup.policy", LIST,
                               "delete (retention), compact (latest record per key) or both."),
    "min.insync.replicas": TopicKey("min.insync.replicas", INT,
                                    "The fewest in-sync replicas an acks=all write needs."),
    "max.message.bytes": TopicKey("message.max.bytes", INT, "The largest record batch a partition accepts."),
    "delete.retention.ms": TopicKey("log.cleaner.delete.retention.ms", LONG,
                                    "How long compaction keeps tombstones (null values)."),
    "unclean.leader.election.enable": TopicKey("unclean.leader.election.enable", BOOLEAN,
                                               "Whether an out-of-sync replica may become leader (data loss)."),
    "flush.messages": TopicKey("log.flush.interval.messages", LONG, "Records between forced fsyncs."),
    "flush.ms": TopicKey("log.flush.interval.ms", LONG, "Milliseconds between forced fsyncs."),
    "index.interval.bytes": TopicKey("log.index.interval.bytes", INT, "Bytes between offset index entries."),
    "message.timestamp.type": TopicKey("log.message.timestamp.type", STRING,
                                       "CreateTime (the producer's) or LogAppendTime (the leader's)."),
}


def _code(exc: BaseException) -> ErrorCode:
    if isinstance(exc, InvalidRequestError):
        return ErrorCode.invalid_request
    return error_code(exc)


def _text(value: Any) -> str | None:
    """A config value as Kafka sends it: booleans "true"/"false", numbers in decimal."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _entry(name: str, value: Any, read_only: bool, config_type: int, documentation: str | None,
           synonyms: list[tuple[str, Any, int]]) -> dict[str, Any]:
    """One DescribeConfigs entry; ``synonyms`` highest precedence first, the first one being the source."""
    return {"name": name, "value": _text(value), "read_only": read_only, "config_source": synonyms[0][2],
            "is_sensitive": False, "config_type": config_type, "documentation": documentation,
            "synonyms": [{"name": n, "value": _text(v), "source": s} for n, v, s in synonyms]}


def topic_entries(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A topic's entries: ``config`` (its values), ``defaults`` (what new topics get; see the module)."""
    builtin = TopicConfig().to_dict()
    out = []
    for name, value in config.items():
        key = TOPIC_KEYS.get(name, TopicKey(name, STRING, ""))
        default = defaults.get(name, builtin.get(name))
        synonyms = [(name, value, DYNAMIC_TOPIC_CONFIG)] if value != default else []
        if default != builtin.get(name):
            synonyms.append((key.broker_name, default, STATIC_BROKER_CONFIG))
        synonyms.append((key.broker_name, builtin.get(name), DEFAULT_CONFIG))
        out.append(_entry(name, value, False, key.config_type, key.documentation or None, synonyms))
    return out


def broker_entries(cluster: ClusterConfig) -> list[dict[str, Any]]:
    """The broker's read-only entries: its settings, then the topic defaults under their broker names."""
    builtin_broker, builtin_topic = BrokerConfig().to_dict(), TopicConfig().to_dict()
    # Kafka's broker durations are LONG, its counts and sizes INT.
    rows = [(name, value, builtin_broker.get(name), LONG if name.endswith(".ms") else INT, None)
            for name, value in cluster.broker.items()]
    rows += [(key.broker_name, cluster.topic_defaults.get(name), builtin_topic.get(name), key.config_type,
              key.documentation) for name, key in TOPIC_KEYS.items()]
    out = []
    for name, value, builtin, config_type, documentation in rows:
        synonyms = [(name, value, STATIC_BROKER_CONFIG)] if value != builtin else []
        synonyms.append((name, builtin, DEFAULT_CONFIG))
        out.append(_entry(name, value, True, config_type, documentation, synonyms))
    return out


class _Cluster:
    """The controller's ClusterConfig, asked for at most once per request (only if a resource needs it)."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._config: ClusterConfig | None = None

    async def get(self) -> ClusterConfig:
        if self._config is None:
            self._config = await asyncio.to_thread(self._ctx.transport.get_cluster_config)
        return self._config


def _check_broker_name(ctx: Any, name: str) -> None:
    if name not in ("", str(ctx.node_id)):
        raise InvalidRequestError(f"unexpected broker id {name!r}: this gateway is broker {ctx.node_id} "
                                  f"(or \"\" for the cluster default)")


async def _topic_config(ctx: Any, name: str, cluster: _Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the topic's full config, the cluster's topic defaults), both Kafka-named; unknown topics raise
    UnknownTopicOrPartitionError."""
    found = await asyncio.to_thread(ctx.transport.get_metadata, [name])
    meta = found.get(name)
    if meta is None:
        raise UnknownTopicOrPartitionError(f"unknown topic {name!r}", topic=name)
    defaults = (await cluster.get()).topic_defaults
    # A config that lacks keys (older topics, other transports) takes the defaults for them.
    full = TopicConfig.from_dict(meta.config, base=TopicConfig.from_dict(defaults)).to_dict()
    return full, defaults


async def _describe_resource(ctx: Any, kind: int, name: str, cluster: _Cluster) -> list[dict[str, Any]]:
    if kind == TOPIC:
        return topic_entries(*await _topic_config(ctx, name, cluster))
    if kind == BROKER:
        _check_broker_name(ctx, name)
        return broker_entries(await cluster.get())
    raise InvalidRequestError(f"config resource type {kind} is not served by the gateway (topics: 2, brokers: 4)")


async def describe_configs(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    synonyms = bool(getattr(body, "include_synonyms", False))
    documentation = bool(getattr(body, "include_documentation", False))
    cluster = _Cluster(ctx)
    results = []
    for resource in body.resources:
        out: dict[str, Any] = {"error_code": ErrorCode.none, "error_message": None, "configs": [],
                               "resource_type": resource.resource_type, "resource_name": resource.resource_name}
        try:
            entries = await _describe_resource(ctx, int(resource.resource_type), resource.resource_name, cluster)
        except Exception as exc:  # this resource's error code
            out.update(error_code=_code(exc), error_message=str(exc)[:500])
            results.append(out)
            continue
        wanted = set(resource.configuration_keys or ())  # null or empty: every config (as Kafka's broker)
        for entry in entries:
            if wanted and entry["name"] not in wanted:
                continue
            out["configs"].append({**entry, "synonyms": entry["synonyms"] if synonyms else [],
                                   "documentation": entry["documentation"] if documentation else None})
        results.append(out)
    return {"throttle_time": 0, "results": results}


# -- alters ------------------------------------------------------------------------------------------------
def _list_value(value: Any) -> list[str]:
    text = value if isinstance(value, str) else _text(value) or ""
    return [item.strip() for item in text.split(",") if item.strip()]


def incremental_changes(ops: Iterable[tuple[str, int, str | None]], current: Mapping[str, Any],
                        defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The config values IncrementalAlterConfigs' ``(name, operation, value)`` ops make of ``current``,
    validated as the controller will (InvalidConfigurationError; InvalidRequestError for a repeated name
    or an unknown operation). Pure."""
    changes: dict[str, Any] = {}
    for name, operation, value in ops:
        if name in changes:
            raise InvalidRequestError(f"config {name!r} appears more than once in one resource")
        if name not in current:
            raise InvalidConfigurationError(f"unknown topic config {name!r}", key=name)
        if operation == SET:
            if value is None:
                raise InvalidConfigurationError(f"SET of {name!r} needs a value (DELETE reverts to the default)",
                                                key=name)
            changes[name] = value
        elif operation == DELETE:
            changes[name] = defaults[name]
        elif operation in (APPEND, SUBTRACT):
            if TOPIC_KEYS.get(name, TopicKey(name, STRING, "")).config_type != LIST:
                raise InvalidConfigurationError(f"{name!r} is not a list config: APPEND and SUBTRACT apply to "
                                                f"list configs only (cleanup.policy)", key=name)
            items, given = _list_value(current[name]), _list_value(value)
            if operation == APPEND:
                items += [item for item in given if item not in items]
            else:
                items = [item for item in items if item not in given]
            changes[name] = ",".join(items)
        else:
            raise InvalidRequestError(f"unknown config operation {operation} for {name!r} (0-3: SET, DELETE, "
                                      f"APPEND, SUBTRACT)")
    TopicConfig.from_dict(changes, base=TopicConfig.from_dict(current))  # the controller's rules
    return changes


def whole_set_changes(configs: Iterable[tuple[str, str | None]], current: Mapping[str, Any],
                      defaults: Mapping[str, Any]) -> dict[str, Any]:
    """AlterConfigs' answer: the listed configs set (a null value: the default), every other one back to
    its default; validated as :func:`incremental_changes` is. Pure."""
    listed = list(configs)
    names = [name for name, _ in listed]
    if len(set(names)) != len(names):
        raise InvalidRequestError("a config appears more than once in one resource")
    ops = [(name, SET if value is not None else DELETE, value) for name, value in listed]
    ops += [(name, DELETE, None) for name in current if name not in set(names)]
    return incremental_changes(ops, current, defaults)


async def _alter_resource(ctx: Any, resource: Any, incremental: bool, validate_only: bool,
                          cluster: _Cluster) -> None:
    kind, name = int(resource.resource_type), resource.resource_name
    if kind == BROKER:
        _check_broker_name(ctx, name)
        raise InvalidConfigurationError("broker configs are read-only in raystream: set them in the cluster's "
                                        "configuration file (docs/operations.md)")
    if kind != TOPIC:
        raise InvalidRequestError(f"config resource type {kind} is not served by the gateway (topics: 2)")
    current, defaults = await _topic_config(ctx, name, cluster)
    if incremental:
        changes = incremental_changes([(c.name, int(c.config_operation), c.value) for c in resource.configs],
                                      current, defaults)
    else:
        changes = whole_set_changes([(c.name, c.value) for c in resource.configs], current, defaults)
    if not validate_only and changes:
        await asyncio.to_thread(ctx.transport.alter_topic_config, name, changes)


async def _alter(request: Request, ctx: Any, incremental: bool) -> Mapping[str, Any]:
    body = request.body
    cluster = _Cluster(ctx)
    responses = []
    for resource in body.resources:
        out: dict[str, Any] = {"error_code": ErrorCode.none, "error_message": None,
                               "resource_type": resource.resource_type, "resource_name": resource.resource_name}
        try:
            await _alter_resource(ctx, resource, incremental, bool(body.validate_only), cluster)
        except Exception as exc:  # this resource's error code
            out.update(error_code=_code(exc), error_message=str(exc)[:500])
        responses.append(out)
    return {"throttle_time": 0, "responses": responses}


async def incremental_alter_configs(request: Request, ctx: Any) -> Mapping[str, Any]:
    return await _alter(request, ctx, incremental=True)


async def alter_configs(request: Request, ctx: Any) -> Mapping[str, Any]:
    return await _alter(request, ctx, incremental=False)


# -- the cluster and its records -----------------------------------------------------------------------------
async def describe_cluster(request: Request, ctx: Any) -> Mapping[str, Any]:
    brokers = ctx.brokers()
    out: dict[str, Any] = {"throttle_time": 0, "error_code": ErrorCode.none, "error_message": None,
                           "endpoint_type": BROKERS_ENDPOINT, "cluster_id": ctx.cluster_id,
                           "controller_id": ctx.coordinator(brokers)[0], "brokers": [],
                           "cluster_authorized_operations": NO_AUTHORIZED_OPERATIONS}
    endpoint = int(getattr(request.body, "endpoint_type", BROKERS_ENDPOINT))
    if endpoint != BROKERS_ENDPOINT:
        out.update(error_code=ErrorCode.unsupported_endpoint_type, endpoint_type=endpoint,
                   error_message="the gateway serves the brokers endpoint (1) only")
        return out
    out["brokers"] = [{"broker_id": node, "host": host, "port": port, "rack": None, "is_fenced": False}
                      for node, (host, port) in brokers.items()]
    return out


async def delete_records(request: Request, ctx: Any) -> Mapping[str, Any]:
    timeout_ms = int(request.body.timeout.total_seconds() * 1000)
    topics = []
    for topic in request.body.topics:
        partitions = await asyncio.gather(*[
            _delete_partition(ctx, topic.name, p.partition_index, int(p.offset), timeout_ms)
            for p in topic.partitions])
        topics.append({"name": topic.name, "partitions": partitions})
    return {"throttle_time": 0, "topics": topics}


async def _delete_partition(ctx: Any, topic: str, partition: int, offset: int,
                            timeout_ms: int) -> Mapping[str, Any]:
    out: dict[str, Any] = {"partition_index": partition, "low_watermark": -1, "error_code": ErrorCode.none}
    try:
        _, leader, epoch = await _leader(ctx, topic, partition)
        low = await asyncio.wrap_future(ctx.transport.delete_records(
            TopicPartition(topic, partition), leader, offset, timeout_ms, leader_epoch=epoch))
        out.update(low_watermark=low)
    except Exception as exc:  # one partition's failure is that partition's error code
        await _forget_on_stale(ctx, topic, exc)
        out.update(error_code=error_code(exc))
    return out


#: Kafka API key -> (min version, max version, handler) served by this module.
HANDLERS = {
    21: (0, 2, delete_records),  # DeleteRecords
    32: (1, 4, describe_configs),  # DescribeConfigs (v0 is gone from Kafka's specs and kio)
    33: (0, 2, alter_configs),  # AlterConfigs
    44: (0, 1, incremental_alter_configs),  # IncrementalAlterConfigs
    60: (0, 2, describe_cluster),  # DescribeCluster
}
