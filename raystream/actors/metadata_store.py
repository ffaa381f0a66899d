"""The controller's metadata store: topics, brokers and partition states, persisted in the metadata log.

One owner of :class:`~raystream.core.metadata.ClusterMetadata` (the state machine over records) and of the
:class:`~raystream.storage.metadata_log.MetadataLog` behind it: a change is a record, appended (fsynced)
and then applied (:meth:`MetadataStore.record`, the write-ahead rule), and a new store replays the log, so
a restarted controller starts where the old one stopped. Producer-id blocks are metadata records too, so
their allocation lives here (:meth:`MetadataStore.next_producer_id`).

Concurrency contract: used only on the controller actor's event loop. Changes that read, decide and then
record across an ``await`` hold :meth:`lock` (the metadata lock: one change at a time; the broker
registration lock, when needed, is taken before it, never after); :meth:`record` itself never awaits, so
reads need no lock. :meth:`next_producer_id` has no ``await`` either and deliberately takes no lock, so
producers do not wait behind a slow topic change.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from raystream import metrics
from raystream.core.metadata import ClusterMetadata, TopicState
from raystream.errors import UnknownTopicOrPartitionError
from raystream.protocol import PartitionState
from raystream.storage.metadata_log import MetadataLog

#: Producer ids are reserved this many at a time (one metadata record per block).
PRODUCER_ID_BLOCK = 1000


class MetadataStore:
    """The cluster metadata and its log (see the module docstring)."""

    def __init__(self, cluster: str, root: Path) -> None:
        """``root``: ``<data_dir>/<cluster>`` of the controller's node."""
        self.metadata = ClusterMetadata(cluster)
        self._log = MetadataLog(root)
        self._log.replay(self.metadata.apply)
        self._lock: asyncio.Lock | None = None
        self._producer_id_cursor: int | None = None  # the next producer id to hand out (None: none yet)

    def lock(self) -> asyncio.Lock:
        """The metadata lock (created on first use, on the actor's event loop)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def record(self, record: dict[str, Any]) -> None:
        """Persist then apply one change (the write-ahead rule). Every ISR change (leader proposals, fenced
        followers, elections, lost logs) passes here, so this is where ISR shrinks and expands are counted."""
        self._log.append(record)
        isr_before = self.metadata.topics[record["topic"]].partitions[record["p"]].isr \
            if record["t"] == "partition" else None
        self.metadata.apply(record)
        if isr_before is not None:
            metrics.isr_changed(record["topic"], isr_before, record["isr"])

    def set_broker_alive(self, broker: int, alive: bool) -> None:
        """A broker's liveness is the one piece of metadata not recorded: it is learned again from Ray's
        node table and the broker agents after every start, so a restarted controller never trusts it."""
        info = self.metadata.brokers[broker]
        if info.alive != alive:
            self.metadata.brokers[broker] = dataclasses.replace(info, alive=alive)

    def close(self) -> None:
        self._log.close()

    # -- reads ----------------------------------------------------------------------------------------------
    def topic(self, name: str) -> TopicState:
        topic = self.metadata.topics.get(name)
        if topic is None:
            raise UnknownTopicOrPartitionError(f"unknown topic {name!r}", topic=name)
        return topic

    def partition_state(self, topic: str, partition: int) -> PartitionState:
        state = self.topic(topic).partitions.get(partition)
        if state is None:
            raise UnknownTopicOrPartitionError(f"unknown partition {topic}-{partition}")
        return state

    def live_brokers(self) -> list[int]:
        return sorted(b for b, info in self.metadata.brokers.items() if info.alive)

    def broker_alive(self, broker: int) -> bool:
        info = self.metadata.brokers.get(broker)
        return info is not None and info.alive

    # -- producer ids ---------------------------------------------------------------------------------------
    def next_producer_id(self) -> int:
        """A new idempotent-producer id. Ids never repeat, across restarts too: they are handed out from
        memory within a block whose end is recorded first (``producer_ids {next}``), so a restarted
        controller continues after the recorded end and at most skips the unused rest of a block."""
        cursor = self._producer_id_cursor
        if cursor is None or cursor >= self.metadata.next_producer_id:
            # This incarnation's first call (continue after everything recorded so far) or the block is used
            # up: reserve the next block durably before handing out any id of it.
            cursor = self.metadata.next_producer_id if cursor is None else cursor
            self.record(ClusterMetadata.producer_ids_record(cursor + PRODUCER_ID_BLOCK))
        self._producer_id_cursor = cursor + 1
        return cursor

    def replay_producer_id(self, replay_id: str, now_ms: int) -> int:
        """The producer id recorded for ``replay_id``; the first call hands out a new one and records the
        pairing (at ``now_ms``) before answering."""
        known = self.metadata.replay_producers.get(replay_id)
        if known is not None:
            return known[0]
        producer_id = self.next_producer_id()
        self.record(ClusterMetadata.replay_producer_record(replay_id, producer_id, now_ms))
        return producer_id
