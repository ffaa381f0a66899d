"""The partition core's decisions (raystream.core.partition): roles, produce checks, idempotent outcomes,
acks=all readiness, fetch limits, the high watermark and the one ISR proposal state. Pure and fast."""

import pytest

from raystream.core.partition import APPEND, Partition, dedup_outcome
from raystream.core.producer_state import DuplicateBatch, ReplayOverlap
from raystream.errors import (
    FencedLeaderEpochError,
    NotEnoughReplicasAfterAppendError,
    NotEnoughReplicasError,
    NotLeaderError,
    OffsetOutOfRangeError,
    UnknownLeaderEpochError,
)
from raystream.protocol import EARLIEST, LATEST, ProduceResult, Role


def leader(isr=(1, 2, 3), epoch=1, leo=10, hw=0, now_ms=0) -> Partition:
    p = Partition("t-0 broker=1", 1)
    p.become_leader(epoch, (1, 2, 3), isr, 0, log_end_offset=leo, high_watermark=hw, now_ms=now_ms)
    return p


# -- roles ---------------------------------------------------------------------------------------------------
def test_roles_follow_the_transition_table():
    p = Partition("t-0 broker=1", 1, high_watermark=4)
    assert (p.role, p.leader_epoch, p.high_watermark) == (Role.OFFLINE, -1, 4)
    p.become_follower(1, 2, (1, 2))
    assert (p.role, p.leader, p.replicas) == (Role.FOLLOWER, 2, (1, 2))
    p.become_leader(2, (1, 2), (1, 2), 3, log_end_offset=10, high_watermark=6, now_ms=0)
    assert (p.role, p.leader, p.isr, p.partition_epoch) == (Role.LEADER, 1, (1, 2), 3)
    assert p.high_watermark == 6
    with pytest.raises(FencedLeaderEpochError):
        p.become_follower(1, 2, (1, 2))
    p.stop()
    assert p.role is Role.OFFLINE


def test_become_leader_bounds_the_high_watermark_by_the_log_end():
    assert leader(leo=5, hw=9).high_watermark == 5


def test_accept_replication_learns_a_newer_epoch_through_become_follower():
    p = leader(epoch=3)
    p.record_follower(2, 10, 10, 0)
    p.start_isr_proposal((1, 2))
    p.accept_replication(4, 2)
    assert (p.role, p.leader_epoch, p.leader) == (Role.FOLLOWER, 4, 2)
    assert p.followers == {} and p.pending_isr is None  # what become_follower resets
    assert p.replicas == (1, 2, 3)  # the replica set is kept: the push does not carry it
    with pytest.raises(FencedLeaderEpochError):
        p.accept_replication(3, 3)


def test_accept_replication_at_the_current_epoch_keeps_a_follower_as_is():
    p = Partition("t-0 broker=1", 1)
    p.become_follower(2, 3, (1, 3))
    p.accept_replication(2, 3)
    assert (p.role, p.leader_epoch, p.leader, p.replicas) == (Role.FOLLOWER, 2, 3, (1, 3))


def test_check_leader():
    p = leader(epoch=2)
    p.check_leader(None)
    p.check_leader(2)
    with pytest.raises(FencedLeaderEpochError):
        p.check_leader(1)
    with pytest.raises(UnknownLeaderEpochError):
        p.check_leader(3)
    p.become_follower(3, 2, (1, 2))
    with pytest.raises(NotLeaderError) as info:
        p.check_leader(None)
    assert info.value.leader == 2


# -- produce -------------------------------------------------------------------------------------------------
def test_check_produce_validates_acks_and_min_insync_replicas():
    p = leader(isr=(1,))
    p.check_produce(1, None, 2)  # min ISR only matters to acks=all
    with pytest.raises(NotEnoughReplicasError):
        p.check_produce(-1, None, 2)
    with pytest.raises(ValueError, match="acks"):
        p.check_produce(2, None, 1)


def test_dedup_outcomes():
    assert dedup_outcome(None, 3, 0, False) is APPEND
    assert dedup_outcome(ReplayOverlap(2), 5, 0, False).skip == 2
    dup = DuplicateBatch(7, 0, 0, 2, base_offset=10, last_offset=12, timestamp=99)
    original = dedup_outcome(dup, 3, 4, log_append_time=False)
    assert not original.append and original.last_offset == 12
    assert original.result == ProduceResult(10, -1, 4, 3, 99)
    assert dedup_outcome(dup, 3, 4, log_append_time=True).result == ProduceResult(10, 99, 4, 3, 99)
    replayed = dedup_outcome(DuplicateBatch(7, 0, 0, 2, -1, 20, 55), 3, 4, False)
    assert replayed.result == ProduceResult(-1, -1, 4, 3, 55) and replayed.last_offset == 20


