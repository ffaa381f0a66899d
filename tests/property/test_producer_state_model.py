"""Stateful property test: :class:`raystream.core.producer_state.ProducerStateManager` against a model.

A leader is simulated: every produce attempt goes through ``check_and_prepare``; an accepted batch is
appended to a list of headers (the log) and recorded with ``update``. The model keeps, per producer, its
epoch, its next sequence and every batch it ever appended, and predicts each attempt's outcome from the
rules alone: a retry of one of the current epoch's last five batches is a duplicate answered with the
original offsets; an older epoch is fenced; a new epoch starts at 0; anything else must be in sequence
(wrapping at ``2**31 - 1``). Rebuilding from the log, and loading a snapshot then replaying the tail,
must give the state the leader built incrementally.
"""

from __future__ import annotations

import dataclasses

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from raystream.core.producer_state import NUM_BATCHES_TO_RETAIN, DuplicateBatch, ProducerStateManager
from raystream.errors import InvalidProducerEpochError, OutOfOrderSequenceError
from raystream.record import MAX_SEQUENCE, increment_sequence
from raystream.storage.batch import BatchHeader

NOW = 1_700_000_000_000
pids = st.integers(0, 3)
counts = st.integers(1, 4)


@dataclasses.dataclass(frozen=True)
class Sent:
    epoch: int
    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int
    timestamp: int


@dataclasses.dataclass
class ModelProducer:
    epoch: int
    next_seq: int = 0
    sent: list[Sent] = dataclasses.field(default_factory=list)

    def retained(self) -> list[Sent]:
        return [s for s in self.sent if s.epoch == self.epoch][-NUM_BATCHES_TO_RETAIN:]


class ProducerStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.manager = ProducerStateManager("topic-0")
        self.log: list[BatchHeader] = []
        self.model: dict[int, ModelProducer] = {}
        self.seeded_pid = 100

    # -- the simulated leader -------------------------------------------------------------------------------
    @property
    def now(self) -> int:
        return NOW + len(self.log)

    @property
    def next_offset(self) -> int:
        return self.log[-1].next_offset if self.log else 0

    def attempt(self, pid: int, epoch: int, seq: int, count: int) -> DuplicateBatch | BatchHeader:
        duplicate = self.manager.check_and_prepare(pid, epoch, seq, increment_sequence(seq, count - 1), self.now)
        if duplicate is not None:
            return duplicate
        header = self.append(pid, epoch, seq, count)
        self.manager.update(header, self.now)
        return header

    def append(self, pid: int, epoch: int, seq: int, count: int) -> BatchHeader:
        header = BatchHeader(self.next_offset, count - 1, count, self.now, self.now, 0, pid, epoch, seq)
        self.log.append(header)
        if pid >= 0:
            model = self.model.setdefault(pid, ModelProducer(epoch))
            model.epoch = epoch
            last = increment_sequence(seq, count - 1)
            model.sent.append(Sent(epoch, seq, last, header.base_offset, header.last_offset, header.max_timestamp))
            model.next_seq = increment_sequence(last, 1)
        return header

    def expect_rejected(self, error: type[Exception], pid: int, epoch: int, seq: int, count: int) -> None:
        log_length = len(self.log)
        try:
            self.attempt(pid, epoch, seq, count)
        except error:
            assert len(self.log) == log_length
            return
        raise AssertionError(f"expected {error.__name__} for pid {pid} epoch {epoch} seq {seq} count {count}")

    # -- produce attempts -----------------------------------------------------------------------------------
    @rule(pid=pids, count=counts)
    def send_next(self, pid: int, count: int) -> None:
        model = self.model.get(pid)
        epoch, seq = (model.epoch, model.next_seq) if model else (0, 0)
        assert isinstance(self.attempt(pid, epoch, seq, count), BatchHeader)

    @rule(pid=pids, back=st.integers(0, 8))
    def retry(self, pid: int, back: int) -> None:
        model = self.model.get(pid)
        if model is None or back >= len(model.sent):
            return
        sent = model.sent[-1 - back]
        count = sent.last_offset - sent.base_offset + 1
        if sent in model.retained():
            result = self.attempt(pid, sent.epoch, sent.first_seq, count)
            assert result == DuplicateBatch(pid, sent.epoch, sent.first_seq, sent.last_seq, sent.base_offset,
                                            sent.last_offset, sent.timestamp)
        elif sent.epoch < model.epoch:
            self.expect_rejected(InvalidProducerEpochError, pid, sent.epoch, sent.first_seq, count)
        else:
            self.expect_rejected(OutOfOrderSequenceError, pid, sent.epoch, sent.first_seq, count)

    @rule(pid=pids, skip=st.integers(1, 5), count=counts)
    def gap(self, pid: int, skip: int, count: int) -> None:
        model = self.model.get(pid)
        epoch, seq = (model.epoch, model.next_seq) if model else (0, 0)
        self.expect_rejected(OutOfOrderSequenceError, pid, epoch, increment_sequence(seq, skip), count)

    @rule(pid=pids, start=st.integers(0, 3), count=counts)
    def new_epoch(self, pid: int, start: int, count: int) -> None:
        model = self.model.get(pid)
        epoch = model.epoch + 1 if model else 0
        if start == 0:
            assert isinstance(self.attempt(pid, epoch, 0, count), BatchHeader)
        else:
            self.expect_rejected(OutOfOrderSequenceError, pid, epoch, start, count)

    @rule(pid=pids, seq=st.integers(0, 10), count=counts)
    def stale_epoch(self, pid: int, seq: int, count: int) -> None:
        model = self.model.get(pid)
        if model is None or model.epoch == 0:
            return
        self.expect_rejected(InvalidProducerEpochError, pid, model.epoch - 1, seq, count)

    @rule(count=counts)
    def non_idempotent(self, count: int) -> None:
        assert isinstance(self.attempt(-1, -1, -1, count), BatchHeader)

    @rule(below_max=st.integers(0, 6), count=counts)
    def replicate_mid_sequence(self, below_max: int, count: int) -> None:
        """A follower loads a batch of a producer whose earlier batches are gone (retention): no checks,
        and here near the end of Int32 so that later sends wrap."""
        pid = self.seeded_pid
        self.seeded_pid += 1
        header = self.append(pid, 0, MAX_SEQUENCE - below_max, count)
        self.manager.update(header, self.now)

    @precondition(lambda self: self.seeded_pid > 100)
    @rule(count=counts, data=st.data())
    def send_seeded(self, count: int, data: st.DataObject) -> None:
        pid = data.draw(st.integers(100, self.seeded_pid - 1))
        model = self.model[pid]
        assert isinstance(self.attempt(pid, model.epoch, model.next_seq, count), BatchHeader)

    # -- rebuilding -----------------------------------------------------------------------------------------
    @rule()
    def rebuild(self) -> None:
        rebuilt = ProducerStateManager("topic-0")
        rebuilt.rebuild(self.log, self.now + 10**6)
        assert rebuilt == self.manager
        self.manager = rebuilt  # the new leader carries on from the rebuilt state

    @rule(data=st.data())
    def snapshot_then_replay(self, data: st.DataObject) -> None:
        cut = data.draw(st.integers(0, len(self.log)))
        partial = ProducerStateManager("topic-0")
        partial.rebuild(self.log[:cut], self.now)
        restored = ProducerStateManager.from_snapshot_bytes(partial.snapshot_bytes(), end_offset=partial.end_offset)
        assert restored == partial
        restored.replay(self.log, self.now)
        assert restored == self.manager
        self.manager = restored

    # -- invariants -----------------------------------------------------------------------------------------
    @invariant()
    def matches_model(self) -> None:
        assert set(self.manager.producers) == set(self.model)
        assert self.manager.end_offset == self.next_offset
        for pid, model in self.model.items():
            entry = self.manager.entry(pid)
            assert entry is not None and entry.producer_epoch == model.epoch
            retained = [(s.first_seq, s.last_seq, s.base_offset, s.last_offset, s.timestamp)
                        for s in model.retained()]
            assert [(b.first_seq, b.last_seq, b.first_offset, b.last_offset, b.timestamp)
                    for b in entry.batches] == retained
            expected_next = model.next_seq if retained else 0
            assert increment_sequence(entry.last_seq, 1) == expected_next


ProducerStateMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestProducerStateModel = ProducerStateMachine.TestCase
