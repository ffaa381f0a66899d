"""A client's cached view of topic metadata (partition counts, leaders, leader epochs, schemas).

Refreshed from the controller when a topic is first used, when a request failed with an error flagged
``invalid_metadata`` (``request_update``; at most once per ``retry_backoff_ms`` per topic), and every
``metadata_max_age_ms`` for topics in use (so new partitions are noticed). Thread-safe: one lock guards the
maps; controller calls are made outside it by the thread that needs them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from raystream.client.base import BaseTransport
from raystream.errors import UnknownTopicOrPartitionError
from raystream.protocol import TopicMetadata, TopicPartition

log = logging.getLogger(__name__)


class MetadataCache:
    def __init__(self, transport: BaseTransport, *, request_timeout_ms: int, retry_backoff_ms: int,
                 max_age_ms: int) -> None:
        self._transport = transport
        self._timeout_s = request_timeout_ms / 1000
        self._backoff_s = retry_backoff_ms / 1000
        self._max_age_s = max_age_ms / 1000
        self._lock = threading.Lock()
        self._topics: dict[str, TopicMetadata] = {}
        self._fetched_at: dict[str, float] = {}
        self._wanted: set[str] = set()  # topics whose refresh was requested

    # -- reads -----------------------------------------------------------------------------------------------
    def cached(self, topic: str) -> TopicMetadata | None:
        return self._topics.get(topic)  # one dict read is atomic: no lock on the send path

    def get(self, topic: str, timeout_s: float | None = None) -> TopicMetadata:
        """The topic's metadata, fetched from the controller if not cached (UnknownTopicOrPartitionError if
        the topic does not exist)."""
        meta = self.cached(topic)
        if meta is None:
            self.refresh([topic], timeout_s=timeout_s, strict=True)
            meta = self.cached(topic)
            if meta is None:
                raise UnknownTopicOrPartitionError(f"unknown topic {topic!r}", topic=topic)
        return meta

    def partition_count(self, topic: str) -> int:
        return len(self.get(topic).partitions)

    def leader(self, tp: TopicPartition) -> tuple[int, int] | None:
        """``(broker_id, leader_epoch)`` of the partition's leader, or None if unknown or offline."""
        with self._lock:
            meta = self._topics.get(tp.topic)
        if meta is None or tp.partition >= len(meta.partitions):
            return None
        state = meta.partitions[tp.partition]
        if state.leader < 0:
            return None
        return state.leader, state.leader_epoch

    # -- refreshes -------------------------------------------------------------------------------------------
    def request_update(self, topic: str) -> None:
        with self._lock:
            self._wanted.add(topic)

    def due(self, now: float, in_use: Iterable[str] = ()) -> tuple[list[str], float]:
        """Topics to refresh at ``now`` (monotonic seconds) and when the next one falls due."""
        out, next_at = [], float("inf")
        with self._lock:
            candidates = set(self._wanted)
            stale_at = {t: self._fetched_at.get(t, 0.0) + self._max_age_s for t in in_use}
            for topic in candidates:
                at = self._fetched_at.get(topic, 0.0) + self._backoff_s
                if at <= now:
                    out.append(topic)
                else:
                    next_at = min(next_at, at)
            for topic, at in stale_at.items():
                if topic in candidates:
                    continue
                if at <= now:
                    out.append(topic)
                else:
                    next_at = min(next_at, at)
        return sorted(out), next_at

    def refresh(self, topics: list[str], timeout_s: float | None = None, strict: bool = False) -> None:
        """Fetch ``topics`` from the controller. Topics that no longer exist are dropped from the cache (with
        ``strict``, an unknown topic raises UnknownTopicOrPartitionError instead)."""
        if not topics:
            return
        timeout_s = self._timeout_s if timeout_s is None else timeout_s
        try:
            fresh = self._transport.get_metadata(list(topics), timeout_s=timeout_s)
        except UnknownTopicOrPartitionError:
            if strict and len(topics) == 1:
                self._store({}, topics)
                raise
            every = self._transport.get_metadata(None, timeout_s=timeout_s)
            fresh = {t: every[t] for t in topics if t in every}
        self._store(fresh, topics)

    def _store(self, fresh: dict[str, TopicMetadata], asked: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for topic in asked:
                self._wanted.discard(topic)
                self._fetched_at[topic] = now
                meta = fresh.get(topic)
                if meta is None:
                    if self._topics.pop(topic, None) is not None:
                        log.info("topic %r no longer exists", topic)
                else:
                    self._topics[topic] = meta
