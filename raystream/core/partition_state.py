"""The leader's bookkeeping for one partition: follower progress, ISR and high watermark.

Transitions (one class owns them; an illegal one raises at once)::

    OFFLINE  --become_leader(epoch)-->   LEADER
    OFFLINE  --become_follower(epoch)--> FOLLOWER
    LEADER / FOLLOWER --become_*(epoch' >= epoch)--> LEADER / FOLLOWER
    any --stop()--> OFFLINE

Rules (Kafka's): the high watermark is the minimum log end offset over the ISR (the leader included) and
never goes backwards; a follower is in sync while it has caught up to the leader's log end offset within
the last ``replica.lag.time.max.ms``; an out-of-sync follower rejoins once its log end offset reaches the
high watermark. ISR changes are *proposed* here and applied only when the controller has recorded them.

While a proposal is in flight its outcome is unknown (the controller may have recorded it and the answer
be lost), so the high watermark counts the *maximal ISR*: the current ISR and the proposed members
(Kafka's KIP-497). Otherwise an expansion the controller records before the leader hears of it would let
acks=all succeed without the new member, which the controller may then elect. The proposal ends with the
controller's answer (:meth:`proposal_settled`), a newer state from the controller (:meth:`apply_isr`) or
a role change.

Pure: time comes in as ``now_ms``. Not thread-safe: the replica actor's event loop serialises calls.
"""

from __future__ import annotations

import dataclasses

from raystream.errors import FencedLeaderEpochError, NotLeaderError, UnknownLeaderEpochError
from raystream.protocol import Role


@dataclasses.dataclass
class FollowerProgress:
    log_end_offset: int = 0
    last_caught_up_ms: int = 0


