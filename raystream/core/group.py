"""The coordinator's state machine of one consumer group (Kafka's GroupMetadata + GroupCoordinator rules).

States and transitions (Kafka's classic group protocol)::

    state                event                                                        next state
    -------------------  -----------------------------------------------------------  -------------------
    Empty                a member joins                                               PreparingRebalance
    Empty                delete()                                                     Dead
    PreparingRebalance   join phase complete, members remain (generation + 1)         CompletingRebalance
    PreparingRebalance   join phase complete, no member left (generation + 1)         Empty
    CompletingRebalance  assignment decided: at once when the coordinator computes    Stable
                         it, else when the leader syncs with its assignment
    CompletingRebalance  a member leaves, expires, or joins with new metadata         PreparingRebalance
    Stable               a new member joins, a member rejoins with new metadata,      PreparingRebalance
                         leaves or expires, a subscribed topic's partition count
                         changes, or the cooperative follow-up is due
    any                  (never re-entered except Dead -> Dead)                       Dead

Any other transition raises ``AssertionError`` naming the current state.

The join phase (PreparingRebalance) completes — :meth:`GroupMetadata.poll` reports it — once every known
member has rejoined, or when the rebalance timeout (the largest ``rebalance_timeout_ms``, the consumer's
``max_poll_interval_ms``) has passed; members that have not rejoined by then are dropped. A group leaving
Empty also waits ``group.initial.rebalance.delay.ms``, restarted by every new member, never beyond the
rebalance timeout. At completion the coordinator picks the protocol (:func:`select_protocol`), and if it is
one of :data:`ASSIGNORS` computes the assignment itself (server-side, simpler than Kafka's leader-side
assignment; the current ownership feeds the sticky assignors). For another protocol the leader must
``sync`` with the assignment, as in Kafka.

Cooperative rebalancing (KIP-429): partitions that move between members are withheld in the new
generation; once every member that loses one has synced (learned to revoke it), the coordinator starts the
follow-up rebalance by itself, which hands them to their new owners. Ownership between rebalances is what
each member was last told by ``sync`` (or what it reports in ``Subscription.owned_partitions`` when it
reports a generation), so a partition never has two owners, even when a sync is missed.

Static membership (KIP-345): a member joining with a known ``group_instance_id`` within its session timeout
replaces the old member id (which is fenced: ``UnknownMemberIdError``) and keeps its assignment without a
rebalance, unless its subscription changed.

Pure: no I/O, no clock (time comes in as ``now_ms``), member ids from the caller's factory. Not thread-safe:
the controller actor's event loop serialises calls; it awaits the join phase by calling ``poll`` after each
request and at ``PollResult.next_deadline_ms``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence

from raystream.core.assignors import (
    ASSIGNORS,
    NO_GENERATION,
    InconsistentGroupProtocolError,
    Subscription,
    common_protocols,
    select_protocol,
)
from raystream.core.group_results import (
    GroupSnapshot,
    HeartbeatResult,
    JoinCompletion,
    JoinResult,
    Member,
    MemberIdFactory,
    MemberSnapshot,
    PollResult,
    SyncResult,
)
from raystream.errors import (
    CommitFailedError,
    GroupIdNotFoundError,
    GroupNotEmptyError,
    IllegalGenerationError,
    InvalidConfigurationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from raystream.protocol import TopicPartition

#: Kafka's group.initial.rebalance.delay.ms default.
DEFAULT_INITIAL_REBALANCE_DELAY_MS = 3_000

class GroupState(enum.Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


_VALID_PREVIOUS: dict[GroupState, frozenset[GroupState]] = {
    GroupState.PREPARING_REBALANCE: frozenset(
        {GroupState.EMPTY, GroupState.STABLE, GroupState.COMPLETING_REBALANCE}),
    GroupState.COMPLETING_REBALANCE: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.STABLE: frozenset({GroupState.COMPLETING_REBALANCE}),
    GroupState.EMPTY: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.DEAD: frozenset(GroupState),
}


def _metadata(protocols: Sequence[str], subscription: Subscription) -> tuple:
    """What makes a rejoin a change (owned partitions and their generation do not)."""
    return tuple(protocols), tuple(sorted(set(subscription.topics))), subscription.user_data


def _commit_failed(group_id: str, member_id: str, generation_id: int, why: str) -> CommitFailedError:
    return CommitFailedError(
        f"Commit cannot be completed: {why}, so group {group_id!r} has rebalanced and its partitions may "
        "belong to another member now. Usually the time between two poll() calls exceeded "
        "max_poll_interval_ms because processing the polled records took too long: increase "
        "max_poll_interval_ms, or lower max_poll_records so that each poll returns fewer records.",
        group_id=group_id, member_id=member_id, generation_id=generation_id)


class GroupMetadata:
    """One consumer group: members, generation, protocol and assignment (see the module docstring)."""

    def __init__(self, group_id: str, *, member_ids: MemberIdFactory,
                 initial_rebalance_delay_ms: int = DEFAULT_INITIAL_REBALANCE_DELAY_MS,
                 topic_partitions: Mapping[str, int] | None = None, generation_id: int = 0) -> None:
        """``generation_id``: the last one this group had (a restarted coordinator's record of it)."""
        self.group_id = group_id
        self.state = GroupState.EMPTY
        self.generation_id = generation_id
        self.protocol: str | None = None
        self.leader_id: str | None = None
        self._new_member_id = member_ids
        self._initial_delay_ms = initial_rebalance_delay_ms
        self._topic_partitions = dict(topic_partitions or {})
        self._members: dict[str, Member] = {}
        self._static: dict[str, str] = {}  # group_instance_id -> member_id
        self._rebalance_deadline_ms = 0
        self._initial_delay_until_ms: int | None = None
        self._pending_sync: set[str] = set()  # members of the generation that have not synced yet
        self._sync_deadline_ms = 0
        self._revoking: set[str] = set()  # must sync before the cooperative follow-up
        self._follow_up = False
        self.rebalance_reason = ""

    # -- queries -----------------------------------------------------------------------------------------
    @property
    def members(self) -> Mapping[str, Member]:
        return self._members

    @property
    def server_assignment(self) -> bool:
        return self.protocol in ASSIGNORS

    def subscribed_topics(self) -> set[str]:
        return {t for m in self._members.values() for t in m.subscription.topics}

    def describe(self) -> GroupSnapshot:
        members = tuple(
            MemberSnapshot(m.member_id, m.group_instance_id, m.client_id, tuple(m.subscription.topics),
                              m.assignment) for m in self._members.values())
        return GroupSnapshot(self.group_id, self.state, self.generation_id, self.protocol,
                                self.leader_id, members)

    # -- requests ----------------------------------------------------------------------------------------
    def join(self, member_id: str | None, group_instance_id: str | None, protocols: Sequence[str],
             subscription: Subscription, *, session_timeout_ms: int, rebalance_timeout_ms: int, now_ms: int,
             client_id: str = "") -> JoinResult:
        """JoinGroup. A new member (``member_id`` None or "") gets an id at once (Kafka's MEMBER_ID_REQUIRED
        round trip is skipped); a known ``group_instance_id`` is a static member coming back."""
        if self.state is GroupState.DEAD:
            raise GroupIdNotFoundError(f"group {self.group_id!r} is dead", group_id=self.group_id)
        if session_timeout_ms <= 0 or rebalance_timeout_ms <= 0:
            raise InvalidConfigurationError("session_timeout_ms and rebalance_timeout_ms must be positive")
        protocols = tuple(protocols)
        subscription = dataclasses.replace(subscription, group_instance_id=group_instance_id)
        fields = dict(client_id=client_id, protocols=protocols, subscription=subscription,
                      session_timeout_ms=session_timeout_ms, rebalance_timeout_ms=rebalance_timeout_ms,
                      last_heartbeat_ms=now_ms)
        if not member_id:
            old = self._static.get(group_instance_id) if group_instance_id is not None else None
            if old is not None and self._session_expired(self._members[old], now_ms):
                self._remove(old, now_ms, f"static member {old} timed out")
                old = None
            self._check_protocols(protocols, excluding=old)
            new_id = self._new_member_id(client_id)
            if new_id in self._members:
                raise AssertionError(f"member id factory returned a duplicate id {new_id!r}")
            if old is not None:
                return self._replace_static(old, new_id, fields, now_ms)
            member = Member(new_id, group_instance_id, **fields)
            return self._add_member(member, now_ms)
        member = self._members.get(member_id)
        if member is None or member.group_instance_id != group_instance_id:  # fenced, or not this member
            raise UnknownMemberIdError(f"unknown member {member_id!r} in group {self.group_id!r}",
                                       group_id=self.group_id, member_id=member_id)
        self._check_protocols(protocols, excluding=member_id)
        changed = _metadata(protocols, subscription) != _metadata(member.protocols, member.subscription)
        for name, value in fields.items():
            setattr(member, name, value)
        leader_assigns = not self.server_assignment and member_id == self.leader_id
        return self._rejoin(member, changed or leader_assigns, now_ms, f"member {member_id} rejoined")

    def sync(self, member_id: str, generation_id: int,
             assignments_from_leader: Mapping[str, Sequence[TopicPartition]] | None = None, *,
             now_ms: int) -> SyncResult:
        """SyncGroup: the member's assignment of ``generation_id``. The leader of a group whose protocol the
        coordinator does not know passes ``assignments_from_leader``; otherwise it is ignored."""
        member = self._require_member(member_id, generation_id)
        if self.state is GroupState.PREPARING_REBALANCE:
            raise RebalanceInProgressError(f"group {self.group_id!r} is rebalancing: rejoin",
                                           group_id=self.group_id)
        member.last_heartbeat_ms = now_ms
        if self.state is GroupState.COMPLETING_REBALANCE:
            if member_id != self.leader_id or assignments_from_leader is None:
                return SyncResult(self.generation_id, self.protocol, None)
            self._install_leader_assignment(assignments_from_leader)
        revoked = tuple(sorted(set(member.owned) - set(member.assignment)))
        member.owned = member.assignment
        self._pending_sync.discard(member_id)
        self._revoking.discard(member_id)
        rejoin = False
        if self._follow_up and not self._revoking:
            self._prepare_rebalance(now_ms, "cooperative follow-up: revoked partitions can be reassigned")
            rejoin = True
        return SyncResult(self.generation_id, self.protocol, member.assignment, revoked, rejoin)

    def heartbeat(self, member_id: str, generation_id: int, now_ms: int) -> HeartbeatResult:
        """Heartbeat: keeps the session alive; tells the member whether it must rejoin."""
        member = self._require_member(member_id, generation_id)
        member.last_heartbeat_ms = now_ms
        return HeartbeatResult(self.state is GroupState.PREPARING_REBALANCE)

    def leave(self, member_id: str, now_ms: int) -> bool:
        """LeaveGroup; True when it started a rebalance."""
        self._require_member(member_id, None)
        return self._remove(member_id, now_ms, f"member {member_id} left")

    def validate_commit(self, member_id: str, generation_id: int, *, now_ms: int | None = None) -> None:
        """May this member commit offsets as of ``generation_id``? Raises :class:`CommitFailedError` for an
        unknown member or a stale generation, :class:`RebalanceInProgressError` while the assignment is not
        decided yet. A commit from outside any generation (``generation_id`` < 0, a manually assigned
        consumer) is allowed while the group is Empty. Commits during PreparingRebalance are allowed, so
        members can commit in their revocation callbacks."""
        if self.state is GroupState.DEAD:
            raise GroupIdNotFoundError(f"group {self.group_id!r} is dead", group_id=self.group_id)
        if generation_id < 0 and self.state is GroupState.EMPTY:
            return
        member = self._members.get(member_id)
        if member is None or generation_id != self.generation_id:
            why = (f"member {member_id!r} is not in the group (its session expired or it missed the "
                   "rebalance timeout)" if member is None else
                   f"generation {generation_id} is stale (the group is at generation {self.generation_id})")
            raise _commit_failed(self.group_id, member_id, generation_id, why)
        if self.state is GroupState.COMPLETING_REBALANCE:
            raise RebalanceInProgressError(f"group {self.group_id!r} is completing a rebalance",
                                           group_id=self.group_id)
        if now_ms is not None:
            member.last_heartbeat_ms = now_ms

    def update_topic_partitions(self, partitions_per_topic: Mapping[str, int], now_ms: int) -> bool:
        """New topic metadata; True when a subscribed topic's partition count changed and a rebalance
        started (only when the coordinator assigns: a leader watches metadata itself, as in Kafka)."""
        old, self._topic_partitions = self._topic_partitions, dict(partitions_per_topic)
        changed = any(old.get(t, 0) != self._topic_partitions.get(t, 0) for t in self.subscribed_topics())
        if changed and self.server_assignment and self.state in (GroupState.STABLE,
                                                                 GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(now_ms, "partition count of a subscribed topic changed")
            return True
        return False

    def delete(self) -> None:
        """DeleteGroups: only an Empty group can go (Dead)."""
        if self.state is not GroupState.EMPTY:
            raise GroupNotEmptyError(f"group {self.group_id!r} is {self.state.value}, not Empty",
                                     group_id=self.group_id)
        self._transition(GroupState.DEAD)

    # -- time --------------------------------------------------------------------------------------------
    def expire(self, now_ms: int) -> tuple[str, ...]:
        """Remove members whose session timed out, that did not rejoin within the rebalance timeout, or that
        did not sync within the rebalance timeout after the join phase; removal starts a rebalance."""
        late_join = self.state is GroupState.PREPARING_REBALANCE and now_ms >= self._rebalance_deadline_ms
        late_sync = now_ms >= self._sync_deadline_ms
        gone = [m.member_id for m in self._members.values()
                if self._session_expired(m, now_ms) or (late_join and not m.joined)
                or (late_sync and m.member_id in self._pending_sync)]
        for member_id in gone:
            self._remove(member_id, now_ms, f"member {member_id} timed out")
        return tuple(gone)

    def poll(self, now_ms: int) -> PollResult:
        """Apply time: :meth:`expire`, then complete the join phase if it may complete."""
        if self.state is GroupState.DEAD:
            return PollResult((), None, None)
        expired = self.expire(now_ms)
        completion = self._complete_join(now_ms) if self.join_ready(now_ms) else None
        return PollResult(expired, completion, self._next_deadline_ms())

    def join_ready(self, now_ms: int) -> bool:
        if self.state is not GroupState.PREPARING_REBALANCE:
            return False
        if now_ms >= self._rebalance_deadline_ms:
            return True
        delay_over = self._initial_delay_until_ms is None or now_ms >= self._initial_delay_until_ms
        return delay_over and all(m.joined for m in self._members.values())

    # -- internals ---------------------------------------------------------------------------------------
    def _transition(self, target: GroupState) -> None:
        if self.state not in _VALID_PREVIOUS[target]:
            raise AssertionError(f"group {self.group_id!r}: illegal transition {self.state.value} -> "
                                 f"{target.value}")
        self.state = target

    def _require_member(self, member_id: str, generation_id: int | None) -> Member:
        member = self._members.get(member_id)
        if member is None or self.state is GroupState.DEAD:
            raise UnknownMemberIdError(f"unknown member {member_id!r} in group {self.group_id!r}",
                                       group_id=self.group_id, member_id=member_id)
        if generation_id is not None and generation_id != self.generation_id:
            raise IllegalGenerationError(
                f"generation {generation_id} of member {member_id!r} is not the group's {self.generation_id}",
                group_id=self.group_id, member_id=member_id, generation_id=generation_id)
        return member

    def _check_protocols(self, protocols: tuple[str, ...], excluding: str | None) -> None:
        others = [m.protocols for m in self._members.values() if m.member_id != excluding]
        if not protocols or (others and not common_protocols(others) & set(protocols)):
            raise InconsistentGroupProtocolError(
                f"protocols {list(protocols)} share no assignor with the members of group {self.group_id!r}",
                group_id=self.group_id)

    def _session_expired(self, member: Member, now_ms: int) -> bool:
        if self.state is GroupState.PREPARING_REBALANCE and member.joined:
            return False  # its join is parked until the phase completes (Kafka keeps it alive)
        return now_ms >= member.last_heartbeat_ms + member.session_timeout_ms

    def _add_member(self, member: Member, now_ms: int) -> JoinResult:
        self._members[member.member_id] = member
        if member.group_instance_id is not None:
            self._static[member.group_instance_id] = member.member_id
        if self.leader_id is None:
            self.leader_id = member.member_id
        if self.state is GroupState.PREPARING_REBALANCE:
            if self._initial_delay_until_ms is not None and now_ms < self._initial_delay_until_ms:
                self._initial_delay_until_ms = min(now_ms + self._initial_delay_ms, self._rebalance_deadline_ms)
        else:
            self._prepare_rebalance(now_ms, f"new member {member.member_id} joined")
        member.joined = True
        return JoinResult(member.member_id, self.generation_id, self.protocol, self.leader_id, True)

    def _replace_static(self, old_id: str, new_id: str, fields: dict, now_ms: int) -> JoinResult:
        member = self._members[old_id]
        changed = _metadata(fields["protocols"], fields["subscription"]) != _metadata(member.protocols,
                                                                                       member.subscription)
        member.member_id = new_id
        for name, value in fields.items():
            setattr(member, name, value)
        self._members = {(new_id if k == old_id else k): v for k, v in self._members.items()}
        self._static[member.group_instance_id] = new_id
        self._pending_sync = {new_id if m == old_id else m for m in self._pending_sync}
        self._revoking = {new_id if m == old_id else m for m in self._revoking}
        self.leader_id = new_id if self.leader_id == old_id else self.leader_id
        return self._rejoin(member, changed, now_ms, f"static member {member.group_instance_id} changed")

    def _rejoin(self, member: Member, rebalance: bool, now_ms: int, reason: str) -> JoinResult:
        if self.state is not GroupState.PREPARING_REBALANCE:
            if not rebalance:  # a retried join, or a static member back: the current generation, as it was
                return JoinResult(member.member_id, self.generation_id, self.protocol, self.leader_id, False)
            self._prepare_rebalance(now_ms, reason)
        member.joined = True
        return JoinResult(member.member_id, self.generation_id, self.protocol, self.leader_id, True)

    def _remove(self, member_id: str, now_ms: int, reason: str) -> bool:
        member = self._members.pop(member_id)
        if member.group_instance_id is not None and self._static.get(member.group_instance_id) == member_id:
            del self._static[member.group_instance_id]
        self._pending_sync.discard(member_id)
        self._revoking.discard(member_id)
        if self.leader_id == member_id:
            self.leader_id = next(iter(self._members), None)
        if self.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(now_ms, reason)
            return True
        return False

    def _prepare_rebalance(self, now_ms: int, reason: str) -> None:
        from_empty = self.state is GroupState.EMPTY
        self._transition(GroupState.PREPARING_REBALANCE)
        self.rebalance_reason = reason
        timeout = max((m.rebalance_timeout_ms for m in self._members.values()), default=0)
        self._rebalance_deadline_ms = now_ms + timeout
        self._initial_delay_until_ms = (min(now_ms + self._initial_delay_ms, self._rebalance_deadline_ms)
                                        if from_empty and self._initial_delay_ms > 0 else None)
        self._pending_sync.clear()
        self._revoking.clear()
        self._follow_up = False
        for m in self._members.values():
            m.joined = False

    def _complete_join(self, now_ms: int) -> JoinCompletion:
        self.generation_id += 1
        self._initial_delay_until_ms = None
        if not self._members:
            self.protocol = self.leader_id = None
            self._transition(GroupState.EMPTY)
            return JoinCompletion(self.generation_id, None, None, (), {}, True)
        self.protocol = select_protocol({m.member_id: m.protocols for m in self._members.values()})
        if self.leader_id not in self._members:
            self.leader_id = next(iter(self._members))
        self._transition(GroupState.COMPLETING_REBALANCE)
        current = {m.member_id: self._ownership(m) for m in self._members.values()}
        for m in self._members.values():
            m.joined = False
            m.last_heartbeat_ms = now_ms
            m.assignment = ()
        self._pending_sync = set(self._members)
        self._sync_deadline_ms = now_ms + max(m.rebalance_timeout_ms for m in self._members.values())
        subscriptions = {m.member_id: m.subscription for m in self._members.values()}
        revoked: frozenset[TopicPartition] = frozenset()
        if self.server_assignment:
            generations = {m: (s.generation_id if s.generation_id != NO_GENERATION else self.generation_id - 1)
                           for m, s in subscriptions.items()}
            result = ASSIGNORS[self.protocol].assign(subscriptions, self._topic_partitions, current, generations)
            for member_id, tps in result.assignment.items():
                self._members[member_id].assignment = tuple(tps)
            revoked = result.revoked
            self._follow_up = result.needs_follow_up
            self._revoking = {m for m, tps in current.items() if revoked & set(tps)}
            self._transition(GroupState.STABLE)
        return JoinCompletion(self.generation_id, self.protocol, self.leader_id, tuple(self._members),
                              subscriptions, self.server_assignment, revoked)

    def _ownership(self, member: Member) -> tuple[TopicPartition, ...]:
        """What the member holds now: what it reports, else its assignment if it only gained partitions
        (nobody else may hold those), else what it was last told by sync (it may not know yet that it must
        give some up)."""
        if member.subscription.generation_id != NO_GENERATION:
            return tuple(member.subscription.owned_partitions)
        if set(member.assignment) >= set(member.owned):
            return member.assignment
        return member.owned

    def _install_leader_assignment(self, assignments: Mapping[str, Sequence[TopicPartition]]) -> None:
        owners: dict[TopicPartition, str] = {}
        for member_id, tps in assignments.items():
            for tp in tps:
                if owners.setdefault(tp, member_id) != member_id:
                    raise InvalidConfigurationError(
                        f"the leader's assignment gives {tp} to both {owners[tp]!r} and {member_id!r}",
                        group_id=self.group_id)
        for m in self._members.values():
            m.assignment = tuple(sorted(set(assignments.get(m.member_id, ()))))
        self._transition(GroupState.STABLE)

    def _next_deadline_ms(self) -> int | None:
        deadlines = [m.last_heartbeat_ms + m.session_timeout_ms for m in self._members.values()
                     if not (self.state is GroupState.PREPARING_REBALANCE and m.joined)]
        if self.state is GroupState.PREPARING_REBALANCE:
            deadlines.append(self._rebalance_deadline_ms)
            if self._initial_delay_until_ms is not None:
                deadlines.append(self._initial_delay_until_ms)
        if self._pending_sync:
            deadlines.append(self._sync_deadline_ms)
        return min(deadlines, default=None)
