"""One partition replica's state and its produce / fetch decisions (Kafka's kafka.cluster.Partition).

Not to be confused with :class:`raystream.protocol.PartitionState`, the controller's record of a
partition: this is what one replica knows and decides.

Role transitions (:meth:`Partition._transition` is the one owner; an illegal one raises at once)::

    from                event                                         to
    ------------------  --------------------------------------------  --------
    OFFLINE             become_leader(epoch)                          LEADER
    OFFLINE             become_follower(epoch) / accept_replication   FOLLOWER
    LEADER / FOLLOWER   become_leader(epoch' >= epoch)                LEADER
    LEADER / FOLLOWER   become_follower(epoch' >= epoch)              FOLLOWER
    LEADER / FOLLOWER   accept_replication(epoch' > epoch, or a       FOLLOWER
                        leader's push to a non-follower)              (through become_follower)
    any                 stop()                                        OFFLINE

An epoch older than the current one raises ``FencedLeaderEpochError``. ``accept_replication`` is the
follower's side of a leader's push: the controller's word may arrive after the new leader's first push, so
a newer epoch is learnt from the push itself — as a ``become_follower`` with the replica set unchanged.

Rules (Kafka's): the high watermark is the minimum log end offset over the ISR (the leader included) and
never goes backwards; this class is its one owner (the log only persists the value handed to it, a
follower takes the leader's, bounded by its own log end). A follower is in sync while it has caught up to
the leader's log end offset within the last ``replica.lag.time.max.ms``; an out-of-sync follower rejoins
once its log end offset reaches the high watermark. ISR changes are *proposed* here and applied only when
the controller has recorded them.

ISR proposals (one state, owned here): at most one request to the controller is in flight
(:meth:`start_isr_proposal` returns None while one is); its answer (:meth:`isr_proposal_answered`) or its
failure (:meth:`isr_proposal_failed`) ends the request. While a proposal's outcome is unknown (in flight,
or its answer lost) the high watermark counts the *maximal ISR*: the current ISR and the proposed members
(Kafka's KIP-497). Otherwise an expansion the controller records before the leader hears of it would let
acks=all succeed without the new member, which the controller may then elect. The proposal is settled by
the controller's answer, a newer state from the controller (:meth:`apply_isr`) or a role change.

Produce decisions: :meth:`check_produce` (leader, epoch, acks, min.insync.replicas before the append),
:func:`dedup_outcome` (the idempotent check's answer: append all, append a replay's tail, or answer a
duplicate without appending) and :meth:`ack_ready` (is an acks=all answer ready, must it wait, or does it
fail: NotLeader, NotEnoughReplicasAfterAppend). Fetch decisions: :meth:`fetch_limit` (HW, or the LSO for
read_committed), :meth:`check_fetch_position` (out of range judged against the log end offset) and
:meth:`list_offset`. DeleteRecords decisions: :meth:`delete_records_offset` (the leader's new log start
offset, bounded by the high watermark), :meth:`low_watermark` (the lowest log start offset over the ISR,
which the answer waits for) and :meth:`follower_log_start` (how far a follower follows the leader's).

Pure: no Ray, no asyncio, no clock (time comes in as ``now_ms``). Not thread-safe: the replica actor's
event loop (or the unit tests' fake transport, under its lock) serialises calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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

#: acks values a produce request may carry (Kafka's 0, 1 and -1 = all).
ACKS = (0, 1, -1)


@dataclasses.dataclass
class FollowerProgress:
    log_end_offset: int = 0
    last_caught_up_ms: int = 0
    #: As the follower last answered (0 until it has: a DeleteRecords then waits for its answer).
    log_start_offset: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class IsrProposal:
    """An ISR change sent to the controller: the leader epoch and partition epoch it was computed at."""

    isr: tuple[int, ...]
    leader_epoch: int
    partition_epoch: int


@dataclasses.dataclass(frozen=True, slots=True)
class ProduceDecision:
    """What the leader does with a checked batch: append its rows from ``skip`` on (``append``), or answer
    ``result`` at once (a duplicate: the original offsets; ``last_offset`` is what acks=all waits for)."""

    append: bool
    skip: int = 0
    result: ProduceResult | None = None
    last_offset: int = -1


APPEND = ProduceDecision(True)


def dedup_outcome(check: DuplicateBatch | ReplayOverlap | None, record_count: int, log_start_offset: int,
                  log_append_time: bool) -> ProduceDecision:
    """The produce decision for the idempotent check's answer (``ProducerStateManager.check_and_prepare``):

    * None: append the batch;
    * ReplayOverlap(skip): append only the records from ``skip`` on (a replay's tail);
    * DuplicateBatch with offsets: answer with the original offsets (the log append time is the original
      batch's max timestamp when the topic uses LogAppendTime), nothing appended;
    * DuplicateBatch without offsets (``base_offset < 0``, a replay's already-written records): answer
      offsets -1 with the request's record count.
    """
    if check is None:
        return APPEND
    if isinstance(check, ReplayOverlap):
        return ProduceDecision(True, skip=check.skip)
    if check.base_offset < 0:
        result = ProduceResult(-1, -1, log_start_offset, record_count, check.timestamp)
    else:
        result = ProduceResult(check.base_offset, check.timestamp if log_append_time else -1, log_start_offset,
                               check.last_offset - check.base_offset + 1, check.timestamp)
    return ProduceDecision(False, result=result, last_offset=check.last_offset)


class Partition:
    def __init__(self, name: str, broker_id: int, high_watermark: int = 0) -> None:
        """``high_watermark``: the value the log last persisted (a restart starts from it)."""
        self.name = name
        self.broker_id = broker_id
        self.role = Role.OFFLINE
        self.leader_epoch = -1
        self.leader: int = -1
        self.replicas: tuple[int, ...] = ()
        self.isr: tuple[int, ...] = ()
        self.partition_epoch = 0
        self.high_watermark = high_watermark
        self.followers: dict[int, FollowerProgress] = {}
        #: The ISR sent to the controller whose outcome is unknown, and the partition epoch it was based on.
        self.pending_isr: tuple[int, ...] | None = None
        self._pending_base = -1
        #: The proposal whose request is in flight (at most one at a time).
        self._in_flight: IsrProposal | None = None

    # -- transitions (the one owner of the role) -----------------------------------------------------------
    def _transition(self, role: Role, epoch: int, leader: int) -> None:
        if role is not Role.OFFLINE and epoch < self.leader_epoch:
            raise FencedLeaderEpochError(
                f"[{self.name}] leader epoch {epoch} is older than the current {self.leader_epoch}",
                leader_epoch=self.leader_epoch)
        self.role, self.leader_epoch, self.leader = role, epoch, leader
        self.pending_isr = None  # a role change settles any proposal (the controller's state follows)

    def become_leader(self, epoch: int, replicas: tuple[int, ...], isr: tuple[int, ...], partition_epoch: int,
                      log_end_offset: int, high_watermark: int, now_ms: int) -> None:
        self._transition(Role.LEADER, epoch, self.broker_id)
        self.replicas, self.isr, self.partition_epoch = tuple(replicas), tuple(isr), partition_epoch
        self.high_watermark = min(max(self.high_watermark, high_watermark), log_end_offset)
        # Followers start unknown (offset 0) but "caught up now": they get a full lag window to prove it.
        self.followers = {b: FollowerProgress(0, now_ms) for b in replicas if b != self.broker_id}

    def become_follower(self, epoch: int, leader: int, replicas: tuple[int, ...] | None = None) -> None:
        """``replicas`` None keeps the known replica set (a role learnt from a leader's push)."""
        self._transition(Role.FOLLOWER, epoch, leader)
        if replicas is not None:
            self.replicas = tuple(replicas)
        self.followers = {}

    def accept_replication(self, epoch: int, leader: int) -> None:
        """Follower side: a push from ``leader`` at ``epoch`` is accepted if not stale (a newer epoch is
        learnt: the controller's word may arrive after the new leader's first push)."""
        if epoch < self.leader_epoch:
            raise FencedLeaderEpochError(
                f"[{self.name}] leader epoch {epoch} is older than the current {self.leader_epoch}",
                leader_epoch=self.leader_epoch)
        if epoch > self.leader_epoch or self.role is not Role.FOLLOWER:
            self.become_follower(epoch, leader)

    def stop(self) -> None:
        self._transition(Role.OFFLINE, self.leader_epoch, self.leader)

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
            raise self._not_leader()

    def _not_leader(self, detail: str = "") -> NotLeaderError:
        return NotLeaderError(
            f"[{self.name}] broker {self.broker_id} is not the leader (role {self.role.value}, "
            f"leader {self.leader}, epoch {self.leader_epoch}){detail}", leader=self.leader,
            leader_epoch=self.leader_epoch)

    def check_produce(self, acks: int, leader_epoch: int | None, min_insync_replicas: int) -> None:
        """Before the append: this replica leads at ``leader_epoch``, ``acks`` is valid, and with acks=all
        the ISR has at least ``min.insync.replicas`` members (NotEnoughReplicasError)."""
        self.check_leader(leader_epoch)
        if acks not in ACKS:
            raise ValueError(f"acks must be 0, 1 or -1 (all), got {acks!r}")
        if acks == -1 and len(self.isr) < min_insync_replicas:
            raise NotEnoughReplicasError(
                f"[{self.name}] ISR {list(self.isr)} is smaller than min.insync.replicas={min_insync_replicas}",
                isr=list(self.isr), min_insync_replicas=min_insync_replicas)

    def ack_ready(self, last_offset: int, min_insync_replicas: int | None = None) -> bool:
        """An acks=all answer for a write ending at ``last_offset``: True once the high watermark covers it,
        False while it must wait. Raises NotLeaderError if leadership was lost meanwhile, and (with
        ``min_insync_replicas``) NotEnoughReplicasAfterAppendError when the write is replicated but the ISR
        shrank below the minimum meanwhile (Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND)."""
        if self.high_watermark > last_offset:
            if min_insync_replicas is not None and len(self.isr) < min_insync_replicas:
                raise NotEnoughReplicasAfterAppendError(
                    f"[{self.name}] ISR shrank to {list(self.isr)} below "
                    f"min.insync.replicas={min_insync_replicas}")
            return True
        if self.role is not Role.LEADER:
            raise self._not_leader(": lost leadership before the write was replicated")
        return False

    # -- fetch ---------------------------------------------------------------------------------------------
    def fetch_limit(self, read_committed: bool, first_unstable_offset: int | None) -> int:
        """The offset a consumer may read below: the high watermark, or for ``read_committed`` Kafka's last
        stable offset (the first offset of the oldest open transaction, if lower)."""
        hw = self.high_watermark
        if not read_committed or first_unstable_offset is None:
            return hw
        return min(hw, first_unstable_offset)

    def check_fetch_position(self, position: int, log_start_offset: int, log_end_offset: int,
                             where: str) -> None:
        """Out of range is judged against the log end offset, as Kafka does: a new leader's high watermark
        can trail the old leader's until its followers report, and a consumer positioned between the two
        must wait, not be reset."""
        if position > log_end_offset or position < log_start_offset:
            raise OffsetOutOfRangeError(
                f"offset {position} out of range for {where}: log_start_offset={log_start_offset}, "
                f"log_end_offset={log_end_offset}, high_watermark={self.high_watermark}",
                offset=position, log_start_offset=log_start_offset, log_end_offset=log_end_offset)

    @staticmethod
    def list_offset(spec: int, limit: int, log_start_offset: int,
                    offset_for_timestamp: Callable[[int], int | None]) -> int:
        """Kafka's ListOffsets: EARLIEST, LATEST (``limit``: the HW, or the LSO for read_committed) or the
        first offset whose timestamp is >= ``spec`` (-1 if none below ``limit``)."""
        if spec == EARLIEST:
            return log_start_offset
        if spec == LATEST:
            return limit
        if not isinstance(spec, int) or spec < 0:
            raise ValueError(f"offset spec must be EARLIEST (-2), LATEST (-1) or a timestamp >= 0, got {spec!r}")
        found = offset_for_timestamp(spec)
        return -1 if found is None or found >= limit else found

    # -- progress and the high watermark ---------------------------------------------------------------------
    def record_follower(self, broker: int, log_end_offset: int, leader_leo_at_send: int, now_ms: int,
                        log_start_offset: int | None = None) -> bool:
        """A follower's answer to a push; True if its log start offset advanced (a DeleteRecords waiting for
        the low watermark must look again)."""
        progress = self.followers.setdefault(broker, FollowerProgress())
        progress.log_end_offset = log_end_offset
        if log_end_offset >= leader_leo_at_send:
            progress.last_caught_up_ms = now_ms
        if log_start_offset is None or log_start_offset <= progress.log_start_offset:
            return False
        progress.log_start_offset = log_start_offset
        return True

    # -- DeleteRecords ---------------------------------------------------------------------------------------
    def delete_records_offset(self, offset: int, log_start_offset: int) -> int:
        """Leader: the log start offset a DeleteRecords of ``offset`` asks for (Kafka's rules): -1 means the
        high watermark; below -1 or above the high watermark is OffsetOutOfRangeError (records a consumer may
        not read yet cannot be deleted). An offset below the current log start offset asks for nothing new."""
        self.check_leader(None)
        target = self.high_watermark if offset == -1 else offset
        if not isinstance(target, int) or isinstance(target, bool) or target < 0 or target > self.high_watermark:
            raise OffsetOutOfRangeError(
                f"[{self.name}] cannot delete records before {offset!r}: high_watermark={self.high_watermark}, "
                f"log_start_offset={log_start_offset} (-1 means the high watermark)",
                offset=offset, log_start_offset=log_start_offset, high_watermark=self.high_watermark)
        return target

    def low_watermark(self, log_start_offset: int) -> int:
        """Leader: Kafka's low watermark, the lowest log start offset over the ISR (this replica's is
        ``log_start_offset``; a follower's as it last answered). Raises NotLeaderError on a non-leader."""
        if self.role is not Role.LEADER:
            raise self._not_leader(": lost leadership while deleting records")
        starts = [self.followers.get(b, FollowerProgress()).log_start_offset for b in self.isr if b != self.broker_id]
        return min([log_start_offset, *starts])

    def follower_log_start(self, leader_log_start: int, log_start_offset: int, log_end_offset: int) -> int | None:
        """Follower: the log start offset to move to after a push carrying the leader's, or None to stay.
        Bounded by this replica's high watermark (and log end), as Kafka's follower is, so its log start
        never passes what it has and knows to be committed."""
        target = min(leader_log_start, self.high_watermark, log_end_offset)
        return target if target > log_start_offset else None

    @property
    def maximal_isr(self) -> tuple[int, ...]:
        """The ISR the high watermark waits for: the current one plus any member of a pending proposal."""
        pending = set(self.pending_isr or ())
        return tuple(b for b in self.replicas if b in self.isr or b in pending) or self.isr

    def update_high_watermark(self, leader_leo: int) -> bool:
        """Leader: recompute the high watermark over the maximal ISR; True if it advanced."""
        if self.role is not Role.LEADER:
            return False
        leos = [leader_leo] + [self.followers.get(b, FollowerProgress()).log_end_offset for b in self.maximal_isr
                               if b != self.broker_id]
        return self._advance_to(min(leos))

    def follow_high_watermark(self, leader_high_watermark: int, log_end_offset: int) -> bool:
        """Follower: take the leader's high watermark, bounded by this replica's log end; True if it
        advanced."""
        return self._advance_to(min(leader_high_watermark, log_end_offset))

    def _advance_to(self, offset: int) -> bool:
        if offset > self.high_watermark:
            self.high_watermark = offset
            return True
        return False

    # -- ISR proposals (one state) ----------------------------------------------------------------------------
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

    @property
    def isr_change_in_flight(self) -> bool:
        return self._in_flight is not None

    def start_isr_proposal(self, isr: tuple[int, ...] | None) -> IsrProposal | None:
        """Begin sending ``isr`` to the controller; None (send nothing) when ``isr`` is None or another
        proposal is in flight. From here until the outcome is known the high watermark waits for the
        current members and every member of the unsettled proposals alike."""
        if isr is None or self._in_flight is not None:
            return None
        self.propose_isr(isr)
        self._in_flight = IsrProposal(tuple(isr), self.leader_epoch, self.partition_epoch)
        return self._in_flight

    def propose_isr(self, isr: tuple[int, ...]) -> None:
        """Count ``isr``'s members as pending (see :meth:`start_isr_proposal`, which also owns the request)."""
        if self.pending_isr is None:
            self.pending_isr, self._pending_base = tuple(isr), self.partition_epoch
        else:  # an earlier proposal's outcome is still unknown (its answer timed out): it may yet be recorded
            self.pending_isr = tuple(dict.fromkeys(self.pending_isr + tuple(isr)))

    def isr_proposal_answered(self, proposal: IsrProposal, isr: tuple[int, ...], partition_epoch: int) -> bool:
        """The controller recorded ``proposal`` (or refused it and sent its current state). Applied only if
        this replica still leads at the proposal's epoch; True if applied."""
        self._end_request(proposal)
        if self.role is not Role.LEADER or self.leader_epoch != proposal.leader_epoch:
            return False
        self.apply_isr(tuple(isr), partition_epoch)
        self.proposal_settled()
        return True

    def isr_proposal_failed(self, proposal: IsrProposal) -> None:
        """No answer (timeout, controller restarting) or a refusal for a fenced epoch: the request ends; a
        proposal whose outcome is unknown stays pending (it may yet be recorded)."""
        self._end_request(proposal)

    def _end_request(self, proposal: IsrProposal) -> None:
        if self._in_flight is proposal:
            self._in_flight = None

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
