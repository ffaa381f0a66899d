"""``Admin``: topic management (create, list, describe, alter config, add partitions, delete), deleting
records below an offset (Kafka's DeleteRecords) and consumer groups (list, describe with lag, reset
offsets, delete).

Arguments are checked here, before any remote call; the controller validates topic names and configs
again and raises the raystream errors (``TopicAlreadyExistsError``, ``InvalidConfigurationError``, ...).
Thread-safe (holds no mutable state besides the closed flag).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import pyarrow as pa

from raystream import errors
from raystream.client import context
from raystream.client.base import BaseTransport
from raystream.client.list_offsets import ListOffsets, MetadataLeaders
from raystream.client.offset_spec import parse_offset_spec
from raystream.core.lag import consumer_lag
from raystream.core.names import validate_topic_name
from raystream.errors import ClosedError
from raystream.protocol import HIGH_WATERMARK, LATEST, GroupDescription, TopicDescription, TopicPartition
from raystream.record import check_user_schema

log = logging.getLogger(__name__)
#: Pause between retries of a retriable ListOffsets error (Kafka's retry.backoff.ms default).
_RETRY_BACKOFF_S = 0.1


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"topic name must be a str, got {type(name).__name__}")
    return validate_topic_name(name)  # Kafka's rules; InvalidTopicError, before any remote call


def _check_count(what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def _check_group(group_id: Any) -> str:
    if not isinstance(group_id, str) or not group_id:
        raise TypeError(f"group_id must be a non-empty str, got {group_id!r}")
    return group_id


def _check_config(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise TypeError("config must be a mapping of Kafka config names (e.g. 'retention.ms') to values")
    return dict(config)


def _check_delete_offsets(offsets: Any) -> dict[TopicPartition, int]:
    if not isinstance(offsets, Mapping):
        raise TypeError(f"offsets must be a mapping of TopicPartition to offset, got {type(offsets).__name__}")
    out = {}
    for tp, offset in offsets.items():
        if not isinstance(tp, TopicPartition):
            raise TypeError(f"offsets' keys must be TopicPartition, got {tp!r}")
        _check_name(tp.topic)
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TypeError(f"offset of {tp} must be an int, got {type(offset).__name__}")
        if offset < HIGH_WATERMARK:
            raise ValueError(f"offset of {tp} must be >= 0, or -1 for the high watermark; got {offset}")
        out[tp] = offset
    return out


class Admin:
    def __init__(self, *, request_timeout_ms: int = 60_000, cluster: Any = None,
                 transport: BaseTransport | None = None) -> None:
        if not isinstance(request_timeout_ms, int) or isinstance(request_timeout_ms, bool) or request_timeout_ms < 1:
            raise ValueError(f"request_timeout_ms must be an int >= 1, got {request_timeout_ms!r}")
        self._transport = context.resolve(cluster, transport)
        self._timeout_s = request_timeout_ms / 1000
        self._closed = False
        leaders = MetadataLeaders(lambda topics: self._transport.get_metadata(topics, timeout_s=self._timeout_s))
        self._list_offsets = ListOffsets(self._transport, leaders, retry_backoff_s=_RETRY_BACKOFF_S,
                                         retry_leaderless=False)
        # DeleteRecords rides the same retry loop (resending it is a no-op); a leaderless partition waits for
        # its election, as Kafka's admin client does, until the request timeout.
        self._delete_records = ListOffsets(self._transport, leaders, retry_backoff_s=_RETRY_BACKOFF_S,
                                           send=self._send_delete_records)

    def create_topic(self, name: str, partitions: int | None = None, replication_factor: int | None = None,
                     config: Mapping[str, Any] | None = None, schema: pa.Schema | None = None,
                     key_column: str | None = None) -> None:
        """Create a topic. With ``schema`` (a ``pyarrow.Schema``) it is Arrow-native: producers send tables
        of that schema; ``key_column`` names the column keyed partitioning and compaction use.
        ``partitions`` / ``replication_factor`` left ``None`` take the cluster's ``num.partitions`` /
        ``default.replication.factor`` (1 and 1 unless the cluster defaults file says otherwise), and every
        config not in ``config`` takes the cluster's topic default, as Kafka's CreateTopics does."""
        self._check_open()
        _check_name(name)
        if partitions is not None:
            _check_count("partitions", partitions)
        if replication_factor is not None:
            _check_count("replication_factor", replication_factor)
        config = _check_config(config)
        schema_bytes = None
        if schema is not None:
            check_user_schema(schema)  # TypeError / SchemaMismatchError for reserved column names
            schema_bytes = schema.serialize().to_pybytes()
        if key_column is not None:
            if not isinstance(key_column, str):
                raise TypeError("key_column must be a str or None")
            names = schema.names if schema is not None else ["key"]
            if key_column not in names:
                raise ValueError(f"key_column {key_column!r} is not a column of {names}")
        # One id per call: if the controller restarts mid-call, Ray resends the call, which must find the
        # topic this call created rather than fail with TopicAlreadyExistsError.
        self._transport.create_topic(name, partitions, replication_factor, config, schema_bytes, key_column,
                                     timeout_s=self._timeout_s, creation_id=uuid.uuid4().hex)

    def list_topics(self) -> list[str]:
        self._check_open()
        return sorted(self._transport.list_topics(timeout_s=self._timeout_s))

    def describe_topic(self, name: str) -> TopicDescription:
        self._check_open()
        return self._transport.describe_topic(_check_name(name), timeout_s=self._timeout_s)

    def alter_topic_config(self, name: str, config: Mapping[str, Any]) -> None:
        """Set the given topic configs (others keep their values)."""
        self._check_open()
        _check_name(name)
        config = _check_config(config)
        if config is None:
            raise TypeError("config must be a mapping")
        self._transport.alter_topic_config(name, config, timeout_s=self._timeout_s)

    def alter_topic_schema(self, name: str, schema: pa.Schema) -> None:
        """Evolve an Arrow-native topic's schema: add nullable columns, widen types (int32 → int64, ...).
        Old batches stay readable and come back in the new schema (added columns null). An incompatible
        change raises SchemaMismatchError naming each field."""
        self._check_open()
        _check_name(name)
        if not isinstance(schema, pa.Schema):
            raise TypeError(f"schema must be a pyarrow.Schema, got {type(schema).__name__}")
        check_user_schema(schema)
        self._transport.alter_topic_schema(name, schema.serialize().to_pybytes(), timeout_s=self._timeout_s)

    def create_partitions(self, name: str, total: int) -> None:
        """Grow the topic to ``total`` partitions (Kafka cannot shrink a topic, nor can we)."""
        self._check_open()
        _check_name(name)
        _check_count("total", total)
        self._transport.create_partitions(name, total, timeout_s=self._timeout_s)

    def delete_topic(self, name: str) -> None:
        self._check_open()
        self._transport.delete_topic(_check_name(name), timeout_s=self._timeout_s)

    def delete_records(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Kafka's ``AdminClient.deleteRecords``: delete each partition's records below the given offset
        (``-1``: below its high watermark) by moving its log start offset there; whole segments below it are
        removed from disk. Consumers can no longer read those records; ListOffsets' earliest moves.

        Returns each partition's low watermark (its log start offset once every in-sync replica has moved,
        at least the offset asked for). An offset above the high watermark raises OffsetOutOfRangeError; a
        partition the topic does not have, UnknownTopicOrPartitionError. Leader changes are retried until
        the request timeout (RequestTimeoutError then). Every partition is tried before the first
        partition's error is raised (the others may have been deleted meanwhile).
        """
        self._check_open()
        targets = _check_delete_offsets(offsets)
        if not targets:
            return {}
        result = self._delete_records.run(targets, self._timeout_s)
        error = result.first_error()
        if error is not None:
            raise error
        if result.unanswered:
            last = next((e for e in result.unanswered.values() if e is not None), None)
            raise errors.RequestTimeoutError(
                f"delete_records: no answer for {sorted(str(tp) for tp in result.unanswered)} within "
                f"{self._timeout_s * 1000:.0f} ms (last error: {last!r})")
        return {tp: result.offsets[tp] for tp in targets}

    def _send_delete_records(self, transport: BaseTransport, tp: TopicPartition, broker: int, offset: int,
                             read_committed: bool) -> Future[int]:
        return transport.delete_records(tp, broker, offset, int(self._timeout_s * 1000))

    def list_groups(self) -> list[str]:
        self._check_open()
        return self._transport.group_call("list_groups", timeout_s=self._timeout_s)

    def describe_group(self, group_id: str) -> GroupDescription:
        """State, generation, members with their assignments, committed offsets and lag per partition
        (high watermark − committed offset; None where the high watermark is unknown)."""
        self._check_open()
        d = self._transport.group_call("describe_group_state", _check_group(group_id), timeout_s=self._timeout_s)
        offsets = {tp: offset for tp, (offset, _) in d.committed.items()}
        ends = self._offsets_of(sorted(offsets), LATEST)
        lag = consumer_lag(offsets, ends)
        return GroupDescription(d.group_id, d.state, d.generation_id, d.members, offsets, lag, d.protocol)

    def reset_offsets(self, group_id: str, partitions: Any, to: Any) -> dict[TopicPartition, int]:
        """Set the group's committed offsets of ``partitions`` (a topic name or a list of TopicPartition)
        ``to`` "earliest", "latest", {"timestamp": ms} or an offset; only for a group with no active member
        (GroupNotEmptyError otherwise). Returns the new offsets (those ``plan_reset_offsets`` computes)."""
        targets = self.plan_reset_offsets(group_id, partitions, to)
        self._transport.group_call("reset_group_offsets", group_id, targets, timeout_s=self._timeout_s)
        return targets

    def plan_reset_offsets(self, group_id: str, partitions: Any, to: Any) -> dict[TopicPartition, int]:
        """The offsets ``reset_offsets`` would commit, without changing anything (Kafka's dry run)."""
        self._check_open()
        _check_group(group_id)
        if isinstance(partitions, str):
            meta = self._transport.get_metadata([partitions], timeout_s=self._timeout_s)[partitions]
            tps = [TopicPartition(partitions, s.partition) for s in meta.partitions]
        else:
            tps = [tp if isinstance(tp, TopicPartition) else TopicPartition(*tp) for tp in partitions]
        spec = parse_offset_spec(to, "to", min_timestamp_ms=1)
        if spec.kind == "offset":
            targets: dict[TopicPartition, int | None] = {tp: spec.offset for tp in tps}
        elif spec.kind == "timestamp":
            found = self._offsets_of(tps, spec.list_offsets_spec)
            latest = self._offsets_of(tps, LATEST)
            targets = {tp: (o if o is not None and o >= 0 else latest.get(tp)) for tp, o in found.items()}
        else:
            targets = self._offsets_of(tps, spec.list_offsets_spec)
        missing = [str(tp) for tp, o in targets.items() if o is None]
        if missing:
            raise errors.LeaderNotAvailableError(f"no leader answered for {missing}; try again")
        return targets

    def delete_group(self, group_id: str) -> None:
        """Delete an empty group and its committed offsets (GroupNotEmptyError while members are active)."""
        self._check_open()
        self._transport.group_call("delete_group", _check_group(group_id), timeout_s=self._timeout_s)

    def _offsets_of(self, tps: list[TopicPartition], spec: int) -> dict[TopicPartition, int | None]:
        """ListOffsets of each partition's leader (None where it could not be asked). A retriable error
        (a leader moving or still taking its role) is retried on fresh metadata until the request timeout,
        as Kafka's admin client does; a partition without a leader is None at once."""
        if not tps:
            return {}
        result = self._list_offsets.run(dict.fromkeys(tps, spec), self._timeout_s)
        for tp, exc in result.failed.items():
            if not isinstance(exc, errors.RaystreamError):
                raise exc
            log.debug("list offsets of %s: %s: %s", tp, type(exc).__name__, exc)
        return {tp: result.offsets.get(tp) for tp in tps}

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("admin client is closed")

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
