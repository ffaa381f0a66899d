"""The consumer's fetching: per assigned partition (its state in
:class:`~raystream.client.subscription_state.SubscriptionState`), buffered fetch results, the one fetch in
flight, and position resets.

Prefetching: a partition gets a new fetch whenever it has none in flight and at most one completed fetch
buffered, so the next fetch is already travelling while the user processes the current records (at most
two buffered results, or one plus one in flight, per partition). A fetch starts where the buffered data
ends. ``seek`` (and any position reset) bumps the partition's *epoch*: buffered data is dropped at once,
and the fetch in flight is left to finish and discarded when its epoch turns out stale (as Kafka's
fetcher does, still at most one fetch per partition).

Errors: OffsetOutOfRangeError resets the position per ``auto_offset_reset`` (or, with ``"none"``, is
raised from ``poll``); retriable errors back off ``retry_backoff_ms`` (``invalid_metadata`` ones also
refresh metadata); other errors are raised from the next ``poll``.

Not thread-safe: the consumer's (single) user thread owns it; transport futures complete on other threads
and are only looked at from this one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.client.base import BaseTransport
from raystream.client.list_offsets import send_list_offset
from raystream.client.metadata import MetadataCache
from raystream.client.offset_spec import RESET_SPECS
from raystream.client.subscription_state import SubscriptionState, TopicPartitionState
from raystream.errors import NoOffsetForPartitionError, OffsetOutOfRangeError
from raystream.protocol import EARLIEST, FetchResult, TopicPartition
from raystream.record import OFFSET_COLUMN

log = logging.getLogger(__name__)

@dataclasses.dataclass(eq=False)
class _Fetched:
    """One completed fetch, consumed from the front."""

    batches: deque[pa.RecordBatch]
    next_offset: int
    columns: tuple[str, ...] | None  # user columns it carries (None: all)
    row_filter: Any = None  # the filter the replica applied (None: every row)

    def covers(self, wanted: tuple[str, ...] | None, row_filter: Any = None) -> bool:
        same_rows = (row_filter is None and self.row_filter is None) or (
            row_filter is not None and self.row_filter is not None and row_filter.equals(self.row_filter))
        return same_rows and (self.columns is None or (wanted is not None and set(wanted) <= set(self.columns)))


@dataclasses.dataclass(eq=False)
class _InFlight:
    future: Future
    offset: int
    epoch: int
    columns: tuple[str, ...] | None
    deadline: float
    row_filter: Any = None


class Fetcher:
    """Fetches for the partitions of ``subscriptions`` (which it shares with the consumer façade)."""

    def __init__(self, transport: BaseTransport, metadata: MetadataCache, subscriptions: SubscriptionState, *,
                 auto_offset_reset: str,
                 fetch_min_bytes: int, fetch_max_wait_ms: int, fetch_max_bytes: int,
                 max_partition_fetch_bytes: int, request_timeout_ms: int, retry_backoff_ms: int) -> None:
        self.transport = transport
        self.metadata = metadata
        self.policy = RESET_SPECS[auto_offset_reset]
        self.min_bytes = fetch_min_bytes
        self.max_wait_ms = fetch_max_wait_ms
        self.max_bytes = min(max_partition_fetch_bytes, fetch_max_bytes)
        self.request_timeout_s = request_timeout_ms / 1000
        self.backoff_s = retry_backoff_ms / 1000
        self.subscriptions = subscriptions
        self.read_committed = False  # isolation_level="read_committed": fetch below the LSO, no aborted data
        self.columns: dict[str, tuple[str, ...] | None] = {}  # per topic, for new fetches
        self.row_filter: Any = None  # a pyarrow.compute.Expression for new fetches (poll_arrow's filter)
        self._error: BaseException | None = None
        self._rotation = 0
        self._idle = threading.Event()  # waited on when nothing is in flight

    @property
    def states(self) -> dict[TopicPartition, TopicPartitionState]:
        """The assigned partitions' states (owned by ``subscriptions``; replaced on every assignment)."""
        return self.subscriptions.states

    # -- positions -------------------------------------------------------------------------------------------
    def reset_positions(self, timeout_s: float, tps: Iterable[TopicPartition] | None = None) -> bool:
        """Give positions to partitions that have none (per their pending reset, else the policy), waiting
        up to ``timeout_s``. The ``list_offset`` requests stay in flight across calls, so ``poll(0)`` in a
        loop gets there too. True when all of them (or of ``tps``) have a position; raises
        NoOffsetForPartitionError under policy ``"none"``."""
        states = [self.states[tp] for tp in tps] if tps is not None else list(self.states.values())
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            pending = [state for state in states if state.position is None and not self._advance_reset(state, now)]
            if not pending:
                return True
            remaining = deadline - now
            if remaining <= 0:
                return False
            futures = [s.resetting[0] for s in pending if s.resetting is not None]
            retry = [s.retry_at - now for s in pending if s.resetting is None]
            timeout = max(0.0, min([remaining] + retry))
            if futures:
                concurrent.futures.wait(futures, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
            else:
                self._idle.wait(timeout)
            self.refresh_metadata([s.tp for s in pending])

    def _advance_reset(self, state: TopicPartitionState, now: float) -> bool:
        """Move a position reset along (take in its answer, or send its request); True once positioned."""
        spec = state.reset if state.reset is not None else self.policy
        if spec is None:
            raise NoOffsetForPartitionError(f"no position for {state.tp} and auto_offset_reset='none'",
                                            topic=state.tp.topic, partition=state.tp.partition)
        if state.resetting is not None and state.resetting[0].done():
            future, epoch = state.resetting
            state.resetting = None
            if epoch == state.epoch:  # else a seek came in between: ask again
                exc = future.exception()
                if exc is None:
                    state.position, state.reset = future.result(), None
                    state.invalidate()
                    return True
                if not getattr(exc, "retriable", False):
                    state.retry_at = now + self.backoff_s
                    raise exc
                if getattr(exc, "invalid_metadata", False):
                    self.metadata.request_update(state.tp.topic)
                state.retry_at = now + self.backoff_s
        if state.resetting is None and state.retry_at <= now:
            leader = self.metadata.leader(state.tp)
            if leader is None:
                self.metadata.request_update(state.tp.topic)
                state.retry_at = now + self.backoff_s
            else:
                state.resetting = (self._list_offset(state.tp, leader[0], spec), state.epoch)
        return False

    def _list_offset(self, tp: TopicPartition, broker: int, spec: int):
        """ListOffsets as this consumer's isolation level sees them ("latest" is the LSO for read_committed)."""
        return send_list_offset(self.transport, tp, broker, spec, self.read_committed)

    def refresh_metadata(self, tps: Iterable[TopicPartition] | None = None) -> None:
        topics = {tp.topic for tp in (tps if tps is not None else self.states)}
        due, _ = self.metadata.due(time.monotonic(), topics)
        if due:
            try:
                self.metadata.refresh(due)
            except Exception as exc:  # the controller may be restarting: later
                log.warning("metadata refresh for %s failed: %s", due, exc)
                for topic in due:
                    self.metadata.request_update(topic)

    # -- fetching --------------------------------------------------------------------------------------------
    def send_fetches(self) -> None:
        now = time.monotonic()
        self.refresh_metadata()
        for state in self.states.values():
            if (state.paused or state.position is None or state.inflight is not None or len(state.buffer) > 1
                    or state.retry_at > now):
                continue
            leader = self.metadata.leader(state.tp)
            if leader is None:
                self.metadata.request_update(state.tp.topic)
                state.retry_at = now + self.backoff_s
                continue
            offset = state.buffer[-1].next_offset if state.buffer else state.position
            columns = self.columns.get(state.tp.topic)
            args = (state.tp, leader[0], offset, self.max_bytes, self.max_wait_ms, self.min_bytes,
                    None if columns is None else list(columns), leader[1])
            extra: dict[str, Any] = {} if self.row_filter is None else {"row_filter": self.row_filter}
            if self.read_committed:
                extra["read_committed"] = True
            future = self.transport.fetch(*args, **extra)
            state.inflight = _InFlight(future, offset, state.epoch, columns,
                                       now + self.max_wait_ms / 1000 + self.request_timeout_s, self.row_filter)

    def collect(self) -> None:
        """Take in finished fetches; raise an error kept for the user (once)."""
        now = time.monotonic()
        for state in self.states.values():
            request = state.inflight
            if request is None:
                continue
            if not request.future.done():
                if request.deadline <= now:
                    log.info("fetch of %s at offset %d timed out; retrying", state.tp, request.offset)
                    state.inflight = None
                continue
            state.inflight = None
            if request.epoch != state.epoch:
                continue  # the partition was seeked meanwhile
            exc = request.future.exception()
            if exc is None:
                self._store(state, request, request.future.result())
            else:
                self._on_error(state, request, exc, now)
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def _store(self, state: TopicPartitionState, request: _InFlight, result: FetchResult) -> None:
        state.high_watermark, state.log_start_offset = result.high_watermark, result.log_start_offset
        batches = deque(b for b in result.batches if b.num_rows)
        if batches:  # a log may answer from the start of a batch: drop rows before the fetch offset
            first = batches[0]
            offsets = first.column(OFFSET_COLUMN)
            if offsets[0].as_py() < request.offset:
                skip = int(np.searchsorted(offsets.to_numpy(), request.offset))
                batches[0] = first.slice(skip)
                if not batches[0].num_rows:
                    batches.popleft()
        if batches or result.next_offset > request.offset:
            state.buffer.append(_Fetched(batches, max(result.next_offset, request.offset), request.columns,
                                         request.row_filter))

    def _on_error(self, state: TopicPartitionState, request: _InFlight, exc: BaseException, now: float) -> None:
        if isinstance(exc, OffsetOutOfRangeError):
            if self.policy is None:
                self._error = exc
                state.retry_at = now + self.backoff_s
                return
            log.info("%s: offset %d out of range (log_start_offset=%s, log_end_offset=%s); resetting to %s",
                     state.tp, request.offset, getattr(exc, "log_start_offset", "?"),
                     getattr(exc, "log_end_offset", "?"), "earliest" if self.policy == EARLIEST else "latest")
            state.position, state.reset = None, None
            state.invalidate()
            return
        state.retry_at = now + self.backoff_s
        if getattr(exc, "invalid_metadata", False):
            self.metadata.request_update(state.tp.topic)
        if not getattr(exc, "retriable", False):
            self._error = exc
        else:
            log.debug("fetch of %s failed (will retry): %s", state.tp, exc)

    def wait(self, timeout_s: float, also: Iterable[Future] = ()) -> None:
        """Block until a fetch finishes, a backoff ends, one of ``also`` completes or ``timeout_s`` passes."""
        now = time.monotonic()
        futures = list(also) + [s.inflight.future for s in self.states.values() if s.inflight is not None]
        futures += [s.resetting[0] for s in self.states.values() if s.resetting is not None]
        retry = [s.retry_at for s in self.states.values() if s.retry_at > now and not s.paused]
        deadlines = [s.inflight.deadline for s in self.states.values() if s.inflight is not None]
        timeout_s = min([timeout_s] + [t - now for t in retry + deadlines])
        if futures:
            concurrent.futures.wait(futures, timeout=max(0.0, timeout_s), return_when=concurrent.futures.FIRST_COMPLETED)
        else:
            self._idle.wait(max(0.0, timeout_s))

    # -- handing data to the user ----------------------------------------------------------------------------
    def take(self, max_records: int | None) -> list[tuple[TopicPartition, pa.RecordBatch]]:
        """Up to ``max_records`` (None: all buffered) rows from unpaused partitions, advancing positions.
        Buffers lacking the columns now wanted (``self.columns``) are dropped and fetched again."""
        out: list[tuple[TopicPartition, pa.RecordBatch]] = []
        remaining = max_records
        states = list(self.states.values())
        if not states:
            return out
        start = self._rotation % len(states)
        self._rotation += 1
        for state in states[start:] + states[:start]:
            if state.paused or state.position is None:
                continue
            wanted = self.columns.get(state.tp.topic)
            while state.buffer and (remaining is None or remaining > 0):
                fetched = state.buffer[0]
                if not fetched.covers(wanted, self.row_filter):
                    state.invalidate()
                    break
                if fetched.batches:
                    batch = fetched.batches[0]
                    count = batch.num_rows if remaining is None else min(remaining, batch.num_rows)
                    piece = batch.slice(0, count)
                    if count == batch.num_rows:
                        fetched.batches.popleft()
                    else:
                        fetched.batches[0] = batch.slice(count)
                    state.position = piece.column(OFFSET_COLUMN)[count - 1].as_py() + 1
                    out.append((state.tp, piece))
                    if remaining is not None:
                        remaining -= count
                if not fetched.batches:
                    state.position = max(state.position, fetched.next_offset)
                    state.buffer.popleft()
            if remaining is not None and remaining <= 0:
                break
        return out
