"""The consumer's side of a consumer group: subscription, (re)joining, heartbeats, commits.

One :class:`GroupMember` per ``Consumer`` with a ``group_id``. The controller's coordinator
(:mod:`raystream.actors.groups`) assigns partitions, so a join returns the assignment directly. Rebalance
protocols, by the assignor the coordinator chose:

* eager (``range``, ``roundrobin``, ``sticky``): before rejoining, the member commits (auto-commit) and
  revokes everything (``on_revoke``), then gets its new assignment (``on_assign`` with all of it);
* ``cooperative-sticky`` (KIP-429): the member keeps consuming what it owns while rejoining; it revokes only
  the partitions the coordinator takes away (``on_revoke`` with those) and then rejoins once more to receive
  what moves to it (the follow-up rebalance), so unaffected partitions never stop.

Joins never block a ``poll`` beyond its timeout (as Kafka's ``poll(Duration)``): a join is a request in
flight; each poll looks at it, waits for it only while the member owns nothing and only until the poll's
deadline, and applies its answer (callbacks, new assignment) on the user's thread. So several members
polled round-robin by one thread with short timeouts all join the same rebalance.

Ownership rules (SPEC: one owner per partition per generation; a member out of the generation stops
consuming before anyone else takes over):

* the member delivers records only while its *lease* holds: a request the coordinator answered without an
  error (a heartbeat, the join, a commit) renews the session from the moment it was *sent*, so the lease
  ends no later than the coordinator's own session expiry — a member the coordinator expires has already
  stopped delivering;
* an eager member delivers nothing once it knows a rebalance started (its partitions will move);
* a heartbeat or commit answered UnknownMemberId / IllegalGeneration / CommitFailed means the generation is
  gone: the partitions are *lost* — ``assignment()`` is empty at once, the next ``poll`` drops them without
  committing (``on_lost``, by default ``on_revoke``, as Kafka's onPartitionsLost) and rejoins.

A background heartbeat thread sends a heartbeat every ``heartbeat_interval_ms`` — also while a rejoin is due
but not sent yet, and for a join the coordinator answered that the user's thread has not applied yet (the
coordinator counts the session from its answer) — but not while a join is parked at the coordinator (it
keeps the member alive then, as Kafka's does). If the user does not call ``poll`` for
``max_poll_interval_ms``, the heartbeat thread leaves the group (Kafka's behaviour), so the partitions go
to a live member; the next ``poll`` finds them lost and rejoins.

Thread-safety: ``_lock`` guards what the heartbeat thread, the join's completion callback and the user's
thread share (ids, generation, lease, flags, the join in flight); applying a join, commits and callbacks run
on the user's thread only (the consumer is single-threaded, like Kafka's).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from raystream.client.base import BaseTransport
from raystream.errors import (
    CommitFailedError,
    IllegalGenerationError,
    RaystreamError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from raystream.protocol import JoinGroupResult, TopicPartition

log = logging.getLogger(__name__)
COOPERATIVE = "cooperative-sticky"
#: Kafka 3.x's default partition.assignment.strategy: range, upgradeable to cooperative-sticky.
DEFAULT_ASSIGNORS = ("range", COOPERATIVE)
_MAX_JOIN_ROUNDS = 5  # joins applied within one poll (a cooperative rebalance takes two)
_JOIN_GRACE_S = 60.0  # beyond the rebalance timeout, how long a join may stay unanswered before it is resent
_REJOIN_ERRORS = (UnknownMemberIdError, IllegalGenerationError, RebalanceInProgressError)
_GENERATION_GONE = (UnknownMemberIdError, IllegalGenerationError, CommitFailedError)


@dataclasses.dataclass(frozen=True)
class ConsumerGroupMetadata:
    """Kafka's ConsumerGroupMetadata: the member's group, generation and member id as it knows them now
    (``generation_id`` -1 and ``member_id`` "" outside any generation)."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None


@dataclasses.dataclass(frozen=True)
class Delivery:
    """When (monotonic), as which member and generation, owning what, a poll last handed out records."""

    at: float
    generation_id: int
    member_id: str
    owned: frozenset[TopicPartition]


