"""Partition assignors of consumer groups, as pure functions (Kafka's ``partition.assignment.strategy``).

Every assignor takes the group's members (``member_id -> Subscription``) and the partition count of each
topic, and returns ``member_id -> sorted list of TopicPartition`` with every member present (possibly
empty). Only topics some member subscribes to and that exist (a positive partition count) are assigned.

=====================  ==========  =========================================================================
name                   protocol    rule
=====================  ==========  =========================================================================
``range``              eager       per topic, its subscribers in member order get contiguous ranges; the
                                   first ``partitions % subscribers`` members get one partition more
``roundrobin``         eager       all subscribed partitions sorted, dealt in turn to the members in member
                                   order, skipping a member not subscribed to the partition's topic
``sticky``             eager       balanced and as sticky as balance allows (see below)
``cooperative-sticky`` cooperative ``sticky``, then every partition that would move between two members is
                                   withheld (revoked) for one rebalance
=====================  ==========  =========================================================================

*Member order* is Kafka's: static members (with a ``group_instance_id``) first, by instance id, then
dynamic members by member id — so a restarted static member gets the same ranges back.

*Sticky* (Kafka's AbstractStickyAssignor): every member first keeps the partitions it owns that still
exist and that it still subscribes to (a partition claimed by several members goes to the claim of the
highest generation; a tie leaves it unowned); unowned partitions go, fewest-candidates first, to the
eligible member with the fewest partitions; then, while some member ``C`` could take a partition of a
member ``O`` with ``count(O) > count(C) + 1``, one such partition moves (the least loaded ``C`` and the
most loaded ``O`` first, preferring a partition ``O`` did not own before). The result is *balanced* in
Kafka's sense: no single move reduces the imbalance; in particular members with the same subscription
differ by at most one partition. When all members have the same subscription a member only gives
partitions up or only gains some, never both, and the members that owned most keep the most.

*Cooperative* (KIP-429): a partition moving from ``A`` to ``B`` is left out of both assignments and
reported in :attr:`AssignmentResult.revoked`; ``A`` revokes it, and the follow-up rebalance (where nobody
owns it) gives it to ``B``. A partition is never owned by two members at once, and members keep
consuming the partitions that do not move during the rebalance.

Pure and deterministic; thread-safe (no state).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence

from raystream.errors import InconsistentGroupProtocolError
from raystream.protocol import TopicPartition

#: The generation of a member that has not been in any generation yet (Kafka's ``NoGeneration``).
NO_GENERATION = -1

Assignment = dict[str, list[TopicPartition]]


class RebalanceProtocol(enum.Enum):
    EAGER = "eager"  # members revoke everything before rejoining
    COOPERATIVE = "cooperative"  # members revoke only what moves (KIP-429)


@dataclasses.dataclass(frozen=True)
class Subscription:
    """What a member sends when it joins (Kafka's ConsumerProtocolSubscription)."""

    topics: list[str]
    owned_partitions: list[TopicPartition] = dataclasses.field(default_factory=list)
    generation_id: int = NO_GENERATION  # of owned_partitions; NO_GENERATION when not reported
    group_instance_id: str | None = None
    user_data: bytes | None = None
    #: A Kafka client's JoinGroup metadata bytes per protocol, verbatim: what a Kafka leader reads of its
    #: members in a group it assigns (empty for raystream's own consumers).
    protocol_metadata: tuple[tuple[str, bytes], ...] = ()


@dataclasses.dataclass(frozen=True)
class AssignmentResult:
    """An assignor's answer. ``revoked``: partitions withheld because they move between members
    (cooperative only); when non-empty the group needs a follow-up rebalance."""

    assignment: Assignment
    revoked: frozenset[TopicPartition] = frozenset()

    @property
    def needs_follow_up(self) -> bool:
        return bool(self.revoked)


def member_order(members: Mapping[str, Subscription]) -> list[str]:
    """Kafka's member order: static members by group instance id, then dynamic members by member id."""
    def key(member_id: str) -> tuple[int, str, str]:
        instance = members[member_id].group_instance_id
        return (0, instance, member_id) if instance is not None else (1, member_id, "")
    return sorted(members, key=key)


def _subscribed_partitions(members: Mapping[str, Subscription],
                           partitions_per_topic: Mapping[str, int]) -> list[TopicPartition]:
    topics = sorted({t for s in members.values() for t in s.topics if partitions_per_topic.get(t, 0) > 0})
    return [TopicPartition(t, p) for t in topics for p in range(partitions_per_topic[t])]


def range_assign(members: Mapping[str, Subscription], partitions_per_topic: Mapping[str, int]) -> Assignment:
    """Kafka's RangeAssignor.

    Example: ``c1`` and ``c2`` subscribe to ``t0`` and ``t1``, both with 3 partitions; per topic ``c1``
    gets ``[0, 1]`` and ``c2`` gets ``[2]``, so ``c1 -> t0-0 t0-1 t1-0 t1-1`` and ``c2 -> t0-2 t1-2``.
    """
    result: Assignment = {m: [] for m in members}
    ordered = member_order(members)
    topics = sorted({t for s in members.values() for t in s.topics})
    for topic in topics:
        count = partitions_per_topic.get(topic, 0)
        subscribers = [m for m in ordered if topic in members[m].topics]
        if count <= 0 or not subscribers:
            continue
        per_member, extra = divmod(count, len(subscribers))
        start = 0
        for i, member_id in enumerate(subscribers):
            size = per_member + (1 if i < extra else 0)
            result[member_id].extend(TopicPartition(topic, p) for p in range(start, start + size))
            start += size
    return result


def roundrobin_assign(members: Mapping[str, Subscription],
                      partitions_per_topic: Mapping[str, int]) -> Assignment:
    """Kafka's RoundRobinAssignor.

    Example: ``c0`` subscribes to ``t0``; ``c1`` and ``c2`` to ``t0`` and ``t1``; ``t0`` has 1 partition
    and ``t1`` has 2. Dealing ``t0-0 t1-0 t1-1`` to ``c0 c1 c2 c0 ...``: ``c0 -> t0-0``, ``c1 -> t1-0``,
    ``c2 -> t1-1`` (for ``t1-0`` the turn is ``c1``; ``c0`` would be skipped, not subscribed to ``t1``).
    """
    result: Assignment = {m: [] for m in members}
    ordered = member_order(members)
    turn = 0
    for tp in _subscribed_partitions(members, partitions_per_topic):
        while tp.topic not in members[ordered[turn % len(ordered)]].topics:
            turn += 1
        result[ordered[turn % len(ordered)]].append(tp)
        turn += 1
    return result


def resolve_ownership(members: Mapping[str, Subscription],
                      current: Mapping[str, Iterable[TopicPartition]] | None = None,
                      generations: Mapping[str, int] | None = None) -> dict[TopicPartition, str]:
    """``partition -> owner`` among the current members: ``current`` (the coordinator's view) or else each
    subscription's ``owned_partitions``. A partition claimed by several members belongs to the claim of
    the highest generation (``generations``, else each subscription's ``generation_id``); a tie leaves it
    unowned, as Kafka does when two members claim a partition in the same generation."""
    claims: dict[TopicPartition, list[tuple[int, str]]] = collections.defaultdict(list)
    for member_id, sub in members.items():
        owned = sub.owned_partitions if current is None else current.get(member_id, ())
        generation = sub.generation_id if generations is None else generations.get(member_id, NO_GENERATION)
        for tp in set(owned):
            claims[tp].append((generation, member_id))
    owners: dict[TopicPartition, str] = {}
    for tp, claimants in claims.items():
        best = max(g for g, _ in claimants)
        winners = [m for g, m in claimants if g == best]
        if len(winners) == 1:
            owners[tp] = winners[0]
    return owners


def _assign_unowned(members: Mapping[str, Subscription], owned_by: dict[str, set[TopicPartition]],
                    unowned: list[TopicPartition], rank: dict[str, int]) -> None:
    """Each unowned partition (fewest eligible members first) to its least loaded eligible member."""
    eligible = {t: [m for m in members if t in members[m].topics] for t in {tp.topic for tp in unowned}}
    for tp in sorted(unowned, key=lambda tp: (len(eligible[tp.topic]), tp)):
        target = min(eligible[tp.topic], key=lambda m: (len(owned_by[m]), rank[m]))
        owned_by[target].add(tp)


def _find_move(members: Mapping[str, Subscription], owned_by: dict[str, set[TopicPartition]],
               previous: dict[TopicPartition, str],
               rank: dict[str, int]) -> tuple[TopicPartition, str, str] | None:
    """One partition move that reduces the imbalance, or None when the assignment is balanced."""
    by_load = sorted(members, key=lambda m: (len(owned_by[m]), rank[m]))
    for receiver in by_load:
        topics = set(members[receiver].topics)
        for donor in reversed(by_load):
            if len(owned_by[donor]) <= len(owned_by[receiver]) + 1:
                break
            movable = [tp for tp in owned_by[donor] if tp.topic in topics]
            if movable:
                # Move a partition the donor did not own before, if any (it costs no stickiness).
                tp = max(movable, key=lambda tp: (previous.get(tp) != donor, tp))
                return tp, donor, receiver
    return None


def sticky_assign(members: Mapping[str, Subscription], partitions_per_topic: Mapping[str, int],
                  current: Mapping[str, Iterable[TopicPartition]] | None = None,
                  generations: Mapping[str, int] | None = None) -> Assignment:
    """Kafka's StickyAssignor (eager): balanced, and every member keeps as much of what it owns as balance
    allows. Ownership comes from ``current`` or the subscriptions (see :func:`resolve_ownership`).

    Example: ``c1`` owns ``t-0 t-1 t-2``, ``c2`` owns ``t-3``, ``t`` has 4 partitions and ``c3`` joins:
    ``c1`` keeps ``t-0 t-1``, ``c2`` keeps ``t-3``, ``c3`` gets ``t-2``.
    """
    previous = resolve_ownership(members, current, generations)
    rank = {m: i for i, m in enumerate(member_order(members))}
    owned_by: dict[str, set[TopicPartition]] = {m: set() for m in members}
    unowned = []
    for tp in _subscribed_partitions(members, partitions_per_topic):
        owner = previous.get(tp)
        if owner is not None and tp.topic in members[owner].topics:
            owned_by[owner].add(tp)
        else:
            unowned.append(tp)
    _assign_unowned(members, owned_by, unowned, rank)
    while (move := _find_move(members, owned_by, previous, rank)) is not None:
        tp, donor, receiver = move
        owned_by[donor].remove(tp)
        owned_by[receiver].add(tp)
    return {m: sorted(owned_by[m]) for m in members}


def cooperative_sticky_assign(members: Mapping[str, Subscription], partitions_per_topic: Mapping[str, int],
                              current: Mapping[str, Iterable[TopicPartition]] | None = None,
                              generations: Mapping[str, int] | None = None) -> AssignmentResult:
    """Kafka's CooperativeStickyAssignor: :func:`sticky_assign`, then every partition whose owner changes
    is withheld from its new owner and reported as revoked (the two-phase move of KIP-429).

    Example: ``c1`` owns ``t-0 t-1``, ``t`` has 2 partitions and ``c2`` joins. The sticky target moves
    ``t-1`` to ``c2``; this rebalance gives ``c1 -> t-0``, ``c2 -> []`` and ``revoked = {t-1}``; ``c1``
    revokes ``t-1``, and the follow-up rebalance (``c1`` owns ``t-0``, nobody owns ``t-1``) gives
    ``c1 -> t-0``, ``c2 -> t-1`` with nothing revoked.
    """
    previous = resolve_ownership(members, current, generations)
    target = sticky_assign(members, partitions_per_topic, current, generations)
    revoked = frozenset(tp for m, tps in target.items() for tp in tps if previous.get(tp, m) != m)
    assignment = {m: [tp for tp in tps if tp not in revoked] for m, tps in target.items()}
    return AssignmentResult(assignment, revoked)


AssignFunction = Callable[[Mapping[str, Subscription], Mapping[str, int],
                           Mapping[str, Iterable[TopicPartition]] | None, Mapping[str, int] | None],
                          AssignmentResult]


@dataclasses.dataclass(frozen=True)
class Assignor:
    """A named assignor with one calling convention for the coordinator."""

    name: str
    rebalance_protocol: RebalanceProtocol
    function: AssignFunction

    def assign(self, members: Mapping[str, Subscription], partitions_per_topic: Mapping[str, int],
               current: Mapping[str, Iterable[TopicPartition]] | None = None,
               generations: Mapping[str, int] | None = None) -> AssignmentResult:
        return self.function(members, partitions_per_topic, current, generations)


def _eager(function: Callable[[Mapping[str, Subscription], Mapping[str, int]], Assignment]) -> AssignFunction:
    return lambda members, partitions, current, generations: AssignmentResult(function(members, partitions))


ASSIGNORS: dict[str, Assignor] = {
    "range": Assignor("range", RebalanceProtocol.EAGER, _eager(range_assign)),
    "roundrobin": Assignor("roundrobin", RebalanceProtocol.EAGER, _eager(roundrobin_assign)),
    "sticky": Assignor("sticky", RebalanceProtocol.EAGER,
                       lambda m, p, c, g: AssignmentResult(sticky_assign(m, p, c, g))),
    "cooperative-sticky": Assignor("cooperative-sticky", RebalanceProtocol.COOPERATIVE,
                                   cooperative_sticky_assign),
}


def common_protocols(member_protocols: Iterable[Sequence[str]]) -> set[str]:
    """The protocols every member supports (all of them for no members)."""
    common: set[str] | None = None
    for protocols in member_protocols:
        common = set(protocols) if common is None else common & set(protocols)
    return common if common is not None else set()


def select_protocol(member_protocols: Mapping[str, Sequence[str]]) -> str:
    """Kafka's protocol selection: among the protocols every member supports, each member votes for the
    first one in its own preference order; most votes wins, a tie goes to the protocol preferred by the
    first member (in ``member_protocols`` order). When all members list the same protocols in the same
    order this is simply the first protocol every member supports.

    Example: ``{"a": ["cooperative-sticky", "range"], "b": ["range"]}`` selects ``"range"``."""
    candidates = common_protocols(member_protocols.values())
    if not candidates:
        raise InconsistentGroupProtocolError(
            "no partition assignment strategy is supported by every member of the group",
            member_protocols={m: list(p) for m, p in member_protocols.items()})
    votes: collections.Counter[str] = collections.Counter(
        next(p for p in protocols if p in candidates) for protocols in member_protocols.values())
    first = next(iter(member_protocols.values()))
    best = max(votes.values())
    return next(p for p in first if p in candidates and votes[p] == best)