class PartitionState:
    def __init__(self, name: str, broker_id: int) -> None:
        self.name = name
        self.broker_id = broker_id
        self.role = Role.OFFLINE
        self.leader_epoch = -1
        self.leader: int = -1
        self.replicas: tuple[int, ...] = ()
        self.isr: tuple[int, ...] = ()
        self.partition_epoch = 0
        self.high_watermark = 0
        self.followers: dict[int, FollowerProgress] = {}
        #: The ISR sent to the controller and not answered yet, and the partition epoch it was based on.
        self.pending_isr: tuple[int, ...] | None = None
        self._pending_base = -1

    # -- transitions --------------------------------------------------------------------------------------
    def _check_epoch(self, epoch: int) -> None:
        if epoch < self.leader_epoch:
            raise FencedLeaderEpochError(
                f"[{self.name}] leader epoch {epoch} is older than the current {self.leader_epoch}",
                leader_epoch=self.leader_epoch)

    def become_leader(self, epoch: int, replicas: tuple[int, ...], isr: tuple[int, ...], partition_epoch: int,
                      log_end_offset: int, high_watermark: int, now_ms: int) -> None:
        self._check_epoch(epoch)
        self.role, self.leader_epoch, self.leader = Role.LEADER, epoch, self.broker_id
        self.replicas, self.isr, self.partition_epoch = tuple(replicas), tuple(isr), partition_epoch
        self.high_watermark = min(max(self.high_watermark, high_watermark), log_end_offset)
        # Followers start unknown (offset 0) but "caught up now": they get a full lag window to prove it.
        self.followers = {b: FollowerProgress(0, now_ms) for b in replicas if b != self.broker_id}
        self.pending_isr = None

    def become_follower(self, epoch: int, leader: int, replicas: tuple[int, ...]) -> None:
        self._check_epoch(epoch)
        self.role, self.leader_epoch, self.leader = Role.FOLLOWER, epoch, leader
        self.replicas, self.followers = tuple(replicas), {}
        self.pending_isr = None

    def stop(self) -> None:
        self.role = Role.OFFLINE

    # -- checks -------------------------------------------------------------------------------------------
    def check_leader(self, epoch: int | None) -> None:
        """Raise unless this replica leads; with ``epoch``, it must be the current leader epoch."""
        if epoch is not None and epoch < self.leader_epoch:
            raise FencedLeaderEpochError(
                f"[{self.name}] request epoch {epoch} is older than {self.leader_epoch}",
                leader_epoch=self.leader_epoch)
        if epoch is not None and epoch > self.leader_epoch:
            raise UnknownLeaderEpochError(
                f"[{self.name}] request epoch {epoch} is newer than {self.leader_epoch}")
        if self.role is not Role.LEADER:
            raise NotLeaderError(
                f"[{self.name}] broker {self.broker_id} is not the leader (role {self.role.value}, "
                f"leader {self.leader}, epoch {self.leader_epoch})", leader=self.leader,
                leader_epoch=self.leader_epoch)

    def accept_replication(self, epoch: int, leader: int) -> None:
        """Follower side: a push from ``leader`` at ``epoch`` is accepted if not stale (a newer epoch is
        learnt: the controller's word may arrive after the new leader's first push)."""
        self._check_epoch(epoch)
        if epoch > self.leader_epoch or self.role is not Role.FOLLOWER:
            self.role, self.leader_epoch, self.leader = Role.FOLLOWER, epoch, leader

    # -- progress -----------------------------------------------------------------------------------------
    def record_follower(self, broker: int, log_end_offset: int, leader_leo_at_send: int, now_ms: int) -> None:
        progress = self.followers.setdefault(broker, FollowerProgress())
        progress.log_end_offset = log_end_offset
        if log_end_offset >= leader_leo_at_send:
            progress.last_caught_up_ms = now_ms

    @property
    def maximal_isr(self) -> tuple[int, ...]:
        """The ISR the high watermark waits for: the current one plus any member of a pending proposal."""
        pending = set(self.pending_isr or ())
        return tuple(b for b in self.replicas if b in self.isr or b in pending) or self.isr

    def update_high_watermark(self, leader_leo: int) -> bool:
        """Recompute the high watermark over the maximal ISR; True if it advanced."""
        leos = [leader_leo] + [self.followers.get(b, FollowerProgress()).log_end_offset for b in self.maximal_isr
                               if b != self.broker_id]
        new = min(leos)
        if new > self.high_watermark:
            self.high_watermark = new
            return True
        return False

    def isr_to_shrink(self, now_ms: int, lag_time_max_ms: int) -> tuple[int, ...] | None:
        """The ISR without followers that have not caught up for ``lag_time_max_ms``; None if unchanged.
        A laggard that only an unsettled proposal added is also reason to ask (the answer settles it)."""
        laggards = {b for b in self.maximal_isr if b != self.broker_id and b in self.followers
                    and now_ms - self.followers[b].last_caught_up_ms > lag_time_max_ms}
        if not laggards:
            return None
        return tuple(b for b in self.isr if b not in laggards)

    def isr_to_expand(self, broker: int) -> tuple[int, ...] | None:
        """The ISR with ``broker`` added if it has reached the high watermark; None if no change."""
        progress = self.followers.get(broker)
        if broker in self.isr or progress is None or progress.log_end_offset < self.high_watermark:
            return None
        return tuple(b for b in self.replicas if b in self.isr or b == broker)

    def propose_isr(self, isr: tuple[int, ...]) -> None:
        """``isr`` is being sent to the controller: until the outcome is known the high watermark waits for
        the current members and every member of the unsettled proposals alike."""
        if self.pending_isr is None:
            self.pending_isr, self._pending_base = tuple(isr), self.partition_epoch
        else:  # an earlier proposal's outcome is still unknown (its answer timed out): it may yet be recorded
            self.pending_isr = tuple(dict.fromkeys(self.pending_isr + tuple(isr)))

    def proposal_settled(self) -> None:
        """The controller answered a proposal (recorded it, or refused it and sent its current state, applied
        with :meth:`apply_isr`). A leader's requests reach the controller in order, so every earlier
        proposal has been decided too: nothing is pending any more."""
        self.pending_isr = None

    def apply_isr(self, isr: tuple[int, ...], partition_epoch: int) -> None:
        """A state recorded by the controller (its answer to a proposal, or its own change)."""
        if partition_epoch >= self.partition_epoch:
            self.isr, self.partition_epoch = tuple(isr), partition_epoch
        # Only a state newer than the proposal's base settles it: a late copy of the state the proposal was
        # computed from says nothing about whether the controller recorded the proposal.
        if self.pending_isr is not None and partition_epoch > self._pending_base:
            self.pending_isr = None