@dataclasses.dataclass(eq=False)
class _Join:
    """One JoinGroup (+ SyncGroup) request in flight. ``result`` / ``error`` are set by the completion
    callback (under the member's lock); the user's thread applies them."""

    future: Future
    sent_at: float  # monotonic, when the request left
    deadline: float  # monotonic: unanswered by then, it is abandoned and a new join sent
    result: JoinGroupResult | None = None
    error: BaseException | None = None

    @property
    def answered(self) -> bool:
        return self.result is not None or self.error is not None


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
        self.session_s = session_timeout_ms / 1000
        self.heartbeat_s = heartbeat_interval_ms / 1000
        self.max_poll_interval_ms = max_poll_interval_ms
        self.assignors = list(assignors)
        self.backoff_s = retry_backoff_ms / 1000
        self.pattern_refresh_s = metadata_max_age_ms / 1000
        # Shared (under _lock): the coordinator's view of us as far as we know it.
        self.member_id: str | None = None
        self.generation_id = -1
        self.protocol: str | None = None
        self._needs_join = False
        self._lost = False  # the generation we hold partitions of is gone (set by any thread)
        self._lease_until = 0.0  # monotonic: deliver records only before this
        self._join: _Join | None = None
        self._wake: Future = Future()  # completed whenever shared state changes (wakes a waiting poll)
        self.last_delivery: Delivery | None = None
        # The user's thread only.
        self.owned: set[TopicPartition] = set()
        self.topics: set[str] = set()
        self.pattern: re.Pattern | None = None
        self.on_assign: Callable[[set[TopicPartition]], Any] | None = None
        self.on_revoke: Callable[[set[TopicPartition]], Any] | None = None
        self.on_lost: Callable[[set[TopicPartition]], Any] | None = None
        self._next_join_at = 0.0
        self._pattern_checked = 0.0
        self._last_poll = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- subscription --------------------------------------------------------------------------------------
    def subscribe(self, topics: set[str], pattern: re.Pattern | None, on_assign, on_revoke, on_lost=None) -> None:
        self.topics, self.pattern = set(topics), pattern
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost
        self._pattern_checked = 0.0
        with self._lock:
            self._needs_join = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                            name=f"raystream-{self.client_id}-heartbeat")
            self._thread.start()

    def subscribed_topics(self) -> set[str]:
        return set(self.topics)

    @property
    def subscribed(self) -> bool:
        """Is the consumer a member (``subscribe``)? A consumer with a group id that assigns its
        partitions itself only commits and fetches offsets through the group: none of the membership rules
        (lease, generations, lost partitions) apply to it."""
        return bool(self.topics) or self.pattern is not None

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

    # -- what the consumer may do (any thread may call these) -----------------------------------------------
    def metadata(self) -> ConsumerGroupMetadata:
        with self._lock:
            return ConsumerGroupMetadata(self.group_id, self.generation_id, self.member_id or "",
                                         self.group_instance_id)

    def reportable(self, assigned: set[TopicPartition]) -> set[TopicPartition]:
        """What ``Consumer.assignment()`` may report of ``assigned``: nothing once the partitions are lost;
        while a newer generation's answer waits to be applied, only what this member keeps in it."""
        with self._lock:
            if self._lost:
                return set()
            join = self._join
            if join is not None and join.result is not None:
                return assigned & set(join.result.assignment)
        return assigned

    def may_deliver(self) -> bool:
        """May ``poll`` hand records of the owned partitions to the user now? (See the module docstring.)
        When it may, :attr:`last_delivery` records under which generation (what the group checker of the
        tests compares across members)."""
        with self._lock:
            now = time.monotonic()
            if self._lost or self.member_id is None or now >= self._lease_until:
                return False
            if self._eager() and (self._needs_join or self._join is not None):
                return False
            self.last_delivery = Delivery(now, self.generation_id, self.member_id, frozenset(self.owned))
            return True

    def wake_futures(self) -> list[Future]:
        """Futures whose completion should end a poll's wait: the join in flight, any change of state."""
        with self._lock:
            return [self._wake] + ([self._join.future] if self._join is not None else [])

    def _eager(self) -> bool:
        return self.protocol is not None and self.protocol != COOPERATIVE

    def _notify(self) -> None:
        """Wake a poll waiting on :meth:`wake_futures` (call with the lock held)."""
        wake, self._wake = self._wake, Future()
        wake.set_result(None)

    def _renew(self, member_id: str | None, generation: int, sent_at: float) -> None:
        """A request sent at ``sent_at`` as (``member_id``, ``generation``) was answered without error: the
        coordinator's session counts from no earlier than that (call with the lock held)."""
        if member_id is not None and member_id == self.member_id and generation == self.generation_id:
            expired = time.monotonic() >= self._lease_until
            self._lease_until = max(self._lease_until, sent_at + self.session_s)
            if expired:
                self._notify()

    def _generation_gone(self, member_id: str | None, generation: int, exc: BaseException) -> None:
        """The coordinator no longer knows (``member_id``, ``generation``): if that is still what we hold,
        our partitions are lost (call with the lock held)."""
        if member_id != self.member_id or generation != self.generation_id:
            return  # an answer about an older generation
        if self.owned or not self._lost:
            log.info("group %s: member %s generation %d is gone (%s); its partitions are lost", self.group_id,
                     member_id, generation, type(exc).__name__)
        self._lost = True
        self._needs_join = True
        self._lease_until = 0.0
        if isinstance(exc, UnknownMemberIdError):  # (after CommitFailed the next join finds out which)
            self.member_id, self.generation_id = None, -1
        self._notify()

    # -- the user's thread ------------------------------------------------------------------------------------
    def before_poll(self, consumer: Any, deadline: float | None) -> None:
        """Called at every poll: drop lost partitions, send a due join, apply a join's answer (running the
        callbacks). Waits for a join's answer only while nothing is owned, and only until ``deadline``
        (monotonic; None: no limit but the join's own)."""
        now = time.monotonic()
        self._last_poll = now
        self._refresh_pattern(now)
        for _ in range(_MAX_JOIN_ROUNDS):
            self._drop_lost(consumer)
            with self._lock:
                join, needed = self._join, self._needs_join
            if join is None:
                if not needed or time.monotonic() < self._next_join_at:
                    return
                join = self._send_join(consumer)
            if not join.answered:
                if self.owned:
                    return  # cooperative: keep consuming while the group rebalances
                until = join.deadline if deadline is None else min(deadline, join.deadline)
                concurrent.futures.wait([join.future], timeout=max(0.0, until - time.monotonic()))
                with self._lock:
                    answered = join.answered
                if not answered:
                    if time.monotonic() >= join.deadline:
                        self._abandon(join)
                    return
            self._apply_join(consumer, join)

    def _drop_lost(self, consumer: Any) -> None:
        with self._lock:
            lost, self._lost = self._lost, False
            if lost:
                self._join = None  # a join answered for the lost generation (or parked): void too
        if lost and self.owned:
            self._revoke(consumer, set(self.owned), commit=False, lost=True)

    def _send_join(self, consumer: Any) -> _Join:
        if self._eager() and self.owned:
            self._revoke(consumer, set(self.owned), commit=True)
        with self._lock:
            self._needs_join = False
            member_id, generation = self.member_id, self.generation_id
        sent_at = time.monotonic()
        future = self.transport.group_submit(
            "join_group", self.group_id, member_id, self.group_instance_id, self.client_id, self.assignors,
            sorted(self.topics), sorted(self.owned), generation, self.session_timeout_ms,
            self.max_poll_interval_ms)
        join = _Join(future, sent_at, sent_at + self.max_poll_interval_ms / 1000 + _JOIN_GRACE_S)
        with self._lock:
            self._join = join
        future.add_done_callback(lambda f: self._join_answered(join, f))
        return join

    def _join_answered(self, join: _Join, future: Future) -> None:
        """The join's completion callback (a transport thread): record the coordinator's view at once, so
        heartbeats and commits use the new generation before the user's thread applies it."""
        with self._lock:
            if self._join is not join:
                return  # abandoned or voided
            exc = future.exception()
            if exc is not None:
                join.error = exc
            else:
                join.result = result = future.result()
                self.member_id, self.generation_id = result.member_id, result.generation_id
                self.protocol = result.protocol
                self._lease_until = join.sent_at + self.session_s
            self._notify()

    def _abandon(self, join: _Join) -> None:
        log.warning("group %s: join unanswered for %.0f s; sending it again", self.group_id,
                    time.monotonic() - join.sent_at)
        with self._lock:
            if self._join is join:
                self._join = None
                self._needs_join = True

    def _apply_join(self, consumer: Any, join: _Join) -> None:
        with self._lock:
            if self._join is not join:
                return
            self._join = None
        if join.error is not None:
            exc = join.error
            if not isinstance(exc, _REJOIN_ERRORS) and not getattr(exc, "retriable", False):
                raise exc
            log.info("group %s: join failed (%s); rejoining", self.group_id, type(exc).__name__)
            with self._lock:
                if isinstance(exc, UnknownMemberIdError):
                    self.member_id, self.generation_id = None, -1
                self._needs_join = True
            self._next_join_at = time.monotonic() + self.backoff_s  # retry pacing, not synchronisation
            return
        result = join.result
        assignment = set(result.assignment)
        revoked = set(result.revoked) | (self.owned - assignment)
        if revoked:
            self._revoke(consumer, revoked, commit=True)
        added = assignment - self.owned
        with self._lock:
            self._needs_join = self._needs_join or result.rejoin
        self.owned = assignment
        consumer._apply_group_assignment(sorted(assignment), sorted(added))
        log.info("group %s: member %s generation %d assigned %s", self.group_id, result.member_id,
                 result.generation_id, sorted(assignment))
        if self.on_assign is not None:
            self.on_assign(added if result.protocol == COOPERATIVE else set(assignment))

    def _revoke(self, consumer: Any, partitions: set[TopicPartition], commit: bool, lost: bool = False) -> None:
        if commit:
            consumer._auto_commit(force=True, partitions=partitions)
        callback = (self.on_lost or self.on_revoke) if lost else self.on_revoke
        if callback is not None and partitions:
            callback(set(partitions))
        self.owned -= partitions
        consumer._apply_group_assignment(sorted(self.owned), [])

    def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        with self._lock:
            member_id, generation = self.member_id, self.generation_id
        sent_at = time.monotonic()
        try:
            self.transport.group_call("commit_offsets", self.group_id, member_id or "", generation, offsets,
                                      timeout_s=self.max_poll_interval_ms / 1000)
        except _GENERATION_GONE as exc:
            with self._lock:
                if member_id is not None:
                    self._generation_gone(member_id, generation, exc)
                self._needs_join = True
            if isinstance(exc, CommitFailedError):
                raise
            # Kafka's contract (and SPEC): a commit from a generation the group no longer has is a
            # CommitFailedError, whichever way the coordinator found out (unknown member, old generation).
            raise CommitFailedError(f"commit of group {self.group_id!r} refused: member {member_id!r} of "
                                    f"generation {generation} is no longer in the group ({exc}); the next poll "
                                    f"rejoins") from exc
        with self._lock:
            self._renew(member_id, generation, sent_at)

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
            join, self._join = self._join, None
            member_id, self.member_id, self.generation_id = self.member_id, None, -1
            self._lease_until, self._lost, self._needs_join = 0.0, False, False
        if join is not None and not join.answered:
            # A join still parked: its answer (it may carry a member id we never learnt) ends it too.
            try:
                answer = join.future.result(timeout=0)
                member_id = member_id or answer.member_id
            except Exception:  # still parked, or failed: the session timeout removes that member
                pass
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
                member_id, generation, lost = self.member_id, self.generation_id, self._lost
                parked = self._join is not None and not self._join.answered
                lease_left = self._lease_until - time.monotonic()
            if member_id is None or lost or parked:
                continue
            if (time.monotonic() - self._last_poll) * 1000 > self.max_poll_interval_ms:
                self._leave_for_poll_timeout(member_id, generation)
                continue
            # Held for one interval when the lease is comfortable; answered at once when it needs renewing.
            wait_ms = int(self.heartbeat_s * 1000) if lease_left > self.session_s / 2 else 0
            sent_at = time.monotonic()
            try:  # long-poll: answered at once when a rebalance starts, else after ``wait_ms``
                rebalance = self.transport.group_call("heartbeat_group", self.group_id, member_id, generation,
                                                      wait_ms, timeout_s=self.session_s)
            except _REJOIN_ERRORS as exc:
                with self._lock:
                    if isinstance(exc, RebalanceInProgressError):
                        self._needs_join = True
                        self._notify()
                    else:
                        self._generation_gone(member_id, generation, exc)
                continue
            except Exception as exc:  # the controller may be restarting: keep trying
                log.info("group %s: heartbeat failed: %s", self.group_id, exc)
                self._stop.wait(self.backoff_s)
                continue
            with self._lock:
                self._renew(member_id, generation, sent_at)
                if rebalance and member_id == self.member_id and generation == self.generation_id:
                    if not self._needs_join:
                        self._needs_join = True
                        self._notify()

    def _leave_for_poll_timeout(self, member_id: str, generation: int) -> None:
        log.warning("group %s: poll() not called for max_poll_interval_ms=%d; leaving the group so its "
                    "partitions go to another member (increase max_poll_interval_ms or lower "
                    "max_poll_records)", self.group_id, self.max_poll_interval_ms)
        with self._lock:  # stop delivering before the coordinator lets anyone else take over
            self._generation_gone(member_id, generation, UnknownMemberIdError("left: poll timeout"))
        try:
            self.transport.group_call("leave_group", self.group_id, member_id, timeout_s=10)
        except Exception as exc:
            log.info("group %s: leave failed: %s", self.group_id, exc)
