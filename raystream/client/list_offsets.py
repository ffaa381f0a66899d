"""ListOffsets with retries, written once for the consumer, the admin client and Ray Data (Kafka's
``OffsetFetcher`` / admin ``ListOffsetsHandler``).

One round asks every pending partition's leader at once (EARLIEST, LATEST or a timestamp, as
:data:`raystream.protocol.EARLIEST` / ``LATEST``); an answer ends a partition, a non-retriable error ends
it as *failed*, a retriable one (NotLeader, LeaderNotAvailable, a timeout...) keeps it pending: after
``retry_backoff_s`` the leaders are looked up again and another round goes out, until ``timeout_s``. What
an unanswered partition means (an error, ``None``, a partial answer) is the caller's choice, so the result
keeps the three outcomes apart.

Where leaders come from differs per caller, so it is a :class:`LeaderLookup`: the consumer's metadata
cache (:class:`CachedLeaders`) or fresh metadata from the controller every round
(:class:`MetadataLeaders`, the admin client and Ray Data).

The loop is not specific to ListOffsets: any per-partition request to the leader whose answer is an int
and which is safe to send again can use it with its own ``send`` (the admin client's DeleteRecords does:
moving a log start offset to the same offset twice is a no-op).

Concurrency: a :class:`ListOffsets` holds no mutable state; ``run`` blocks the calling thread (transport
futures complete on other threads and are only read here) and may be called from several threads if the
lookup allows it (``MetadataLeaders`` does; ``CachedLeaders`` is its consumer's thread's).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Protocol

from raystream.client.base import BaseTransport
from raystream.client.metadata import MetadataCache
from raystream.errors import LeaderNotAvailableError, UnknownTopicOrPartitionError
from raystream.protocol import TopicMetadata, TopicPartition

log = logging.getLogger(__name__)


def send_list_offset(transport: BaseTransport, tp: TopicPartition, broker: int, spec: int,
                     read_committed: bool = False) -> Future[int]:
    """One ListOffsets request; ``read_committed``: "latest" is the last stable offset. (The argument is
    only passed when set, so transports that predate it keep working.)"""
    if read_committed:
        return transport.list_offset(tp, broker, spec, read_committed=True)
    return transport.list_offset(tp, broker, spec)


class LeaderLookup(Protocol):
    def leaders(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The leader broker of each partition (None: it has none now); may raise (unknown partition)."""

    def stale(self, tp: TopicPartition) -> None:
        """``tp``'s leader was missing or refused the request: look it up afresh before the next round."""

    def refresh(self, tps: Iterable[TopicPartition]) -> None:
        """Called before each retry round with the partitions still pending."""