def test_ack_ready_waits_for_the_high_watermark_then_checks_the_isr():
    p = leader(isr=(1, 2))
    assert not p.ack_ready(9, 2)
    p.record_follower(2, 10, 10, 0)
    assert p.update_high_watermark(10)
    assert p.ack_ready(9, 2)
    p.apply_isr((1,), 1)
    with pytest.raises(NotEnoughReplicasAfterAppendError):
        p.ack_ready(9, 2)
    assert p.ack_ready(9, None)  # transaction markers: no min-ISR check


def test_ack_ready_fails_once_leadership_is_lost():
    p = leader(isr=(1, 2))
    p.become_follower(2, 2, (1, 2))
    with pytest.raises(NotLeaderError, match="lost leadership"):
        p.ack_ready(9, 1)


# -- fetch ---------------------------------------------------------------------------------------------------
def test_fetch_limit_is_the_high_watermark_or_the_last_stable_offset():
    p = leader(isr=(1,))
    p.update_high_watermark(10)
    assert p.fetch_limit(False, 4) == 10
    assert p.fetch_limit(True, 4) == 4
    assert p.fetch_limit(True, None) == 10
    assert p.fetch_limit(True, 12) == 10


def test_fetch_position_is_judged_against_the_log_end_offset():
    p = leader(hw=3)
    p.check_fetch_position(8, 2, 10, "t-0")  # between HW and LEO: wait, not out of range
    for position in (1, 11):
        with pytest.raises(OffsetOutOfRangeError):
            p.check_fetch_position(position, 2, 10, "t-0")


def test_list_offset():
    timestamps = {100: 3, 200: 8}
    lookup = timestamps.get
    assert Partition.list_offset(EARLIEST, 6, 2, lookup) == 2
    assert Partition.list_offset(LATEST, 6, 2, lookup) == 6
    assert Partition.list_offset(100, 6, 2, lookup) == 3
    assert Partition.list_offset(200, 6, 2, lookup) == -1  # at or above the limit
    assert Partition.list_offset(300, 6, 2, lookup) == -1
    with pytest.raises(ValueError):
        Partition.list_offset(-5, 6, 2, lookup)


# -- the high watermark ----------------------------------------------------------------------------------------
def test_the_leaders_high_watermark_is_the_isr_minimum_and_never_goes_back():
    p = leader(isr=(1, 2))
    p.record_follower(2, 6, 10, 0)
    assert p.update_high_watermark(10) and p.high_watermark == 6
    p.record_follower(2, 4, 10, 0)
    assert not p.update_high_watermark(10) and p.high_watermark == 6


def test_a_follower_takes_the_leaders_high_watermark_bounded_by_its_log_end():
    p = Partition("t-0 broker=1", 1)
    p.become_follower(1, 2, (1, 2))
    assert not p.update_high_watermark(10)  # only a leader computes it
    assert p.follow_high_watermark(8, 5) and p.high_watermark == 5
    assert not p.follow_high_watermark(3, 5) and p.high_watermark == 5


# -- ISR proposals ---------------------------------------------------------------------------------------------
def test_one_isr_proposal_in_flight_at_a_time():
    p = leader(isr=(1, 2))
    assert p.start_isr_proposal(None) is None
    first = p.start_isr_proposal((1, 2, 3))
    assert first is not None and p.isr_change_in_flight
    assert (first.isr, first.leader_epoch, first.partition_epoch) == ((1, 2, 3), 1, 0)
    assert p.start_isr_proposal((1,)) is None  # the shrink waits for the expansion's answer
    assert p.maximal_isr == (1, 2, 3)
    assert p.isr_proposal_answered(first, (1, 2, 3), 1)
    assert not p.isr_change_in_flight and p.pending_isr is None and p.isr == (1, 2, 3)


def test_an_unanswered_proposal_stays_pending_and_merges_with_the_next():
    p = leader(isr=(1,))
    first = p.start_isr_proposal((1, 2))
    p.isr_proposal_failed(first)
    assert not p.isr_change_in_flight and p.pending_isr == (1, 2)
    p.start_isr_proposal((1, 3))
    assert set(p.pending_isr) == {1, 2, 3}


def test_an_answer_for_an_older_leader_epoch_is_not_applied():
    p = leader(isr=(1, 2))
    proposal = p.start_isr_proposal((1, 2, 3))
    p.become_leader(2, (1, 2, 3), (1, 2), 1, log_end_offset=10, high_watermark=0, now_ms=0)
    assert not p.isr_proposal_answered(proposal, (1, 2, 3), 2)
    assert p.isr == (1, 2) and not p.isr_change_in_flight


def test_shrink_names_laggards_of_the_maximal_isr():
    p = leader(isr=(1, 2, 3), now_ms=0)
    p.record_follower(2, 10, 10, 5_000)
    assert p.isr_to_shrink(5_000, 10_000) is None
    assert p.isr_to_shrink(12_000, 10_000) == (1, 2)
