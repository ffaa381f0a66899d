"""The consumer's assigned partitions and, per partition, its position, pending reset and pause flag
(Kafka's ``SubscriptionState`` and its per-partition ``TopicPartitionState``).

Which topics a group member subscribed to (names or a pattern) stays with the membership in
:mod:`raystream.client.group`, which decides the assignment; this class only holds what was assigned,
however it was chosen (``assign`` or the group).

A :class:`TopicPartitionState` also carries its partition's fetch state (buffered results, the fetch in
flight, the reset request in flight), unlike Kafka's, because every position change must drop them in
the same step: ``seek`` and resets bump ``epoch`` and clear the buffer (see
:mod:`raystream.client.fetcher`), and keeping both in one object makes that one call.

Not thread-safe: owned by the consumer's user thread, like the consumer.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from raystream.protocol import TopicPartition


@dataclasses.dataclass(eq=False)
class TopicPartitionState:
    tp: TopicPartition
    position: int | None = None  # next offset to hand to the user; None until reset
    reset: int | None = None  # pending reset (EARLIEST/LATEST) asked by seek_to_*; None: use the policy
    paused: bool = False
    epoch: int = 0
    buffer: deque[Any] = dataclasses.field(default_factory=deque)  # the fetcher's completed fetches
    inflight: Any = None  # the fetcher's fetch in flight
    resetting: tuple[Future, int] | None = None  # list_offset in flight for a reset, and its epoch
    high_watermark: int | None = None
    log_start_offset: int | None = None
    retry_at: float = 0.0

    def invalidate(self) -> None:
        """Drop buffered data; a fetch in flight of the old epoch is discarded when it lands."""
        self.epoch += 1
        self.buffer.clear()


class SubscriptionState:
    def __init__(self) -> None:
        self.states: dict[TopicPartition, TopicPartitionState] = {}

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Replace the assignment; partitions kept keep their state (position, pause, buffers)."""
        old = self.states
        self.states = {tp: old.get(tp) or TopicPartitionState(tp) for tp in tps}

    def assigned(self) -> set[TopicPartition]:
        return set(self.states)

    def is_assigned(self, tp: TopicPartition) -> bool:
        return tp in self.states

    def seek(self, tp: TopicPartition, offset: int) -> None:
        state = self.states[tp]
        state.position, state.reset = offset, None
        state.invalidate()

    def request_reset(self, tp: TopicPartition, spec: int) -> None:
        """Reset ``tp`` to ``spec`` (EARLIEST/LATEST) lazily: the fetcher asks the leader when it needs it."""
        state = self.states[tp]
        state.position, state.reset = None, spec
        state.invalidate()

    def position(self, tp: TopicPartition) -> int | None:
        return self.states[tp].position

    def positions(self, partitions: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Positions of the partitions that have one (all, or those in ``partitions``): what a commit sends."""
        return {tp: s.position for tp, s in self.states.items()
                if s.position is not None and (partitions is None or tp in partitions)}

    def high_watermark(self, tp: TopicPartition) -> int | None:
        return self.states[tp].high_watermark

    def set_paused(self, tp: TopicPartition, paused: bool) -> None:
        self.states[tp].paused = paused

    def paused(self) -> set[TopicPartition]:
        return {tp for tp, state in self.states.items() if state.paused}