class CachedLeaders:
    """Leaders from a consumer's :class:`MetadataCache`; ``refresh`` refreshes what the cache says is due."""

    def __init__(self, metadata: MetadataCache, refresh: Callable[[Iterable[TopicPartition]], None]) -> None:
        self.metadata = metadata
        self._refresh = refresh

    def leaders(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        out: dict[TopicPartition, int | None] = {}
        for tp in tps:
            leader = self.metadata.leader(tp)
            out[tp] = None if leader is None else leader[0]
        return out

    def stale(self, tp: TopicPartition) -> None:
        self.metadata.request_update(tp.topic)

    def refresh(self, tps: Iterable[TopicPartition]) -> None:
        self._refresh(tps)


class MetadataLeaders:
    """Leaders from fresh controller metadata every round (``get_metadata(topics)``); a partition the
    topic does not have raises UnknownTopicOrPartitionError at once."""

    def __init__(self, get_metadata: Callable[[list[str]], Mapping[str, TopicMetadata]]) -> None:
        self._get_metadata = get_metadata

    def leaders(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        metas = self._get_metadata(sorted({tp.topic for tp in tps}))
        out: dict[TopicPartition, int | None] = {}
        for tp in tps:
            meta = metas.get(tp.topic)
            state = None if meta is None else next((s for s in meta.partitions if s.partition == tp.partition),
                                                   None)
            if state is None:
                raise UnknownTopicOrPartitionError(f"no partition {tp}", topic=tp.topic)
            out[tp] = state.leader if state.leader >= 0 else None
        return out

    def stale(self, tp: TopicPartition) -> None:
        pass  # every round reads fresh metadata

    def refresh(self, tps: Iterable[TopicPartition]) -> None:
        pass


@dataclasses.dataclass
class ListOffsetsResult:
    offsets: dict[TopicPartition, int] = dataclasses.field(default_factory=dict)
    #: Partitions whose leader answered with a non-retriable error (not retried).
    failed: dict[TopicPartition, BaseException] = dataclasses.field(default_factory=dict)
    #: Partitions still unanswered at the deadline (or leaderless, without ``retry_leaderless``), with
    #: the last retriable error seen (None: the request was still in flight).
    unanswered: dict[TopicPartition, BaseException | None] = dataclasses.field(default_factory=dict)

    def first_error(self) -> BaseException | None:
        """The first failed partition's error, for callers that raise it."""
        return next(iter(self.failed.values()), None)


#: One request to a partition's leader: ``(transport, tp, broker, value, read_committed) -> Future[int]``.
PartitionRequest = Callable[[BaseTransport, TopicPartition, int, int, bool], "Future[int]"]


class ListOffsets:
    """ListOffsets of many partitions with retries. ``retry_backoff_s``: pause between rounds;
    ``retry_leaderless``: a partition without a leader is retried (else unanswered at once); ``send``: the
    request each partition's value goes out as (ListOffsets' by default; see the module docstring)."""

    def __init__(self, transport: BaseTransport, leaders: LeaderLookup, *, retry_backoff_s: float,
                 retry_leaderless: bool = True, send: PartitionRequest = send_list_offset) -> None:
        self.transport = transport
        self.leaders = leaders
        self.retry_backoff_s = retry_backoff_s
        self.retry_leaderless = retry_leaderless
        self.send = send

    def run(self, specs: Mapping[TopicPartition, int], timeout_s: float,
            read_committed: bool = False) -> ListOffsetsResult:
        """Offsets of ``specs`` (partition -> EARLIEST, LATEST or a timestamp ms), retrying for up to
        ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        result = ListOffsetsResult()
        pending = dict(specs)
        while pending:
            futures = self._send(pending, result, read_committed)
            concurrent.futures.wait(list(futures.values()), timeout=max(0.0, deadline - time.monotonic()))
            for tp, future in futures.items():
                self._take(tp, future, pending, result)
            if not pending or time.monotonic() + self.retry_backoff_s >= deadline:
                break
            time.sleep(self.retry_backoff_s)
            self.leaders.refresh(list(pending))
        return result

    def _send(self, pending: dict[TopicPartition, int], result: ListOffsetsResult,
              read_committed: bool) -> dict[TopicPartition, Future[int]]:
        leaders = self.leaders.leaders(list(pending))
        futures = {}
        for tp, spec in list(pending.items()):
            broker = leaders.get(tp)
            if broker is not None:
                futures[tp] = self.send(self.transport, tp, broker, spec, read_committed)
                continue
            result.unanswered[tp] = LeaderNotAvailableError(f"{tp} has no leader")
            if self.retry_leaderless:
                self.leaders.stale(tp)
            else:
                del pending[tp]
        return futures

    def _take(self, tp: TopicPartition, future: Future[int], pending: dict[TopicPartition, int],
              result: ListOffsetsResult) -> None:
        if not future.done():
            result.unanswered[tp] = None  # still travelling: asked again next round
            return
        exc = future.exception()
        if exc is None:
            result.offsets[tp] = int(future.result())
            result.unanswered.pop(tp, None)
            del pending[tp]
        elif not getattr(exc, "retriable", False):
            result.failed[tp] = exc
            result.unanswered.pop(tp, None)
            del pending[tp]
        else:
            log.debug("list offsets of %s: %s: %s", tp, type(exc).__name__, exc)
            result.unanswered[tp] = exc
            if getattr(exc, "invalid_metadata", False):
                self.leaders.stale(tp)
