"""``Consumer``: reads records of assigned partitions — chosen by ``assign`` (manual) or by the consumer group
(``subscribe``; membership, heartbeats and rebalances in :mod:`raystream.client.group`).

``poll`` returns up to ``max_poll_records`` :class:`~raystream.protocol.Record` objects (headers as a list
of ``(key, value)`` tuples, as kafka-python); ``poll_arrow`` returns a ``pyarrow.Table`` without converting
anything to Python. Fetching, prefetching and position resets live in :mod:`raystream.client.fetcher`.

Not thread-safe (like Kafka's consumer): use one consumer from one thread at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream.client import context
from raystream.client.base import BaseTransport
from raystream.client.convert import (
    arrow_table,
    output_schema,
    requested_columns,
    to_arrow,
    to_records,
    user_schema,
)
from raystream.client.fetcher import RESET_SPECS, Fetcher
from raystream.client.group import DEFAULT_ASSIGNORS, ConsumerGroupMetadata, GroupMember
from raystream.client.metadata import MetadataCache
from raystream.core.assignors import ASSIGNORS
from raystream.errors import ClosedError, RaystreamError, RequestTimeoutError, UnknownTopicOrPartitionError
from raystream.protocol import EARLIEST, LATEST, Record, TopicPartition
from raystream.record import TIMESTAMP_COLUMN

log = logging.getLogger(__name__)

_NO_GROUP = "this needs a consumer with a group_id (Kafka: InvalidGroupIdException)"


@dataclasses.dataclass(frozen=True)
class OffsetAndTimestamp:
    """Answer of ``offsets_for_times``: the first offset whose timestamp is >= the one asked, and the
    timestamp of that record."""

    offset: int
    timestamp: int


def _check_timeout(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_tp(tp: Any) -> TopicPartition:
    if not isinstance(tp, TopicPartition):
        raise TypeError(f"expected a TopicPartition, got {type(tp).__name__}")
    return tp


def _tp_list(partitions: Any) -> list[TopicPartition]:
    if isinstance(partitions, TopicPartition):
        return [partitions]
    if isinstance(partitions, (str, bytes)) or not isinstance(partitions, Iterable):
        raise TypeError("partitions must be a list of TopicPartition")
    return [_check_tp(tp) for tp in partitions]


class Consumer:
    """A Kafka-style consumer; configuration uses Kafka's names with underscores and Kafka's defaults.

    With ``group_id``, ``subscribe`` joins that consumer group; ``commit``/``committed`` store and read the
    group's offsets (also after a manual ``assign``); auto-commit (``enable_auto_commit``) commits the
    positions of what earlier polls returned, every ``auto_commit_interval_ms``, before a rebalance and on
    close — at-least-once delivery."""

    def __init__(self, *, group_id: str | None = None, auto_offset_reset: str = "latest",
                 enable_auto_commit: bool = True, auto_commit_interval_ms: int = 5000,
                 isolation_level: str = "read_uncommitted", session_timeout_ms: int = 45_000,
                 heartbeat_interval_ms: int = 3000, max_poll_interval_ms: int = 300_000,
                 max_poll_records: int = 500, fetch_min_bytes: int = 1, fetch_max_wait_ms: int = 500,
                 fetch_max_bytes: int = 52_428_800, max_partition_fetch_bytes: int = 1_048_576,
                 request_timeout_ms: int = 30_000, retry_backoff_ms: int = 100,
                 metadata_max_age_ms: int = 300_000, default_api_timeout_ms: int = 60_000,
                 consumer_timeout_ms: int | None = None,
                 key_deserializer: Callable[[bytes], Any] | None = None,
                 value_deserializer: Callable[[bytes], Any] | None = None, client_id: str | None = None,
                 group_instance_id: str | None = None,
                 partition_assignment_strategy: Iterable[str] = DEFAULT_ASSIGNORS,
                 cluster: Any = None, transport: BaseTransport | None = None) -> None:
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise TypeError("group_id must be a non-empty str or None")
        if group_instance_id is not None and (not isinstance(group_instance_id, str) or group_id is None):
            raise ValueError("group_instance_id must be a str, and needs a group_id")
        strategies = [partition_assignment_strategy] if isinstance(partition_assignment_strategy, str) \
            else list(partition_assignment_strategy)
        unknown_strategies = [a for a in strategies if a not in ASSIGNORS]
        if not strategies or unknown_strategies:
            raise ValueError(f"partition_assignment_strategy must name assignors among {sorted(ASSIGNORS)}, "
                             f"got {strategies!r}")
        if heartbeat_interval_ms >= session_timeout_ms:
            raise ValueError(f"heartbeat_interval_ms ({heartbeat_interval_ms}) must be lower than "
                             f"session_timeout_ms ({session_timeout_ms}), as in Kafka")
        if auto_offset_reset not in RESET_SPECS:
            raise ValueError(f"auto_offset_reset must be 'earliest', 'latest' or 'none', got {auto_offset_reset!r}")
        if isolation_level not in ("read_uncommitted", "read_committed"):
            raise ValueError(f"isolation_level must be 'read_uncommitted' or 'read_committed', "
                             f"got {isolation_level!r}")
        for name, value, minimum in (("max_poll_records", max_poll_records, 1), ("fetch_min_bytes", fetch_min_bytes, 0),
                                     ("fetch_max_wait_ms", fetch_max_wait_ms, 0), ("fetch_max_bytes", fetch_max_bytes, 1),
                                     ("max_partition_fetch_bytes", max_partition_fetch_bytes, 1),
                                     ("request_timeout_ms", request_timeout_ms, 1),
                                     ("retry_backoff_ms", retry_backoff_ms, 0),
                                     ("metadata_max_age_ms", metadata_max_age_ms, 0),
                                     ("default_api_timeout_ms", default_api_timeout_ms, 1),
                                     ("auto_commit_interval_ms", auto_commit_interval_ms, 0),
                                     ("session_timeout_ms", session_timeout_ms, 1),
                                     ("heartbeat_interval_ms", heartbeat_interval_ms, 1),
                                     ("max_poll_interval_ms", max_poll_interval_ms, 1)):
            _check_int(name, value, minimum)
        if consumer_timeout_ms is not None:
            _check_int("consumer_timeout_ms", consumer_timeout_ms, 0)
        for name, fn in (("key_deserializer", key_deserializer), ("value_deserializer", value_deserializer)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        self._transport = context.resolve(cluster, transport)
        self.group_id = group_id
        self.client_id = client_id
        self.enable_auto_commit = bool(enable_auto_commit)
        self.isolation_level = isolation_level
        self.max_poll_records = max_poll_records
        self._api_timeout_s = default_api_timeout_ms / 1000
        self._consumer_timeout_s = None if consumer_timeout_ms is None else consumer_timeout_ms / 1000
        self._key_deserializer = key_deserializer
        self._value_deserializer = value_deserializer
        self._metadata = MetadataCache(self._transport, request_timeout_ms=request_timeout_ms,
                                       retry_backoff_ms=retry_backoff_ms, max_age_ms=metadata_max_age_ms)
        self._fetcher = Fetcher(self._transport, self._metadata, auto_offset_reset=auto_offset_reset,
                                fetch_min_bytes=fetch_min_bytes, fetch_max_wait_ms=fetch_max_wait_ms,
                                fetch_max_bytes=fetch_max_bytes, max_partition_fetch_bytes=max_partition_fetch_bytes,
                                request_timeout_ms=request_timeout_ms, retry_backoff_ms=retry_backoff_ms)
        self._fetcher.read_committed = isolation_level == "read_committed"
        self._iter_records: deque[Record] = deque()
        self._closed = False
        self._auto_commit_s = auto_commit_interval_ms / 1000
        self._last_auto_commit = time.monotonic()
        self._group = None if group_id is None else GroupMember(
            self._transport, group_id, client_id=client_id, group_instance_id=group_instance_id,
            session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms, assignors=strategies, retry_backoff_ms=retry_backoff_ms,
            metadata_max_age_ms=metadata_max_age_ms)

    # -- assignment ------------------------------------------------------------------------------------------
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (replacing any previous assignment; positions of partitions kept
        are kept). Raises UnknownTopicOrPartitionError for a partition that does not exist."""
        self._check_open()
        tps = list(dict.fromkeys(_tp_list(partitions)))
        for tp in tps:
            if not isinstance(tp.topic, str) or not isinstance(tp.partition, int) or tp.partition < 0:
                raise ValueError(f"invalid partition {tp!r}")
        for topic in sorted({tp.topic for tp in tps}):
            meta = self._metadata.get(topic, timeout_s=self._api_timeout_s)
            missing = [tp.partition for tp in tps if tp.topic == topic and tp.partition >= len(meta.partitions)]
            if missing:
                self._metadata.refresh([topic], strict=True)
                meta = self._metadata.get(topic)
                missing = [p for p in missing if p >= len(meta.partitions)]
            if missing:
                raise UnknownTopicOrPartitionError(f"topic {topic!r} has {len(meta.partitions)} partitions; "
                                                   f"no partition {missing}", topic=topic, partitions=missing)
        self._fetcher.assign(tps)
        self._iter_records.clear()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads. A group member reports only what it owns in the group's
        current generation (nothing once it learns its generation is gone)."""
        self._check_open()
        assigned = set(self._fetcher.states)
        member = self._member()
        return assigned if member is None else member.reportable(assigned)

    def _member(self) -> GroupMember | None:
        """The group membership whose rules apply (``subscribe``); None for no group id or ``assign``."""
        return self._group if self._group is not None and self._group.subscribed else None

    def group_metadata(self) -> ConsumerGroupMetadata:
        """Kafka's ``groupMetadata()``: group id, generation id, member id and group instance id as this
        member knows them now."""
        self._check_open()
        if self._group is None:
            raise ValueError(f"group_metadata: {_NO_GROUP}")
        return self._group.metadata()

    def unsubscribe(self) -> None:
        """Drop the assignment (Kafka's ``unsubscribe`` also ends a manual assignment); a group member
        commits (auto-commit), runs ``on_revoke`` and leaves its group."""
        self._check_open()
        if self._group is not None and self._group.topics:
            self._auto_commit(force=True)
            if self._group.on_revoke is not None and self._group.owned:
                self._group.on_revoke(set(self._group.owned))
            self._group.close(leave=True)
            self._group.owned, self._group.topics, self._group.pattern = set(), set(), None
        self._fetcher.assign([])
        self._iter_records.clear()

    def subscribe(self, topics: Any = None, on_assign: Callable[[set[TopicPartition]], Any] | None = None,
                  on_revoke: Callable[[set[TopicPartition]], Any] | None = None, *, pattern: Any = None,
                  on_lost: Callable[[set[TopicPartition]], Any] | None = None) -> None:
        """Join the consumer group and read the partitions it assigns to this member. ``topics``: names (or
        a compiled ``re.Pattern``); ``pattern``: a regex every topic name must fully match (new matching
        topics are picked up within ``metadata_max_age_ms``). ``on_revoke(partitions)`` runs before
        partitions move away (commit there), ``on_assign(partitions)`` after new ones arrive;
        ``on_lost(partitions)`` (default: ``on_revoke``) when the member finds itself out of the group's
        generation — the partitions may be someone else's already, so committing there fails. All run
        inside ``poll`` on this thread."""
        self._check_open()
        if self._group is None:
            raise ValueError(f"subscribe: {_NO_GROUP}")
        if isinstance(topics, re.Pattern):
            topics, pattern = None, topics
        if pattern is not None:
            pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
            if not isinstance(pattern, re.Pattern) or topics:
                raise TypeError("pass either topics or a pattern (str or re.Pattern)")
            names: set[str] = set()
        else:
            if isinstance(topics, str) or not isinstance(topics, Iterable):
                raise TypeError("topics must be a list of topic names")
            names = set(topics)
            if not names or not all(isinstance(t, str) and t for t in names):
                raise ValueError("topics must be a non-empty list of topic names")
            for topic in sorted(names):
                self._metadata.get(topic, timeout_s=self._api_timeout_s)  # unknown topic: a clear error now
        for name, fn in (("on_assign", on_assign), ("on_revoke", on_revoke), ("on_lost", on_lost)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        self._fetcher.assign([])
        self._group.subscribe(names, pattern, on_assign, on_revoke, on_lost)

    def subscription(self) -> set[str]:
        self._check_open()
        return set() if self._group is None else self._group.subscribed_topics()

    def commit(self, offsets: Mapping[TopicPartition, Any] | None = None, asynchronous: bool = False) -> Any:
        """Commit ``offsets`` (tp → next offset to read, or (offset, metadata)); default: the current
        positions of every assigned partition. ``asynchronous``: returns a ``concurrent.futures.Future``.
        A commit from a member of a stale generation raises CommitFailedError."""
        self._check_open()
        if self._group is None:
            raise ValueError(f"commit: {_NO_GROUP}")
        prepared = self._commit_offsets(offsets)
        if not asynchronous:
            self._group.commit(prepared)
            return None
        future: Future = Future()

        def run() -> None:
            try:
                self._group.commit(prepared)
                future.set_result(None)
            except BaseException as exc:  # delivered through the future
                future.set_exception(exc)
        threading.Thread(target=run, daemon=True, name="raystream-async-commit").start()
        return future

    def _commit_offsets(self, offsets: Mapping[TopicPartition, Any] | None) -> dict[TopicPartition, tuple[int, str]]:
        if offsets is None:
            return {tp: (s.position, "") for tp, s in self._fetcher.states.items() if s.position is not None}
        if not isinstance(offsets, Mapping):
            raise TypeError("offsets must be a dict of TopicPartition -> offset")
        out = {}
        for tp, value in offsets.items():
            tp = _check_tp(tp)
            offset, metadata = value if isinstance(value, tuple) else (value, "")
            _check_int(f"offset of {tp}", offset, 0)
            if not isinstance(metadata, str):
                raise TypeError("commit metadata must be a str")
            out[tp] = (offset, metadata)
        return out

    def committed(self, partitions: Any, timeout: float | None = None) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None where nothing was committed)."""
        self._check_open()
        if self._group is None:
            raise ValueError(f"committed: {_NO_GROUP}")
        tps = _tp_list(partitions)
        timeout = _check_timeout("timeout", timeout)
        found = self._group.committed(tps, self._api_timeout_s if timeout is None else timeout)
        return {tp: (found[tp][0] if tp in found else None) for tp in tps}

    def _auto_commit(self, force: bool = False, partitions: set[TopicPartition] | None = None) -> None:
        """Auto-commit the positions (what earlier polls returned) when due, or now with ``force``."""
        if self._group is None or not self.enable_auto_commit:
            return
        now = time.monotonic()
        if not force and now - self._last_auto_commit < self._auto_commit_s:
            return
        self._last_auto_commit = now
        offsets = {tp: (s.position, "") for tp, s in self._fetcher.states.items()
                   if s.position is not None and (partitions is None or tp in partitions)}
        if not offsets:
            return
        try:
            self._group.commit(offsets)
        except RaystreamError as exc:  # as Kafka: logged; the next rebalance sorts the generation out
            log.warning("auto-commit of %d offsets for group %s failed: %s", len(offsets), self.group_id, exc)

    def _apply_group_assignment(self, assignment: list[TopicPartition], added: list[TopicPartition]) -> None:
        """The group's decision: read ``assignment``; ``added`` partitions start at the committed offset
        (else at ``auto_offset_reset``)."""
        self._fetcher.assign(assignment)
        self._iter_records.clear()
        if not added:
            return
        for topic in sorted({tp.topic for tp in added}):
            self._metadata.get(topic, timeout_s=self._api_timeout_s)
        committed = self._group.committed(added, self._api_timeout_s) if self._group is not None else {}
        for tp in added:
            if tp in committed:
                self._fetcher.seek(tp, committed[tp][0])

    # -- polling ---------------------------------------------------------------------------------------------
    def poll(self, timeout: float = 1.0, max_records: int | None = None) -> list[Record]:
        """Up to ``max_records`` (default ``max_poll_records``) records, waiting up to ``timeout`` s for
        some. Headers are lists of ``(key, value)`` tuples."""
        self._check_open()
        timeout = _check_timeout("timeout", timeout)
        if max_records is not None:
            _check_int("max_records", max_records, 1)
        self._fetcher.columns = {}
        self._fetcher.row_filter = None
        records: list[Record] = []
        for tp, batch in self._poll(timeout, max_records or self.max_poll_records):
            meta = self._metadata.get(tp.topic)
            records.extend(to_records(tp, batch, meta, self._key_deserializer, self._value_deserializer))
        return records

    def poll_arrow(self, timeout: float = 1.0, columns: list[str] | None = None,
                   max_records: int | None = None, filter: Any = None) -> pa.Table:  # noqa: A002 - SPEC name
        """The buffered records as one ``pyarrow.Table`` — ``topic`` (dictionary-encoded), ``partition``
        (int32), ``offset``, ``timestamp`` (int64 ms), then the user columns (``columns``: a selection,
        fetched alone from the partitions; None: all). Returns every buffered row unless ``max_records``
        caps it (``max_poll_records`` does not apply: the fetch sizes bound it). ``filter``: a
        ``pyarrow.compute.Expression`` over the user columns (and ``_offset`` / ``_timestamp``), evaluated
        inside the partition replicas, so rows it rejects never cross Ray; positions still move past them."""
        self._check_open()
        timeout = _check_timeout("timeout", timeout)
        if max_records is not None:
            _check_int("max_records", max_records, 1)
        if filter is not None and not isinstance(filter, pc.Expression):
            raise TypeError(f"filter must be a pyarrow.compute.Expression, got {type(filter).__name__}")
        self._fetcher.row_filter = filter
        selection = self._selection(columns)
        metas = {tp.topic: self._metadata.get(tp.topic) for tp in self._fetcher.states}
        self._fetcher.columns = ({} if selection is None else
                                 {t: tuple(c for c in selection if c in user_schema(m).names)
                                  for t, m in metas.items()})
        pieces = [to_arrow(tp, batch, self._fetcher.columns.get(tp.topic))
                  for tp, batch in self._poll(timeout, max_records)]
        return arrow_table(pieces, output_schema(list(metas.values()), selection))

    def _selection(self, columns: Any) -> tuple[str, ...] | None:
        wanted = requested_columns(columns)
        if wanted is None:
            return None
        known = set()
        for topic in {tp.topic for tp in self._fetcher.states}:
            known.update(user_schema(self._metadata.get(topic)).names)
        unknown = [c for c in wanted if c not in known]
        if unknown and self._fetcher.states:
            raise ValueError(f"unknown columns {unknown}; the assigned topics have {sorted(known)}")
        return wanted

    def _poll(self, timeout: float | None, max_records: int | None) -> list[tuple[TopicPartition, pa.RecordBatch]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        fetcher = self._fetcher
        self._auto_commit()
        group = self._member()
        while True:
            if group is not None:
                group.before_poll(self, deadline)  # rejoins (and runs the callbacks) when a rebalance is due
            fetcher.reset_positions(0.0)  # sends or takes in list_offset requests; never waits here
            fetcher.collect()
            # A group member hands out records only while it surely owns their partitions (client.group).
            pieces = fetcher.take(max_records) if group is None or group.may_deliver() else []
            fetcher.send_fetches()  # the prefetch: travels while the caller processes ``pieces``
            if pieces:
                return pieces
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            fetcher.wait(self._api_timeout_s if remaining is None else remaining,
                         also=() if group is None else group.wake_futures())

    # -- positions -------------------------------------------------------------------------------------------
    def _assigned(self, tp: Any) -> TopicPartition:
        tp = _check_tp(tp)
        if tp not in self._fetcher.states:
            raise ValueError(f"partition {tp} is not assigned to this consumer")
        return tp

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (data already fetched for it is dropped)."""
        self._check_open()
        tp = self._assigned(tp)
        _check_int("offset", offset, 0)
        self._fetcher.seek(tp, offset)
        self._iter_records.clear()

    def seek_to_beginning(self, partitions: Any = None) -> None:
        """Move to the log start offset of ``partitions`` (default: all assigned), lazily as Kafka does."""
        self._seek_to(partitions, EARLIEST)

    def seek_to_end(self, partitions: Any = None) -> None:
        """Move to the high watermark of ``partitions`` (default: all assigned), lazily as Kafka does."""
        self._seek_to(partitions, LATEST)

    def _seek_to(self, partitions: Any, spec: int) -> None:
        self._check_open()
        tps = list(self._fetcher.states) if partitions is None else [self._assigned(tp) for tp in _tp_list(partitions)]
        for tp in tps:
            self._fetcher.request_reset(tp, spec)
        self._iter_records.clear()

    def position(self, tp: TopicPartition, timeout: float | None = None) -> int:
        """The offset of the next record ``poll`` will return for ``tp`` (resolving a pending reset)."""
        self._check_open()
        tp = self._assigned(tp)
        timeout = _check_timeout("timeout", timeout)
        timeout = self._api_timeout_s if timeout is None else timeout
        if not self._fetcher.reset_positions(timeout, [tp]):
            raise RequestTimeoutError(f"position of {tp} not found within {timeout} s")
        position = self._fetcher.states[tp].position
        assert position is not None
        return position

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's high watermark as of the last fetch (None before any)."""
        self._check_open()
        return self._fetcher.states[self._assigned(tp)].high_watermark

    def beginning_offsets(self, partitions: Iterable[TopicPartition], timeout: float | None = None
                          ) -> dict[TopicPartition, int]:
        return self._list_offsets(partitions, EARLIEST, timeout)

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float | None = None
                    ) -> dict[TopicPartition, int]:
        """The high watermark of each partition (the offset the next record will get)."""
        return self._list_offsets(partitions, LATEST, timeout)

    def _list_offsets(self, partitions: Any, spec: int, timeout: Any) -> dict[TopicPartition, int]:
        self._check_open()
        tps = _tp_list(partitions)
        timeout = _check_timeout("timeout", timeout)
        self._load_metadata(tps)
        return self._fetcher.list_offsets({tp: spec for tp in tps}, self._api_timeout_s if timeout is None else timeout)

    def offsets_for_times(self, timestamps: Mapping[TopicPartition, int], timeout: float | None = None
                          ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the earliest offset whose timestamp is >= the given one (ms), with that
        record's timestamp; None when there is no such record."""
        self._check_open()
        if not isinstance(timestamps, Mapping):
            raise TypeError("timestamps must be a mapping of TopicPartition -> timestamp ms")
        for tp, ts in timestamps.items():
            _check_tp(tp)
            _check_int(f"timestamp for {tp}", ts, 0)
        timeout = _check_timeout("timeout", timeout)
        timeout = self._api_timeout_s if timeout is None else timeout
        self._load_metadata(list(timestamps))
        offsets = self._fetcher.list_offsets(dict(timestamps), timeout)
        return {tp: (None if offsets[tp] < 0 else OffsetAndTimestamp(offsets[tp], self._timestamp_at(tp, offsets[tp],
                                                                                                   timeout)))
                for tp in timestamps}

    def _timestamp_at(self, tp: TopicPartition, offset: int, timeout: float) -> int:
        leader = self._metadata.leader(tp)
        if leader is None:
            return -1
        try:
            result = self._transport.fetch(tp, leader[0], offset, 1, 0, 0, [], leader[1]).result(timeout)
        except Exception as exc:  # the offset is the answer that matters; its timestamp is a courtesy
            log.debug("timestamp of %s@%d unavailable: %s", tp, offset, exc)
            return -1
        for batch in result.batches:
            if batch.num_rows:
                return batch.column(TIMESTAMP_COLUMN)[0].as_py()
        return -1

    def _load_metadata(self, tps: list[TopicPartition]) -> None:
        for topic in sorted({tp.topic for tp in tps}):
            self._metadata.get(topic, timeout_s=self._api_timeout_s)

    # -- flow control ----------------------------------------------------------------------------------------
    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching (and returning) these partitions until ``resume``; buffered data is kept."""
        self._check_open()
        for tp in _tp_list(partitions):
            self._fetcher.states[self._assigned(tp)].paused = True

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._check_open()
        for tp in _tp_list(partitions):
            self._fetcher.states[self._assigned(tp)].paused = False

    def paused(self) -> set[TopicPartition]:
        self._check_open()
        return {tp for tp, state in self._fetcher.states.items() if state.paused}

    # -- topics ----------------------------------------------------------------------------------------------
    def topics(self) -> set[str]:
        self._check_open()
        return set(self._transport.list_topics(timeout_s=self._api_timeout_s))

    def partitions_for_topic(self, topic: str) -> set[int]:
        self._check_open()
        if not isinstance(topic, str):
            raise TypeError("topic must be a str")
        return set(range(len(self._metadata.get(topic, timeout_s=self._api_timeout_s).partitions)))

    # -- lifecycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop consuming; fetches in flight are abandoned. Idempotent."""
        if self._closed:
            return
        if self._group is not None:
            self._auto_commit(force=True)
            self._group.close()
        self._closed = True
        self._fetcher.assign([])
        self._iter_records.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("consumer is closed")

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> Record:
        """The next record, polling as needed; stops after ``consumer_timeout_ms`` without one (default:
        never) or once the consumer is closed."""
        deadline = None if self._consumer_timeout_s is None else time.monotonic() + self._consumer_timeout_s
        while not self._iter_records:
            if self._closed:
                raise StopIteration
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise StopIteration
            self._iter_records.extend(self.poll(min(remaining, 1.0)))
        return self._iter_records.popleft()
