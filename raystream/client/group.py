"""The consumer's side of a consumer group: subscription, (re)joining, heartbeats, commits.

One :class:`GroupMember` per ``Consumer`` with a ``group_id``. The controller's coordinator
(:mod:`raystream.actors.groups`) assigns partitions, so a join returns the assignment directly. Rebalance
protocols, by the assignor the coordinator chose:

* eager (``range``, ``roundrobin``, ``sticky``): before rejoining, the member commits (auto-commit) and
  revokes everything (``on_revoke``), then gets its new assignment (``on_assign`` with all of it);
* ``cooperative-sticky`` (KIP-429): the member keeps consuming what it owns while rejoining; it revokes only
  the partitions the coordinator takes away (``on_revoke`` with those) and then rejoins once more to receive
  what moves to it (the follow-up rebalance), so unaffected partitions never stop.

A background heartbeat thread sends a heartbeat every ``heartbeat_interval_ms``; a rebalance the coordinator
announces, an expired membership or a stale generation make the next ``poll`` rejoin. If the user does not
call ``poll`` for ``max_poll_interval_ms``, the heartbeat thread leaves the group (Kafka's behaviour), so the
partitions go to a live member; the next ``poll`` rejoins. Callbacks run on the user's thread, inside
``poll``, before partitions move.

Thread-safety: ``_lock`` guards what the heartbeat thread and the user's thread share (ids, flags); joins,
commits and callbacks run on the user's thread only (the consumer is single-threaded, like Kafka's).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from raystream.client.base import BaseTransport
from raystream.errors import (
    CommitFailedError,
    IllegalGenerationError,
    RaystreamError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from raystream.protocol import TopicPartition

log = logging.getLogger(__name__)
COOPERATIVE = "cooperative-sticky"
#: Kafka 3.x's default partition.assignment.strategy: range, upgradeable to cooperative-sticky.
DEFAULT_ASSIGNORS = ("range", COOPERATIVE)
_MAX_JOIN_ROUNDS = 5  # joins within one poll (a cooperative rebalance takes two)


class GroupMember:
    """See the module docstring."""

    def __init__(self, transport: BaseTransport, group_id: str, *, client_id: str | None,
                 group_instance_id: str | None, session_timeout_ms: int, heartbeat_interval_ms: int,
                 max_poll_interval_ms: int, assignors: Iterable[str], retry_backoff_ms: int,
                 metadata_max_age_ms: int) -> None:
        self.transport = transport
        self.group_id = group_id
        self.client_id = client_id or "consumer"
        self.group_instance_id = group_instance_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_s = heartbeat_interval_ms / 1000
        self.max_poll_interval_ms = max_poll_interval_ms
        self.assignors = list(assignors)
        self.backoff_s = retry_backoff_ms / 1000
        self.pattern_refresh_s = metadata_max_age_ms / 1000
        self.member_id: str | None = None
        self.generation_id = -1
        self.protocol: str | None = None
        self.owned: set[TopicPartition] = set()
        self.topics: set[str] = set()
        self.pattern: re.Pattern | None = None
        self.on_assign: Callable[[set[TopicPartition]], Any] | None = None
        self.on_revoke: Callable[[set[TopicPartition]], Any] | None = None
        self._needs_join = False
        self._left_for_poll_timeout = False
        self._pattern_checked = 0.0
        self._last_poll = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- subscription --------------------------------------------------------------------------------------
    def subscribe(self, topics: set[str], pattern: re.Pattern | None, on_assign, on_revoke) -> None:
        self.topics, self.pattern = set(topics), pattern
        self.on_assign, self.on_revoke = on_assign, on_revoke
        self._pattern_checked = 0.0
        with self._lock:
            self._needs_join = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                            name=f"raystream-{self.client_id}-heartbeat")
            self._thread.start()

    def subscribed_topics(self) -> set[str]:
        return set(self.topics)

    def _refresh_pattern(self, now: float) -> None:
        """Topics matching the pattern (checked every ``metadata_max_age_ms``); new ones trigger a rejoin."""
        if self.pattern is None or now - self._pattern_checked < self.pattern_refresh_s:
            return
        self._pattern_checked = now
        matching = {t for t in self.transport.list_topics() if self.pattern.fullmatch(t)}
        if matching != self.topics:
            self.topics = matching
            with self._lock:
                self._needs_join = True

    # -- the user's thread ------------------------------------------------------------------------------------
    def before_poll(self, consumer: Any) -> None:
        """Called at every poll: rejoin if needed (running the callbacks)."""
        now = time.monotonic()
        self._last_poll = now
        self._refresh_pattern(now)
        for _ in range(_MAX_JOIN_ROUNDS):
            with self._lock:
                needed, lost = self._needs_join, self._left_for_poll_timeout
                self._left_for_poll_timeout = False
            if not needed:
                return
            if lost:  # we left because poll was late: the partitions are gone already (onPartitionsLost)
                self._revoke(consumer, set(self.owned), commit=False)
            if not self._join(consumer):
                return

    def _join(self, consumer: Any) -> bool:
        eager = self.protocol is not None and self.protocol != COOPERATIVE
        if eager and self.owned:
            self._revoke(consumer, set(self.owned), commit=True)
        with self._lock:
            self._needs_join = False
            member_id = self.member_id
        try:
            result = self.transport.group_call(
                "join_group", self.group_id, member_id, self.group_instance_id, self.client_id, self.assignors,
                sorted(self.topics), sorted(self.owned), self.generation_id, self.session_timeout_ms,
                self.max_poll_interval_ms, timeout_s=self.max_poll_interval_ms / 1000 + 60)
        except (UnknownMemberIdError, IllegalGenerationError, RebalanceInProgressError) as exc:
            log.info("group %s: join failed (%s); rejoining", self.group_id, type(exc).__name__)
            with self._lock:
                if isinstance(exc, UnknownMemberIdError):
                    self.member_id, self.generation_id = None, -1
                self._needs_join = True
            time.sleep(self.backoff_s)  # bounded retry pacing, not synchronisation
            return True
        assignment = set(result["assignment"])
        revoked = set(result["revoked"]) | (self.owned - assignment)
        if revoked:
            self._revoke(consumer, revoked, commit=True)
        added = assignment - self.owned
        with self._lock:
            self.member_id, self.generation_id = result["member_id"], result["generation_id"]
            self.protocol = result["protocol"]
            self._needs_join = self._needs_join or bool(result["rejoin"])
        self.owned = assignment
        consumer._apply_group_assignment(sorted(assignment), sorted(added))
        log.info("group %s: member %s generation %d assigned %s", self.group_id, self.member_id,
                 self.generation_id, sorted(assignment))
        if self.on_assign is not None:
            self.on_assign(added if self.protocol == COOPERATIVE else set(assignment))
        return True

    def _revoke(self, consumer: Any, partitions: set[TopicPartition], commit: bool) -> None:
        if commit:
            consumer._auto_commit(force=True, partitions=partitions)
        if self.on_revoke is not None and partitions:
            self.on_revoke(set(partitions))
        self.owned -= partitions
        consumer._apply_group_assignment(sorted(self.owned), [])

    def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        with self._lock:
            member_id, generation = self.member_id or "", self.generation_id
        try:
            self.transport.group_call("commit_offsets", self.group_id, member_id, generation, offsets,
                                      timeout_s=self.max_poll_interval_ms / 1000)
        except (CommitFailedError, UnknownMemberIdError, IllegalGenerationError):
            with self._lock:
                self._needs_join = True
            raise

    def committed(self, partitions: list[TopicPartition], timeout_s: float | None) -> dict:
        return self.transport.group_call("fetch_offsets", self.group_id, partitions, timeout_s=timeout_s)

    def close(self, leave: bool | None = None) -> None:
        """Stop heartbeating and leave the group — except a static member (``group_instance_id``), which
        stays until its session times out so that a restart gets its partitions back (KIP-345)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.heartbeat_s + 5)
        self._thread = None
        self._stop = threading.Event()
        with self._lock:
            member_id, self.member_id = self.member_id, None
        if leave is None:
            leave = self.group_instance_id is None
        if member_id and leave:
            try:
                self.transport.group_call("leave_group", self.group_id, member_id, timeout_s=10)
            except RaystreamError as exc:  # the session timeout removes us anyway
                log.info("group %s: leave failed: %s", self.group_id, exc)

    # -- the heartbeat thread -------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        # A heartbeat is held by the coordinator for up to one interval (see heartbeat_group), so the loop
        # only pauses briefly between calls; the session stays fresh either way.
        while not self._stop.wait(min(self.heartbeat_s, 0.05)):
            with self._lock:
                member_id, generation, joining = self.member_id, self.generation_id, self._needs_join
            if member_id is None or joining:
                continue
            if (time.monotonic() - self._last_poll) * 1000 > self.max_poll_interval_ms:
                self._leave_for_poll_timeout(member_id)
                continue
            try:  # long-poll: answered at once when a rebalance starts, else after one interval
                rebalance = self.transport.group_call("heartbeat_group", self.group_id, member_id, generation,
                                                      int(self.heartbeat_s * 1000),
                                                      timeout_s=self.session_timeout_ms / 1000)
            except (UnknownMemberIdError, IllegalGenerationError, RebalanceInProgressError) as exc:
                with self._lock:
                    if isinstance(exc, UnknownMemberIdError):
                        self.member_id, self.generation_id = None, -1
                    self._needs_join = True
                continue
            except Exception as exc:  # the controller may be restarting: keep trying
                log.info("group %s: heartbeat failed: %s", self.group_id, exc)
                continue
            if rebalance:
                with self._lock:
                    self._needs_join = True

    def _leave_for_poll_timeout(self, member_id: str) -> None:
        log.warning("group %s: poll() not called for max_poll_interval_ms=%d; leaving the group so its "
                    "partitions go to another member (increase max_poll_interval_ms or lower "
                    "max_poll_records)", self.group_id, self.max_poll_interval_ms)
        try:
            self.transport.group_call("leave_group", self.group_id, member_id, timeout_s=10)
        except Exception as exc:
            log.info("group %s: leave failed: %s", self.group_id, exc)
        with self._lock:
            self.member_id, self.generation_id = None, -1
            self._needs_join = self._left_for_poll_timeout = True
