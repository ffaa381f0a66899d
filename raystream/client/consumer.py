"""``Consumer``: reads records of assigned partitions — chosen by ``assign`` (manual) or by the consumer group
(``subscribe``; membership, heartbeats and rebalances in :mod:`raystream.client.group`).

``poll`` returns up to ``max_poll_records`` :class:`~raystream.protocol.Record` objects (headers as a list
of ``(key, value)`` tuples, as kafka-python); ``poll_arrow`` returns a ``pyarrow.Table`` without converting
anything to Python. This class is the façade; the parts are Kafka's: the assigned partitions, their
positions and pause flags in :mod:`raystream.client.subscription_state`; fetching, prefetching and
position resets in :mod:`raystream.client.fetcher`; ``beginning_offsets`` / ``end_offsets`` /
``offsets_for_times`` in :mod:`raystream.client.offset_fetcher`; the configuration checks in
:mod:`raystream.client.consumer_config`.

Defaults are Kafka's except ``max_partition_fetch_bytes``: 16 MiB (Kafka 1 MiB), as every fetch is one
actor call with a fixed cost of milliseconds (see :data:`raystream.config.DATA_PATH_BYTES`).

Not thread-safe (like Kafka's consumer): use one consumer from one thread at a time.
"""

from __future__ import annotations

import logging
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
from raystream.client.consumer_config import (
    ConsumerConfig,
    check_int,
    check_poll_args,
    check_timeout,
    check_tp,
    commit_offsets,
    subscription_args,
    tp_list,
)
from raystream.client.convert import (
    arrow_table,
    checked_selection,
    output_schema,
    to_arrow,
    to_records,
    user_schema,
)
from raystream.client.fetcher import Fetcher
from raystream.client.group import DEFAULT_ASSIGNORS, ConsumerGroupMetadata, GroupMember
from raystream.client.metadata import MetadataCache
from raystream.client.offset_fetcher import OffsetAndTimestamp, OffsetFetcher
from raystream.client.subscription_state import SubscriptionState
from raystream.config import DATA_PATH_BYTES
from raystream.errors import ClosedError, RaystreamError, RequestTimeoutError, UnknownTopicOrPartitionError
from raystream.protocol import EARLIEST, LATEST, Record, TopicPartition

log = logging.getLogger(__name__)

