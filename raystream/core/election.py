"""Leader election and ISR fencing for one partition, as pure functions of its state and the live brokers.

Rules (Kafka's controller, KRaft flavour)::

    leader alive and in the ISR              -> no change (the ISR drops dead followers: fence_dead_followers)
    leader dead, a live ISR member exists    -> clean election: first live ISR member in replica order,
                                                 epoch + 1, ISR = its live members
    leader dead, no live ISR member          -> unclean election only if unclean.leader.election.enable:
                                                 first live replica, epoch + 1, ISR = (it,) — data may be lost;
                                                 else OFFLINE: leader -1, epoch + 1, ISR kept as it was so
                                                 that the last in-sync replica leads again when it returns
    offline, an ISR member is alive again    -> clean election as above
    a replica replaced (re-replication)      -> same leader, epoch + 1 (every replica learns the new set)

The leader epoch only ever grows, so a request stamped with an older epoch is fenced everywhere; the
partition epoch grows with every leader or ISR change, so an ISR proposal computed from a stale view is
rejected. The controller records the decision in its metadata log before telling any replica.

Pure and deterministic; thread-safe (no state).
"""

from __future__ import annotations

import dataclasses

from raystream.protocol import PartitionState

NO_LEADER = -1


@dataclasses.dataclass(frozen=True)
class Election:
    """A decided change of one partition: the new leader (-1: offline), epoch and ISR."""

    leader: int
    leader_epoch: int
    isr: tuple[int, ...]
    clean: bool
    reason: str


def needs_election(state: PartitionState, live: set[int]) -> bool:
    """True when the partition has no live leader (dead, or offline with a live ISR member to take over)."""
    if state.leader == NO_LEADER:
        return any(b in live for b in state.isr)
    return state.leader not in live


def elect_leader(state: PartitionState, live: set[int], unclean_allowed: bool, reason: str = "leader unavailable",
                 avoid: int | None = None) -> Election | None:
    """The election for ``state`` given the ``live`` brokers; None when nothing changes (the leader is alive,
    or the partition is offline and stays offline).

    ``avoid``: a live replica that must not simply carry on as leader — one whose process restarted and lost
    its leader state. It is elected again (with a new epoch) only when no other in-sync replica is alive."""
    forced = avoid is not None and avoid == state.leader
    unclean_candidate = unclean_allowed and any(b in live for b in state.replicas)
    if not forced and not needs_election(state, live) and not (state.leader == NO_LEADER and unclean_candidate):
        return None
    in_sync = [b for b in state.replicas if b in state.isr and b in live]
    preferred = [b for b in in_sync if b != avoid] or in_sync
    if preferred:
        isr = tuple(in_sync)
        return Election(preferred[0], state.leader_epoch + 1, isr, True, reason)
    if unclean_allowed:
        candidates = [b for b in state.replicas if b in live]
        if candidates:
            return Election(candidates[0], state.leader_epoch + 1, (candidates[0],), False,
                            f"{reason}; unclean election (no in-sync replica alive)")
    if state.leader == NO_LEADER:
        return None  # already offline
    # Keep the ISR: its members are the only replicas known to hold every acknowledged record.
    return Election(NO_LEADER, state.leader_epoch + 1, state.isr, True, f"{reason}; no in-sync replica alive")


def fence_dead_followers(state: PartitionState, live: set[int]) -> tuple[int, ...] | None:
    """The ISR without dead followers (the live leader stays), or None when nothing changes. Like KRaft
    removing a fenced broker from every ISR at once, so ``acks=all`` need not wait replica.lag.time.max.ms."""
    if state.leader == NO_LEADER or state.leader not in live:
        return None
    isr = tuple(b for b in state.isr if b == state.leader or b in live)
    return isr if isr != state.isr else None


def replacement_broker(state: PartitionState, dead: int, live: list[int], load: dict[int, int]) -> int | None:
    """A live broker to take over ``dead``'s replica of this partition (not already a replica), the least
    loaded first (ties: lowest id); None when there is no such broker."""
    candidates = [b for b in live if b not in state.replicas]
    if dead not in state.replicas or not candidates:
        return None
    return min(candidates, key=lambda b: (load.get(b, 0), b))
