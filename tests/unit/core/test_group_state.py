"""The consumer-group coordinator state machine (pure): joins, syncs, heartbeats, expiry, static members,
cooperative follow-ups, leader-side assignment and commit validation."""

from __future__ import annotations

import itertools
import pickle
import random

import pytest

from raystream.core.assignors import Subscription
from raystream.core.group import GroupMetadata, GroupState
from raystream.core.group_results import random_member_ids
from raystream.errors import (
    CommitFailedError,
    GroupIdNotFoundError,
    GroupNotEmptyError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    InvalidConfigurationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from raystream.protocol import TopicPartition

SESSION, REBALANCE = 10_000, 30_000


def tps(topic: str, *partitions: int) -> tuple[TopicPartition, ...]:
    return tuple(TopicPartition(topic, p) for p in partitions)


def make_group(delay: int = 0, partitions: dict[str, int] | None = None) -> GroupMetadata:
    ids = itertools.count()
    return GroupMetadata("g", member_ids=lambda client_id: f"{client_id or 'c'}-{next(ids)}",
                         initial_rebalance_delay_ms=delay, topic_partitions=partitions or {"t": 4})


def join(group, member_id=None, *, now=0, instance=None, topics=("t",), protocols=("range",),
         session=SESSION, rebalance=REBALANCE, client_id=""):
    return group.join(member_id, instance, protocols, Subscription(list(topics)), session_timeout_ms=session,
                      rebalance_timeout_ms=rebalance, now_ms=now, client_id=client_id)


def stable_group(n: int = 2, protocols=("range",), partitions=None, instances=None):
    """A Stable generation-1 group of ``n`` members, every member synced."""
    group = make_group(partitions=partitions)
    ids = [join(group, protocols=protocols, instance=(instances[i] if instances else None)).member_id
           for i in range(n)]
    completion = group.poll(0).completion
    assert completion is not None and group.state is GroupState.STABLE
    for member_id in ids:
        group.sync(member_id, 1, now_ms=0)
    return group, ids


# -- join phase -------------------------------------------------------------------------------------------
def test_first_join_waits_for_the_initial_rebalance_delay():
    group = make_group(delay=3_000)
    result = join(group, now=1_000, client_id="app")
    assert result.awaiting and result.member_id == "app-0" and result.generation_id == 0
    assert group.state is GroupState.PREPARING_REBALANCE
    poll = group.poll(3_999)
    assert poll.completion is None and poll.next_deadline_ms == 4_000
    poll = group.poll(4_000)
    assert poll.completion.generation_id == 1 and poll.completion.members == ("app-0",)
    assert poll.completion.protocol == "range" and poll.completion.leader_id == "app-0"
    assert group.state is GroupState.STABLE and group.members["app-0"].assignment == tps("t", 0, 1, 2, 3)


def test_initial_delay_restarts_with_each_new_member_but_never_beyond_the_rebalance_timeout():
    group = make_group(delay=3_000)
    join(group, now=0, rebalance=5_000)
    join(group, now=2_000)
    assert group.poll(3_000).completion is None  # restarted at 2_000: until 5_000
    join(group, now=4_500)
    assert group.poll(4_999).completion is None
    completion = group.poll(5_000).completion  # capped at the rebalance timeout
    assert completion is not None and len(completion.members) == 3


def test_join_phase_completes_as_soon_as_every_member_rejoined():
    group, (a, b) = stable_group()
    c = join(group, now=100).member_id
    assert group.state is GroupState.PREPARING_REBALANCE
    assert group.heartbeat(a, 1, 110).rebalance_in_progress
    assert join(group, a, now=120).awaiting
    assert group.poll(130).completion is None  # b has not rejoined yet
    join(group, b, now=140)
    completion = group.poll(140).completion
    assert completion.generation_id == 2 and set(completion.members) == {a, b, c}
    assert sorted(len(group.members[m].assignment) for m in (a, b, c)) == [1, 1, 2]


def test_members_that_do_not_rejoin_within_the_rebalance_timeout_are_dropped():
    group, (a, b) = stable_group()
    assert group.update_topic_partitions({"t": 5}, 1_000)
    join(group, a, now=1_000)
    group.heartbeat(b, 1, 20_000)  # alive, but never rejoins
    poll = group.poll(1_000 + REBALANCE)
    assert poll.expired == (b,) and poll.completion.members == (a,)
    assert group.members[a].assignment == tps("t", 0, 1, 2, 3, 4)


def test_a_member_waiting_in_the_join_phase_is_kept_alive():
    group, (a, b) = stable_group()
    assert join(group, a, now=1_000, topics=("t", "u")).awaiting
    group.heartbeat(b, 1, 1_000 + SESSION)
    poll = group.poll(1_000 + SESSION + 1)  # a's session would be over, but its join is parked
    assert poll.expired == () and poll.completion is None
    join(group, b, now=1_000 + SESSION + 2)
    assert group.poll(1_000 + SESSION + 2).completion.generation_id == 2


def test_rejoin_with_the_same_metadata_in_stable_returns_the_current_generation():
    group, (a, _) = stable_group()
    result = join(group, a, now=10)
    assert not result.awaiting and result.generation_id == 1 and group.state is GroupState.STABLE
    assert join(group, a, now=20, topics=("t", "u")).awaiting  # a changed subscription rebalances


def test_protocol_is_voted_and_inconsistent_protocols_are_rejected():
    group = make_group()
    join(group, protocols=("cooperative-sticky", "range"))
    join(group, protocols=("range",))
    with pytest.raises(InconsistentGroupProtocolError):
        join(group, protocols=("roundrobin",))
    assert group.poll(0).completion.protocol == "range"


def test_timeouts_must_be_positive():
    with pytest.raises(InvalidConfigurationError):
        join(make_group(), session=0)


# -- sync and heartbeat -----------------------------------------------------------------------------------
def test_sync_and_heartbeat_errors_as_kafka():
    group, (a, _) = stable_group()
    with pytest.raises(UnknownMemberIdError):
        group.sync("nobody", 1, now_ms=0)
    with pytest.raises(IllegalGenerationError):
        group.heartbeat(a, 0, 0)
    assert group.sync(a, 1, now_ms=5).assignment == tps("t", 0, 1)
    join(group, now=10)
    with pytest.raises(RebalanceInProgressError):
        group.sync(a, 1, now_ms=11)


def test_session_expiry_removes_the_member_and_rebalances():
    group, (a, b) = stable_group()
    group.heartbeat(a, 1, 9_000)
    poll = group.poll(SESSION)
    assert poll.expired == (b,) and group.state is GroupState.PREPARING_REBALANCE
    assert poll.next_deadline_ms == 9_000 + SESSION
    join(group, a, now=SESSION + 1)
    assert group.poll(SESSION + 1).completion.members == (a,)


def test_members_that_never_sync_are_removed_after_the_rebalance_timeout():
    group = make_group()
    a, b = join(group).member_id, join(group).member_id
    group.poll(0)
    group.sync(a, 1, now_ms=0)
    for now in range(5_000, REBALANCE, 5_000):
        group.heartbeat(a, 1, now)
        group.heartbeat(b, 1, now)
    assert group.poll(REBALANCE).expired == (b,)


def test_leave_rebalances_and_the_last_leave_empties_the_group():
    group, (a, b) = stable_group()
    assert group.leave(a, 10) is True and group.state is GroupState.PREPARING_REBALANCE
    assert group.poll(10).completion is None  # b must rejoin
    assert group.leave(b, 20) is False
    completion = group.poll(20).completion
    assert completion.members == () and completion.generation_id == 2
    assert group.state is GroupState.EMPTY and group.protocol is None and group.leader_id is None
    with pytest.raises(UnknownMemberIdError):
        group.leave(a, 30)


def test_partition_count_change_rebalances():
    group, (a, b) = stable_group()
    assert group.update_topic_partitions({"t": 4, "other": 9}, 5) is False  # nobody subscribes to "other"
    assert group.update_topic_partitions({"t": 6}, 5) is True
    join(group, a, now=6)
    join(group, b, now=6)
    group.poll(6)
    assert [len(group.members[m].assignment) for m in (a, b)] == [3, 3]


# -- static membership ------------------------------------------------------------------------------------
def test_static_member_restart_keeps_its_assignment_without_a_rebalance():
    group, (a, b) = stable_group(instances=["i-a", "i-b"])
    before = group.members[a].assignment
    result = join(group, None, instance="i-a", now=100)
    assert not result.awaiting and result.member_id != a and result.generation_id == 1
    assert group.state is GroupState.STABLE
    assert group.sync(result.member_id, 1, now_ms=101).assignment == before
    with pytest.raises(UnknownMemberIdError):  # the old incarnation is fenced
        group.heartbeat(a, 1, 102)
    with pytest.raises(UnknownMemberIdError):
        join(group, "someone-else", instance="i-b", now=103)


def test_static_member_back_after_its_session_timeout_triggers_a_rebalance():
    group, (a, b) = stable_group(instances=["i-a", "i-b"])
    group.heartbeat(b, 1, SESSION)
    result = join(group, None, instance="i-a", now=SESSION + 1)
    assert result.awaiting and a not in group.members and group.state is GroupState.PREPARING_REBALANCE


def test_static_member_with_a_new_subscription_triggers_a_rebalance():
    group, _ = stable_group(instances=["i-a", "i-b"])
    assert join(group, None, instance="i-a", topics=("t", "u"), now=5).awaiting


# -- cooperative ------------------------------------------------------------------------------------------
def test_cooperative_rebalance_revokes_then_reassigns_in_a_follow_up():
    group = make_group()
    a = join(group, protocols=("cooperative-sticky",)).member_id
    group.poll(0)
    assert group.sync(a, 1, now_ms=0).assignment == tps("t", 0, 1, 2, 3)
    b = join(group, now=10, protocols=("cooperative-sticky",)).member_id
    assert group.heartbeat(a, 1, 11).rebalance_in_progress
    join(group, a, now=12, protocols=("cooperative-sticky",))
    completion = group.poll(12).completion
    assert completion.revoked == frozenset(tps("t", 2, 3))
    assert group.sync(b, 2, now_ms=13).assignment == ()
    assert group.validate_commit(a, 2, now_ms=14) is None  # a commits what it is about to revoke
    result = group.sync(a, 2, now_ms=15)
    assert result.assignment == tps("t", 0, 1) and result.revoked == tps("t", 2, 3) and result.rejoin
    assert group.state is GroupState.PREPARING_REBALANCE
    group.validate_commit(a, 2)  # still allowed while preparing (revocation callbacks commit)
    join(group, a, now=16, protocols=("cooperative-sticky",))
    join(group, b, now=16, protocols=("cooperative-sticky",))
    assert not group.poll(16).completion.revoked
    assert group.sync(b, 3, now_ms=17).assignment == tps("t", 2, 3)
    assert group.sync(a, 3, now_ms=17).assignment == tps("t", 0, 1)


def coop_join(group, member_id=None, now=0, **subscription):
    return group.join(member_id, None, ["cooperative-sticky"], Subscription(["t"], **subscription),
                      session_timeout_ms=SESSION, rebalance_timeout_ms=REBALANCE, now_ms=now)


def test_cooperative_member_that_missed_its_sync_keeps_its_partitions_until_told():
    group = make_group()
    a = coop_join(group).member_id
    group.poll(0)
    group.sync(a, 1, now_ms=0)  # a holds t-0..3
    b = coop_join(group, now=1).member_id
    coop_join(group, a, now=1)
    assert group.poll(1).completion.revoked == frozenset(tps("t", 2, 3))
    c = coop_join(group, now=2).member_id  # a rebalance before a learned that it must give up t-2, t-3
    coop_join(group, a, now=2)
    coop_join(group, b, now=2)
    completion = group.poll(2).completion
    assert completion.revoked  # still a's: withheld again, never handed to b or c directly
    for m in (b, c):
        assert not set(group.members[m].assignment) & set(tps("t", 0, 1, 2, 3))


def test_cooperative_uses_the_ownership_a_member_reports():
    group = make_group()
    a = coop_join(group).member_id
    group.poll(0)
    group.sync(a, 1, now_ms=0)
    b = coop_join(group, now=1).member_id
    coop_join(group, a, now=1, owned_partitions=list(tps("t", 0, 1)), generation_id=1)  # a gave up t-2, t-3
    completion = group.poll(1).completion
    assert not completion.revoked and group.members[b].assignment == tps("t", 2, 3)


# -- leader-side assignment -------------------------------------------------------------------------------
def test_unknown_protocol_waits_for_the_leaders_assignment():
    group = make_group()
    leader = join(group, protocols=("custom",)).member_id
    follower = join(group, protocols=("custom",)).member_id
    completion = group.poll(0).completion
    assert not completion.server_assignment and set(completion.subscriptions) == {leader, follower}
    assert group.state is GroupState.COMPLETING_REBALANCE
    assert group.sync(follower, 1, now_ms=1).assignment is None
    with pytest.raises(RebalanceInProgressError):
        group.validate_commit(follower, 1)
    with pytest.raises(InvalidConfigurationError):
        group.sync(leader, 1, {leader: tps("t", 0), follower: tps("t", 0)}, now_ms=2)
    result = group.sync(leader, 1, {leader: tps("t", 0, 1), follower: tps("t", 2, 3), "ghost": tps("t", 9)},
                        now_ms=2)
    assert result.assignment == tps("t", 0, 1) and group.state is GroupState.STABLE
    assert group.sync(follower, 1, now_ms=3).assignment == tps("t", 2, 3)
    assert join(group, leader, now=4, protocols=("custom",)).awaiting  # a leader's rejoin rebalances


# -- commits ----------------------------------------------------------------------------------------------
def test_commit_validation():
    group = make_group()
    group.validate_commit("", -1)  # a manually assigned consumer commits into an empty group
    a = join(group).member_id
    group.poll(0)
    group.validate_commit(a, 1, now_ms=5)
    with pytest.raises(CommitFailedError) as stale:
        group.validate_commit(a, 0)
    message = str(stale.value)
    assert "max_poll_interval_ms" in message and "max_poll_records" in message
    copy = pickle.loads(pickle.dumps(stale.value))
    assert (copy.member_id, copy.generation_id, copy.group_id) == (a, 0, "g")
    with pytest.raises(CommitFailedError, match="not in the group"):
        group.validate_commit("gone", 1)
    with pytest.raises(CommitFailedError):
        group.validate_commit("", -1)  # not allowed once the group has members


# -- lifecycle --------------------------------------------------------------------------------------------
def test_delete_dead_and_illegal_transitions():
    group, (a, _) = stable_group()
    with pytest.raises(GroupNotEmptyError):
        group.delete()
    with pytest.raises(AssertionError, match="Stable -> Empty"):
        group._transition(GroupState.EMPTY)
    empty = make_group()
    empty.delete()
    assert empty.state is GroupState.DEAD
    with pytest.raises(GroupIdNotFoundError):
        join(empty)
    with pytest.raises(GroupIdNotFoundError):
        empty.validate_commit("", -1)
    assert empty.poll(0).completion is None


def test_describe_and_member_ids():
    group, (a, b) = stable_group()
    description = group.describe()
    assert (description.group_id, description.state, description.generation_id, description.protocol) == (
        "g", GroupState.STABLE, 1, "range")
    assert [(m.member_id, m.assignment) for m in description.members] == [
        (a, tps("t", 0, 1)), (b, tps("t", 2, 3))]
    factory = random_member_ids(random.Random(1))
    assert factory("app") == random_member_ids(random.Random(1))("app") and factory("app").startswith("app-")
    duplicate = GroupMetadata("d", member_ids=lambda client_id: "same")
    join(duplicate)
    with pytest.raises(AssertionError, match="duplicate"):
        join(duplicate)