_NO_GROUP = "this needs a consumer with a group_id (Kafka: InvalidGroupIdException)"


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
                 fetch_max_bytes: int = 52_428_800, max_partition_fetch_bytes: int = DATA_PATH_BYTES,
                 request_timeout_ms: int = 30_000, retry_backoff_ms: int = 100,
                 metadata_max_age_ms: int = 300_000, default_api_timeout_ms: int = 60_000,
                 consumer_timeout_ms: int | None = None,
                 key_deserializer: Callable[[bytes], Any] | None = None,
                 value_deserializer: Callable[[bytes], Any] | None = None, client_id: str | None = None,
                 group_instance_id: str | None = None,
                 partition_assignment_strategy: Iterable[str] = DEFAULT_ASSIGNORS,
                 cluster: Any = None, transport: BaseTransport | None = None) -> None:
        config = ConsumerConfig(  # checks every argument before anything connects
            group_id=group_id, auto_offset_reset=auto_offset_reset, enable_auto_commit=enable_auto_commit,
            auto_commit_interval_ms=auto_commit_interval_ms, isolation_level=isolation_level,
            session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms, max_poll_records=max_poll_records,
            fetch_min_bytes=fetch_min_bytes, fetch_max_wait_ms=fetch_max_wait_ms, fetch_max_bytes=fetch_max_bytes,
            max_partition_fetch_bytes=max_partition_fetch_bytes, request_timeout_ms=request_timeout_ms,
            retry_backoff_ms=retry_backoff_ms, metadata_max_age_ms=metadata_max_age_ms,
            default_api_timeout_ms=default_api_timeout_ms, consumer_timeout_ms=consumer_timeout_ms,
            key_deserializer=key_deserializer, value_deserializer=value_deserializer, client_id=client_id,
            group_instance_id=group_instance_id, partition_assignment_strategy=partition_assignment_strategy)
        self._transport = context.resolve(cluster, transport)
        self._config = config
        self.group_id = group_id
        self.client_id = client_id
        self.enable_auto_commit = bool(enable_auto_commit)
        self.isolation_level = isolation_level
        self.max_poll_records = max_poll_records
        self._api_timeout_s = config.api_timeout_s
        self._consumer_timeout_s = config.consumer_timeout_s
        self._metadata = MetadataCache(self._transport, request_timeout_ms=request_timeout_ms,
                                       retry_backoff_ms=retry_backoff_ms, max_age_ms=metadata_max_age_ms)
        self._subscriptions = SubscriptionState()
        self._fetcher = Fetcher(self._transport, self._metadata, self._subscriptions,
                                auto_offset_reset=auto_offset_reset, fetch_min_bytes=fetch_min_bytes,
                                fetch_max_wait_ms=fetch_max_wait_ms, fetch_max_bytes=fetch_max_bytes,
                                max_partition_fetch_bytes=max_partition_fetch_bytes,
                                request_timeout_ms=request_timeout_ms, retry_backoff_ms=retry_backoff_ms)
        self._fetcher.read_committed = config.read_committed
        self._offsets = OffsetFetcher(self._transport, self._metadata, retry_backoff_ms=retry_backoff_ms,
                                      read_committed=config.read_committed,
                                      refresh_metadata=self._fetcher.refresh_metadata)
        self._iter_records: deque[Record] = deque()
        self._closed = False
        self._auto_commit_s = auto_commit_interval_ms / 1000
        self._last_auto_commit = time.monotonic()
        self._group = None if group_id is None else GroupMember(
            self._transport, group_id, client_id=client_id, group_instance_id=group_instance_id,
            session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms, assignors=config.assignors,
            retry_backoff_ms=retry_backoff_ms, metadata_max_age_ms=metadata_max_age_ms)

    # -- assignment ------------------------------------------------------------------------------------------
    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read exactly these partitions (replacing any previous assignment; positions of partitions kept
        are kept). Raises UnknownTopicOrPartitionError for a partition that does not exist."""
        self._check_open()
        tps = list(dict.fromkeys(tp_list(partitions)))
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
        self._subscriptions.assign(tps)
        self._iter_records.clear()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads. A group member reports only what it owns in the group's
        current generation (nothing once it learns its generation is gone)."""
        self._check_open()
        assigned = self._subscriptions.assigned()
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
        self._subscriptions.assign([])
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
        names, pattern = subscription_args(topics, pattern)
        for topic in sorted(names):
            self._metadata.get(topic, timeout_s=self._api_timeout_s)  # unknown topic: a clear error now
        for name, fn in (("on_assign", on_assign), ("on_revoke", on_revoke), ("on_lost", on_lost)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        self._subscriptions.assign([])
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
        prepared = commit_offsets(offsets, self._subscriptions.positions())
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

    def committed(self, partitions: Any, timeout: float | None = None) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each partition (None where nothing was committed)."""
        self._check_open()
        if self._group is None:
            raise ValueError(f"committed: {_NO_GROUP}")
        tps = tp_list(partitions)
        timeout = check_timeout("timeout", timeout)
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
        offsets = {tp: (position, "") for tp, position in self._subscriptions.positions(partitions).items()}
        if not offsets:
            return
        try:
            self._group.commit(offsets)
        except RaystreamError as exc:  # as Kafka: logged; the next rebalance sorts the generation out
            log.warning("auto-commit of %d offsets for group %s failed: %s", len(offsets), self.group_id, exc)

    def _apply_group_assignment(self, assignment: list[TopicPartition], added: list[TopicPartition]) -> None:
        """The group's decision: read ``assignment``; ``added`` partitions start at the committed offset
        (else at ``auto_offset_reset``)."""
        self._subscriptions.assign(assignment)
        self._iter_records.clear()
        if not added:
            return
        for topic in sorted({tp.topic for tp in added}):
            self._metadata.get(topic, timeout_s=self._api_timeout_s)
        committed = self._group.committed(added, self._api_timeout_s) if self._group is not None else {}
        for tp in added:
            if tp in committed:
                self._subscriptions.seek(tp, committed[tp][0])

    # -- polling ---------------------------------------------------------------------------------------------
    def poll(self, timeout: float = 1.0, max_records: int | None = None) -> list[Record]:
        """Up to ``max_records`` (default ``max_poll_records``) records, waiting up to ``timeout`` s for
        some. Headers are lists of ``(key, value)`` tuples."""
        self._check_open()
        timeout = check_poll_args(timeout, max_records)
        self._fetcher.columns = {}
        self._fetcher.row_filter = None
        records: list[Record] = []
        for tp, batch in self._poll(timeout, max_records or self.max_poll_records):
            meta = self._metadata.get(tp.topic)
            records.extend(to_records(tp, batch, meta, self._config.key_deserializer, self._config.value_deserializer))
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
        timeout = check_poll_args(timeout, max_records)
        if filter is not None and not isinstance(filter, pc.Expression):
            raise TypeError(f"filter must be a pyarrow.compute.Expression, got {type(filter).__name__}")
        self._fetcher.row_filter = filter
        metas = {tp.topic: self._metadata.get(tp.topic) for tp in self._subscriptions.states}
        selection = checked_selection(columns, [user_schema(m) for m in metas.values()])
        self._fetcher.columns = ({} if selection is None else
                                 {t: tuple(c for c in selection if c in user_schema(m).names)
                                  for t, m in metas.items()})
        pieces = [to_arrow(tp, batch, self._fetcher.columns.get(tp.topic))
                  for tp, batch in self._poll(timeout, max_records)]
        return arrow_table(pieces, output_schema(list(metas.values()), selection))

    def poll_arrow_partitions(self, timeout: float = 1.0, max_records: int | None = None
                              ) -> dict[TopicPartition, pa.Table]:
        """The buffered records per partition (Kafka's ``ConsumerRecords.records(tp)``, columnar): each
        table holds ``topic``, ``partition``, ``offset``, ``timestamp`` and every user column of its topic, so
        topics of different schemas can be read by one consumer (``poll_arrow`` needs one schema for all).
        Partitions appear in the order their records were fetched; a table's offsets ascend."""
        self._check_open()
        timeout = check_poll_args(timeout, max_records)
        self._fetcher.row_filter = None
        self._fetcher.columns = {}
        pieces: dict[TopicPartition, list[pa.RecordBatch]] = {}
        for tp, batch in self._poll(timeout, max_records):
            pieces.setdefault(tp, []).append(to_arrow(tp, batch, None))
        return {tp: pa.Table.from_batches(batches) for tp, batches in pieces.items()}

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
        tp = check_tp(tp)
        if not self._subscriptions.is_assigned(tp):
            raise ValueError(f"partition {tp} is not assigned to this consumer")
        return tp

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (data already fetched for it is dropped)."""
        self._check_open()
        tp = self._assigned(tp)
        check_int("offset", offset, 0)
        self._subscriptions.seek(tp, offset)
        self._iter_records.clear()

    def seek_to_beginning(self, partitions: Any = None) -> None:
        """Move to the log start offset of ``partitions`` (default: all assigned), lazily as Kafka does."""
        self._seek_to(partitions, EARLIEST)

    def seek_to_end(self, partitions: Any = None) -> None:
        """Move to the high watermark of ``partitions`` (default: all assigned), lazily as Kafka does."""
        self._seek_to(partitions, LATEST)

    def _seek_to(self, partitions: Any, spec: int) -> None:
        self._check_open()
        tps = list(self._subscriptions.states) if partitions is None else [self._assigned(tp) for tp in tp_list(partitions)]
        for tp in tps:
            self._subscriptions.request_reset(tp, spec)
        self._iter_records.clear()

    def position(self, tp: TopicPartition, timeout: float | None = None) -> int:
        """The offset of the next record ``poll`` will return for ``tp`` (resolving a pending reset)."""
        self._check_open()
        tp = self._assigned(tp)
        timeout = check_timeout("timeout", timeout)
        timeout = self._api_timeout_s if timeout is None else timeout
        if not self._fetcher.reset_positions(timeout, [tp]):
            raise RequestTimeoutError(f"position of {tp} not found within {timeout} s")
        position = self._subscriptions.position(tp)
        assert position is not None
        return position

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's high watermark as of the last fetch (None before any)."""
        self._check_open()
        return self._subscriptions.high_watermark(self._assigned(tp))

    def beginning_offsets(self, partitions: Iterable[TopicPartition], timeout: float | None = None
                          ) -> dict[TopicPartition, int]:
        return self._list_offsets(partitions, EARLIEST, timeout)

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float | None = None
                    ) -> dict[TopicPartition, int]:
        """The high watermark of each partition (the offset the next record will get)."""
        return self._list_offsets(partitions, LATEST, timeout)

    def _list_offsets(self, partitions: Any, spec: int, timeout: Any) -> dict[TopicPartition, int]:
        self._check_open()
        tps = tp_list(partitions)
        timeout = check_timeout("timeout", timeout)
        self._load_metadata(tps)
        return self._offsets.list_offsets({tp: spec for tp in tps}, self._api_timeout_s if timeout is None else timeout)

    def offsets_for_times(self, timestamps: Mapping[TopicPartition, int], timeout: float | None = None
                          ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the earliest offset whose timestamp is >= the given one (ms), with that
        record's timestamp; None when there is no such record."""
        self._check_open()
        if not isinstance(timestamps, Mapping):
            raise TypeError("timestamps must be a mapping of TopicPartition -> timestamp ms")
        for tp, ts in timestamps.items():
            check_tp(tp)
            check_int(f"timestamp for {tp}", ts, 0)
        timeout = check_timeout("timeout", timeout)
        self._load_metadata(list(timestamps))
        return self._offsets.offsets_for_times(timestamps, self._api_timeout_s if timeout is None else timeout)

    def _load_metadata(self, tps: list[TopicPartition]) -> None:
        for topic in sorted({tp.topic for tp in tps}):
            self._metadata.get(topic, timeout_s=self._api_timeout_s)

    # -- flow control ----------------------------------------------------------------------------------------
    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching (and returning) these partitions until ``resume``; buffered data is kept."""
        self._check_open()
        for tp in tp_list(partitions):
            self._subscriptions.set_paused(self._assigned(tp), True)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._check_open()
        for tp in tp_list(partitions):
            self._subscriptions.set_paused(self._assigned(tp), False)

    def paused(self) -> set[TopicPartition]:
        self._check_open()
        return self._subscriptions.paused()

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
        self._subscriptions.assign([])
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
