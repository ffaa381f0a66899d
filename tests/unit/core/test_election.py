"""Leader election rules (pure)."""

from __future__ import annotations

from raystream.core.election import NO_LEADER, elect_leader, fence_dead_followers, replacement_broker
from raystream.protocol import PartitionState


def state(leader=0, isr=(0, 1, 2), replicas=(0, 1, 2), epoch=3, pe=7):
    return PartitionState("t", 0, tuple(replicas), leader, epoch, tuple(isr), pe)


def test_live_leader_means_no_election():
    assert elect_leader(state(), {0, 1, 2}, unclean_allowed=False) is None
    assert elect_leader(state(), {0}, unclean_allowed=True) is None


def test_dead_leader_hands_over_to_first_live_isr_member_in_replica_order():
    e = elect_leader(state(leader=0, replicas=(0, 2, 1)), {1, 2}, unclean_allowed=False)
    assert (e.leader, e.leader_epoch, e.isr, e.clean) == (2, 4, (2, 1), True)


def test_never_elects_outside_the_isr_unless_unclean_is_enabled():
    s = state(leader=0, isr=(0, 1))
    e = elect_leader(s, {2}, unclean_allowed=False)
    assert (e.leader, e.leader_epoch, e.isr) == (NO_LEADER, 4, (0, 1))  # offline, ISR kept
    e = elect_leader(s, {2}, unclean_allowed=True)
    assert (e.leader, e.isr, e.clean) == (2, (2,), False)


def test_offline_partition_comes_back_when_an_isr_member_returns():
    s = state(leader=NO_LEADER, isr=(0, 1), epoch=4)
    assert elect_leader(s, {2}, unclean_allowed=False) is None
    e = elect_leader(s, {1, 2}, unclean_allowed=False)
    assert (e.leader, e.leader_epoch, e.isr) == (1, 5, (1,))


def test_restarted_leader_yields_to_another_isr_member_or_leads_again_with_a_new_epoch():
    e = elect_leader(state(), {0, 1, 2}, unclean_allowed=False, avoid=0)
    assert (e.leader, e.leader_epoch) == (1, 4)
    e = elect_leader(state(isr=(0,)), {0, 1, 2}, unclean_allowed=False, avoid=0)
    assert (e.leader, e.leader_epoch, e.isr) == (0, 4, (0,))
    assert elect_leader(state(), {0, 1, 2}, unclean_allowed=False, avoid=1) is None  # a follower restarted


def test_dead_followers_leave_the_isr_but_the_leader_stays():
    assert fence_dead_followers(state(), {0, 2}) == (0, 2)
    assert fence_dead_followers(state(), {0, 1, 2}) is None
    assert fence_dead_followers(state(), {1, 2}) is None  # leader dead: that is an election, not a fence


def test_replacement_broker_is_least_loaded_live_non_replica():
    s = state(replicas=(0, 1, 2))
    assert replacement_broker(s, 1, [0, 2, 3, 4], {3: 5, 4: 2}) == 4
    assert replacement_broker(s, 1, [0, 2], {}) is None
    assert replacement_broker(s, 9, [3], {}) is None
