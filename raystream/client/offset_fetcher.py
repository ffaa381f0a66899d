"""The consumer's offset queries (Kafka's ``OffsetFetcher``): ``beginning_offsets``, ``end_offsets`` and
``offsets_for_times``, answered by the partitions' leaders through :class:`ListOffsets` on the
consumer's metadata cache. (Position resets send their own non-blocking requests, in the fetcher.)

Not thread-safe: the consumer's user thread owns it (it shares the consumer's metadata cache).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping

from raystream.client.base import BaseTransport
from raystream.client.list_offsets import CachedLeaders, ListOffsets
from raystream.client.metadata import MetadataCache
from raystream.errors import RequestTimeoutError
from raystream.protocol import TopicPartition
from raystream.record import TIMESTAMP_COLUMN

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OffsetAndTimestamp:
    """Answer of ``offsets_for_times``: the first offset whose timestamp is >= the one asked, and the
    timestamp of that record."""

    offset: int
    timestamp: int


class OffsetFetcher:
    """``read_committed``: "latest" is the last stable offset (the consumer's isolation level)."""

    def __init__(self, transport: BaseTransport, metadata: MetadataCache, *, retry_backoff_ms: int,
                 read_committed: bool, refresh_metadata: Callable[[Iterable[TopicPartition]], None]) -> None:
        self.transport = transport
        self.metadata = metadata
        self.read_committed = read_committed
        self._list_offsets = ListOffsets(transport, CachedLeaders(metadata, refresh_metadata),
                                         retry_backoff_s=retry_backoff_ms / 1000)

    def list_offsets(self, specs: Mapping[TopicPartition, int], timeout_s: float) -> dict[TopicPartition, int]:
        """``list_offset`` on each partition's leader, concurrently, retrying retriable errors until
        ``timeout_s``; then RequestTimeoutError. A non-retriable error is raised as it is."""
        result = self._list_offsets.run(specs, timeout_s, self.read_committed)
        error = result.first_error()
        if error is not None:
            raise error
        if result.unanswered:
            raise RequestTimeoutError(f"offsets of {sorted(map(str, result.unanswered))} not found within "
                                      f"{timeout_s:.3f} s")
        return result.offsets

    def offsets_for_times(self, timestamps: Mapping[TopicPartition, int], timeout_s: float
                          ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        offsets = self.list_offsets(dict(timestamps), timeout_s)
        return {tp: (None if offsets[tp] < 0 else
                     OffsetAndTimestamp(offsets[tp], self._timestamp_at(tp, offsets[tp], timeout_s)))
                for tp in timestamps}

    def _timestamp_at(self, tp: TopicPartition, offset: int, timeout_s: float) -> int:
        leader = self.metadata.leader(tp)
        if leader is None:
            return -1
        try:
            result = self.transport.fetch(tp, leader[0], offset, 1, 0, 0, [], leader[1]).result(timeout_s)
        except Exception as exc:  # the offset is the answer that matters; its timestamp is a courtesy
            log.debug("timestamp of %s@%d unavailable: %s", tp, offset, exc)
            return -1
        for batch in result.batches:
            if batch.num_rows:
                return batch.column(TIMESTAMP_COLUMN)[0].as_py()
        return -1
