"""What the group state machine (:mod:`raystream.core.group`) keeps per member and answers with.

:class:`Member` is the coordinator's mutable record of one member; the frozen results are what each
request returns (:class:`JoinResult`, :class:`JoinCompletion`, :class:`SyncResult`, :class:`HeartbeatResult`,
:class:`PollResult`), and :class:`GroupSnapshot` is a point-in-time view for DescribeGroups (the public
answer an Admin gets is :class:`raystream.protocol.GroupDescription`, built from it by the coordinator).
Split from the state machine so that module holds the transitions only.

Pure values: no I/O, no clock; a :class:`Member` is mutated only by its :class:`GroupMetadata`, on the
controller actor's event loop.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from raystream.core.assignors import Subscription
from raystream.protocol import TopicPartition

if TYPE_CHECKING:
    from raystream.core.group import GroupState

MemberIdFactory = Callable[[str], str]  # client_id -> a new, unique member id


def random_member_ids(rng: random.Random) -> MemberIdFactory:
    """Kafka-style member ids ``<client_id>-<uuid4>`` drawn from ``rng`` (seed it for reproducibility)."""
    return lambda client_id: f"{client_id or 'consumer'}-{uuid.UUID(int=rng.getrandbits(128), version=4)}"


@dataclasses.dataclass
class Member:
    """One member as the coordinator knows it (mutable; read it through :meth:`GroupMetadata.describe`)."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    protocols: tuple[str, ...]
    subscription: Subscription
    session_timeout_ms: int
    rebalance_timeout_ms: int
    last_heartbeat_ms: int
    assignment: tuple[TopicPartition, ...] = ()  # of the current generation
    owned: tuple[TopicPartition, ...] = ()  # what the member was last told by sync
    joined: bool = False  # has (re)joined the running join phase


@dataclasses.dataclass(frozen=True)
class JoinResult:
    """``awaiting``: the join phase is running — the member's answer is the next :class:`JoinCompletion`.
    Otherwise the member is in the current generation at once and may ``sync``."""

    member_id: str
    generation_id: int
    protocol: str | None
    leader_id: str | None
    awaiting: bool


@dataclasses.dataclass(frozen=True)
class JoinCompletion:
    """The answer to every awaiting join: the new generation. ``subscriptions`` is for a leader that
    assigns (``server_assignment`` False); ``revoked`` partitions wait for the cooperative follow-up."""

    generation_id: int
    protocol: str | None
    leader_id: str | None
    members: tuple[str, ...]
    subscriptions: Mapping[str, Subscription]
    server_assignment: bool
    revoked: frozenset[TopicPartition] = frozenset()


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """``assignment`` None: the leader has not sent the assignment yet (sync again once it has).
    ``revoked``: partitions the member was last told it owns and must now give up. ``rejoin``: a rebalance
    has started (the cooperative follow-up); rejoin after revoking."""

    generation_id: int
    protocol: str | None
    assignment: tuple[TopicPartition, ...] | None
    revoked: tuple[TopicPartition, ...] = ()
    rejoin: bool = False


@dataclasses.dataclass(frozen=True)
class HeartbeatResult:
    rebalance_in_progress: bool  # the member must rejoin


@dataclasses.dataclass(frozen=True)
class PollResult:
    expired: tuple[str, ...]  # members removed by session, rebalance or sync timeout
    completion: JoinCompletion | None  # the join phase just completed
    next_deadline_ms: int | None  # call poll again at the latest then


@dataclasses.dataclass(frozen=True)
class MemberSnapshot:
    member_id: str
    group_instance_id: str | None
    client_id: str
    topics: tuple[str, ...]
    assignment: tuple[TopicPartition, ...]


@dataclasses.dataclass(frozen=True)
class GroupSnapshot:
    group_id: str
    state: GroupState
    generation_id: int
    protocol: str | None
    leader_id: str | None
    members: tuple[MemberSnapshot, ...]


@dataclasses.dataclass(frozen=True)
class ClassicJoinResult:
    """The coordinator's answer to a JoinGroup of Kafka's classic protocol, for clients that send SyncGroup
    separately (the gateway's Kafka clients). ``leader_id``: the member that computes the assignment; it is
    None when the coordinator assigns (``server_assignment``: its protocol is one of raystream's assignors),
    and then every member is a follower. ``members``: (member id, group instance id, subscription) of every
    member, for the leader of a group the leader assigns; empty otherwise."""

    member_id: str
    generation_id: int
    protocol: str | None
    leader_id: str | None
    server_assignment: bool
    members: tuple[tuple[str, str | None, Subscription], ...] = ()
