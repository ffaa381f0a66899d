"""What the controller knows of each replica actor's liveness: when it last answered, whether it is still
starting, whether Ray said it died.

Keys are ``(topic, partition, broker)``. The replica-handle registry marks a replica it creates
(:meth:`ReplicaLiveness.created`); the failure monitor records heartbeat answers and deaths and asks
:meth:`live_replicas` before every election. Times are ``time.monotonic()`` seconds, passed in by the
caller (``now``) except where a replica is just created or answers.

Concurrency contract: plain state, not thread-safe; every call comes from the controller actor's event
loop and none awaits, so a read-and-update is atomic there. No lock.
"""

from __future__ import annotations

import time

from raystream.config import BrokerConfig
from raystream.core.metadata import ClusterMetadata
from raystream.protocol import PartitionState

ReplicaKey = tuple[str, int, int]  # (topic, partition, broker)


class ReplicaLiveness:
    def __init__(self, metadata: ClusterMetadata, broker_config: BrokerConfig) -> None:
        self._metadata = metadata
        self._broker_config = broker_config
        self.last_heard: dict[ReplicaKey, float] = {}  # replica -> monotonic time of its last answer
        #: Replicas created by this controller that have not answered yet -> until when they count as starting
        self.starting: dict[ReplicaKey, float] = {}
        self.dead: set[ReplicaKey] = set()  # Ray reported the actor dead (or it was killed for good)

    def live_replicas(self, state: PartitionState, now: float) -> set[int]:
        """Brokers holding a live replica of ``state``: broker alive, replica answered recently (or just
        created and still starting: its process may take seconds to start on a busy node)."""
        timeout_s = self._broker_config.replica_session_timeout_ms / 1000
        live = set()
        for broker in state.replicas:
            info = self._metadata.brokers.get(broker)
            key = (state.topic, state.partition, broker)
            if info is None or not info.alive or key in self.dead:
                continue
            if now - self.last_heard.setdefault(key, now) <= timeout_s or now <= self.starting.get(key, 0.0):
                live.add(broker)
        return live

    def created(self, key: ReplicaKey) -> None:
        """A replica actor was (re)created: until it first answers it counts as live for
        ``replica.startup.timeout.ms`` (Ray starts worker processes a few at a time: the last replica of a
        new topic may take far longer than a session to start); then a session from its last answer."""
        self.dead.discard(key)
        now = time.monotonic()
        self.last_heard[key] = now
        self.starting[key] = now + self._broker_config.replica_startup_timeout_ms / 1000

    def answered(self, key: ReplicaKey) -> None:
        """A heartbeat answer (or a rejoin): alive now, no longer starting."""
        self.last_heard[key] = time.monotonic()
        self.starting.pop(key, None)
        self.dead.discard(key)

    def rejoined(self, key: ReplicaKey) -> None:
        """The replica's new incarnation called in (``rejoin``): alive now (a start grace it had stays)."""
        self.last_heard[key] = time.monotonic()
        self.dead.discard(key)

    def died(self, key: ReplicaKey) -> None:
        """Ray reported the actor dead, or the controller killed it for good: never live until recreated."""
        self.dead.add(key)

    def moved(self, old: ReplicaKey, new: ReplicaKey, now: float) -> None:
        """A replica was reassigned from ``old`` (a dead broker) to ``new`` (just decided, not yet created)."""
        self.last_heard.pop(old, None)
        self.dead.discard(old)
        self.last_heard[new] = now

    def last_answer_per_broker(self) -> dict[int, float]:
        last: dict[int, float] = {}
        for (_, _, broker), heard in self.last_heard.items():
            last[broker] = max(last.get(broker, 0.0), heard)
        return last

    def forget_topic(self, name: str) -> None:
        for key in [k for k in self.last_heard if k[0] == name]:
            self.last_heard.pop(key, None)
            self.starting.pop(key, None)
