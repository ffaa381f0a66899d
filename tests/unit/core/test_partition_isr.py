"""The leader's ISR proposals and the high watermark: KIP-497's maximal ISR.

The invariant acks=all relies on: every member of the ISR the controller has recorded holds every record
below the leader's high watermark, at every moment, including while a proposal is in flight (the
controller may record it before the leader hears the answer, and may elect the new member at once)."""

from raystream.core.election import elect_leader
from raystream.core.metadata import ClusterMetadata
from raystream.core.partition import Partition


def leader_of(replicas, isr, partition_epoch, leo, hw):
    state = Partition("t-0 broker=1", 1)
    state.become_leader(1, replicas, isr, partition_epoch, log_end_offset=leo, high_watermark=hw, now_ms=0)
    return state


def test_an_expansion_recorded_before_the_leader_hears_of_it_loses_no_acknowledged_record():
    # The interleaving of a chase-the-leader fault run: broker 2 rejoins at 732, the controller records
    # ISR (2, 1, 0) while its answer is on the way, 10 more records are acknowledged, the leader dies.
    md = ClusterMetadata("c")
    md.apply(ClusterMetadata.topic_record("t", {}, None, None, {0: (2, 1, 0)}))
    md.apply(ClusterMetadata.partition_record(md.topics["t"].partitions[0], 1, 1, (1, 0)))
    recorded = md.topics["t"].partitions[0]
    leader = leader_of(recorded.replicas, recorded.isr, recorded.partition_epoch, 732, 700)
    leo = {1: 732, 0: 732, 2: 732}
    leader.record_follower(0, 732, 732, 0)
    leader.record_follower(2, 732, 732, 0)
    leader.update_high_watermark(leo[1])
    proposal = leader.isr_to_expand(2)
    assert proposal == (2, 1, 0)
    leader.propose_isr(proposal)  # sent; the controller records it ...
    md.apply(ClusterMetadata.partition_record(recorded, 1, 1, proposal))
    recorded = md.topics["t"].partitions[0]
    leo[1] = leo[0] = 742  # ... and 10 records reach broker 0 only before the answer arrives
    leader.record_follower(0, 742, 742, 10)
    leader.update_high_watermark(leo[1])
    assert all(leo[b] >= leader.high_watermark for b in recorded.isr)
    assert leader.high_watermark == 732  # nothing past broker 2's log end is acknowledged
    election = elect_leader(recorded, live={2, 0}, unclean_allowed=False)
    assert election.leader == 2 and leo[2] >= leader.high_watermark
    # Once broker 2 has them the high watermark moves on, and the answer settles the proposal.
    leader.record_follower(2, 742, 742, 20)
    assert leader.update_high_watermark(742) and leader.high_watermark == 742
    leader.apply_isr(proposal, recorded.partition_epoch)
    leader.proposal_settled()
    assert leader.isr == (2, 1, 0) and leader.pending_isr is None


def test_an_unanswered_proposal_stays_counted_until_an_answer_or_a_newer_state():
    leader = leader_of((2, 1, 0), (1, 0), 5, 10, 10)
    leader.record_follower(0, 10, 10, 0)
    leader.record_follower(2, 10, 10, 0)
    leader.propose_isr(leader.isr_to_expand(2))  # its answer times out: outcome unknown
    leader.apply_isr((1, 0), 5)  # a late copy of the state the proposal was computed from settles nothing
    assert leader.pending_isr == (2, 1, 0)
    leader.record_follower(0, 20, 20, 1)
    leader.update_high_watermark(20)
    assert leader.high_watermark == 10
    leader.apply_isr((1, 0), 6)  # a newer state from the controller: the proposal was not recorded
    assert leader.pending_isr is None
    assert leader.update_high_watermark(20) and leader.high_watermark == 20


def test_a_pending_shrink_keeps_waiting_for_the_member_it_removes():
    leader = leader_of((2, 1, 0), (2, 1, 0), 1, 10, 0)
    leader.record_follower(0, 10, 10, 0)
    leader.record_follower(2, 5, 10, 0)
    leader.propose_isr((1, 0))
    leader.update_high_watermark(10)
    assert leader.high_watermark == 5
    leader.apply_isr((1, 0), 2)
    leader.proposal_settled()
    leader.update_high_watermark(10)
    assert leader.high_watermark == 10


def test_a_lagging_member_of_an_unsettled_proposal_is_reason_to_ask_again():
    leader = leader_of((2, 1, 0), (1, 0), 3, 10, 10)
    leader.record_follower(0, 10, 10, 0)
    leader.record_follower(2, 10, 10, 0)
    leader.propose_isr(leader.isr_to_expand(2))  # unanswered; then broker 2 stops answering
    leader.record_follower(0, 10, 10, 50_000)
    assert leader.isr_to_shrink(50_000, lag_time_max_ms=30_000) == (1, 0)  # the answer will settle it
    leader.propose_isr((1, 0))
    assert leader.pending_isr == (2, 1, 0)  # still counted until that answer
    leader.apply_isr((1, 0), 3)
    leader.proposal_settled()
    assert leader.maximal_isr == (1, 0)
