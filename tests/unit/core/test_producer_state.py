"""Unit tests of :mod:`raystream.core.producer_state` and :mod:`raystream.storage.producer_snapshot` (no Ray)."""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream.core.producer_state import (
    AbortedTransaction,
    DuplicateBatch,
    ProducerBatch,
    ProducerStateManager,
    ReplayOverlap,
    batch_last_sequence,
)
from raystream.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    InvalidRecordError,
    OutOfOrderSequenceError,
)
from raystream.record import (
    ATTR_COMMIT_MARKER,
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    MAX_SEQUENCE,
    increment_sequence,
)
from raystream.storage.batch import BatchHeader
from raystream.storage.producer_snapshot import (
    delete_snapshots_above,
    delete_snapshots_below,
    list_snapshots,
    load_latest_snapshot,
    snapshot_offset,
    snapshot_path,
    write_snapshot,
)

PID = 1000
NOW = 1_700_000_000_000


class Producer:
    """Appends idempotent batches through a manager as a leader would, keeping the log's headers."""

    def __init__(self, manager: ProducerStateManager, log: list[BatchHeader] | None = None) -> None:
        self.manager = manager
        self.log = log if log is not None else []

    @property
    def next_offset(self) -> int:
        return self.log[-1].next_offset if self.log else 0

    def send(self, pid: int, epoch: int, seq: int, count: int = 1, ts: int = NOW, attributes: int = 0):
        """check_and_prepare, then (if not a duplicate) append and update. Returns the header or the duplicate."""
        last_seq = increment_sequence(seq, count - 1)
        duplicate = self.manager.check_and_prepare(pid, epoch, seq, last_seq, ts)
        if duplicate is not None:
            return duplicate
        header = BatchHeader(self.next_offset, count - 1, count, ts, ts, 0, pid, epoch, seq, attributes)
        self.log.append(header)
        self.manager.update(header, ts)
        return header


@pytest.fixture
def producer() -> Producer:
    return Producer(ProducerStateManager("topic-0"))


def test_in_order_sequences_are_accepted(producer):
    seq = 0
    for count in (1, 3, 2, 5, 1, 4, 1):
        header = producer.send(PID, 0, seq, count)
        assert isinstance(header, BatchHeader)
        seq += count
    entry = producer.manager.entry(PID)
    assert entry is not None and entry.producer_epoch == 0
    assert entry.last_seq == seq - 1
    assert len(entry.batches) == 5  # only the last five are retained
    assert producer.manager.end_offset == producer.next_offset == seq


def test_non_idempotent_batches_bypass_every_check(producer):
    assert producer.manager.check_and_prepare(-1, -1, -1, -1, NOW) is None
    producer.manager.update(BatchHeader(0, 9, 10, NOW, NOW, 0), NOW)
    assert len(producer.manager) == 0
    assert producer.manager.end_offset == 10


@pytest.mark.parametrize("back", range(5))
def test_duplicate_of_any_of_the_last_five_batches_returns_the_original_offsets(producer, back):
    headers = [producer.send(PID, 0, seq * 2, count=2, ts=NOW + seq) for seq in range(7)]
    before = producer.manager.snapshot_bytes()
    original = headers[-1 - back]
    duplicate = producer.send(PID, 0, original.base_sequence, count=2)
    assert duplicate == DuplicateBatch(PID, 0, original.base_sequence, original.base_sequence + 1,
                                       original.base_offset, original.last_offset, original.max_timestamp)
    assert len(producer.log) == 7  # nothing appended
    assert producer.manager.snapshot_bytes() == before  # nothing changed


def test_duplicate_older_than_the_last_five_is_out_of_order(producer):
    for seq in range(6):
        producer.send(PID, 0, seq)
    with pytest.raises(OutOfOrderSequenceError) as info:
        producer.send(PID, 0, 0)
    assert info.value.expected_sequence == 6 and info.value.received_sequence == 0


def test_overlapping_retry_that_is_not_an_exact_duplicate_is_out_of_order(producer):
    producer.send(PID, 0, 0, count=3)
    with pytest.raises(OutOfOrderSequenceError):
        producer.send(PID, 0, 0, count=2)


def test_gap_is_out_of_order_and_the_message_names_partition_producer_and_sequences(producer):
    producer.send(PID, 0, 0, count=3)
    with pytest.raises(OutOfOrderSequenceError) as info:
        producer.send(PID, 0, 5)
    message = str(info.value)
    assert "topic-0" in message and str(PID) in message
    assert "expected sequence 3" in message and "received 5" in message
    assert (info.value.partition, info.value.producer_id) == ("topic-0", PID)


def test_unknown_producer_must_start_at_sequence_zero(producer):
    with pytest.raises(OutOfOrderSequenceError, match="unknown producer"):
        producer.send(PID, 0, 7)
    assert isinstance(producer.send(PID, 3, 0), BatchHeader)  # any epoch, sequence 0


def test_stale_epoch_is_fenced(producer):
    producer.send(PID, 0, 0)
    producer.send(PID, 1, 0)
    with pytest.raises(InvalidProducerEpochError) as info:
        producer.send(PID, 0, 1)
    assert info.value.current_epoch == 1 and "fenced" in str(info.value)
    with pytest.raises(InvalidProducerEpochError):  # a retry of the old epoch's batch is fenced too
        producer.send(PID, 0, 0)


def test_new_epoch_resets_to_sequence_zero(producer):
    producer.send(PID, 0, 0, count=4)
    with pytest.raises(OutOfOrderSequenceError, match="new epoch"):
        producer.send(PID, 1, 4)
    producer.send(PID, 1, 0, count=2)
    entry = producer.manager.entry(PID)
    assert entry.producer_epoch == 1 and [b.first_seq for b in entry.batches] == [0]
    producer.send(PID, 1, 2)
    with pytest.raises(OutOfOrderSequenceError):
        producer.send(PID, 1, 0, count=4)  # the old epoch's batch range, retried in the new epoch


def test_sequences_wrap_at_int32_max():
    assert increment_sequence(MAX_SEQUENCE, 1) == 0
    assert increment_sequence(MAX_SEQUENCE - 1, 3) == 1
    assert increment_sequence(5, 3) == 8
    manager = ProducerStateManager("topic-0")
    # A follower / recovery loads a log whose head was deleted: the producer is near the end of Int32.
    manager.update(BatchHeader(0, 1, 2, NOW, NOW, 0, PID, 0, MAX_SEQUENCE - 3), NOW)
    producer = Producer(manager, [BatchHeader(0, 1, 2, NOW, NOW, 0, PID, 0, MAX_SEQUENCE - 3)])
    wrapping = producer.send(PID, 0, MAX_SEQUENCE - 1, count=4)  # MAX-1, MAX, 0, 1
    assert batch_last_sequence(wrapping) == 1
    assert manager.entry(PID).last_seq == 1
    duplicate = producer.send(PID, 0, MAX_SEQUENCE - 1, count=4)
    assert isinstance(duplicate, DuplicateBatch) and duplicate.last_sequence == 1
    assert isinstance(producer.send(PID, 0, 2), BatchHeader)
    with pytest.raises(OutOfOrderSequenceError):
        producer.send(PID, 0, 4)


def test_exactly_int32_max_is_followed_by_zero(producer):
    manager = producer.manager
    manager.update(BatchHeader(0, 0, 1, NOW, NOW, 0, PID, 0, MAX_SEQUENCE), NOW)
    producer.log.append(BatchHeader(0, 0, 1, NOW, NOW, 0, PID, 0, MAX_SEQUENCE))
    assert isinstance(producer.send(PID, 0, MAX_SEQUENCE), DuplicateBatch)  # the retry of (MAX, MAX)
    with pytest.raises(OutOfOrderSequenceError):
        producer.send(PID, 0, MAX_SEQUENCE, count=2)  # (MAX, 0) overlaps the last batch
    with pytest.raises(OutOfOrderSequenceError) as info:
        producer.send(PID, 0, 1)
    assert info.value.expected_sequence == 0
    assert isinstance(producer.send(PID, 0, 0), BatchHeader)


@pytest.mark.parametrize("args", [(PID, -1, 0, 0), (PID, 0, -1, 0), (PID, 0, 0, -1), (PID, 0, 2**31, 2**31),
                                  (PID, 2**15, 0, 0), (-2, 0, 0, 0)])
def test_invalid_fields_are_invalid_records(producer, args):
    with pytest.raises(InvalidRecordError):
        producer.manager.check_and_prepare(*args, NOW)


def test_expiry_drops_idle_producers_but_not_open_transactions(producer):
    producer.send(1, 0, 0, ts=NOW)
    producer.send(2, 0, 0, ts=NOW + 1000)
    producer.send(3, 0, 0, ts=NOW, attributes=ATTR_TRANSACTIONAL)
    manager = producer.manager
    assert manager.entry(3).current_txn_first_offset == 2
    assert manager.remove_expired(NOW + 999, 1000) == []
    assert manager.remove_expired(NOW + 1000, 1000) == [1]
    assert sorted(manager.producers) == [2, 3]
    # The transaction marker closes the transaction; then producer 3 may expire too.
    manager.update(BatchHeader(3, 0, 1, NOW, NOW, 0, 3, 0, -1, ATTR_TRANSACTIONAL | ATTR_CONTROL), NOW)
    assert manager.entry(3).current_txn_first_offset is None
    assert sorted(manager.remove_expired(NOW + 5000, 1000)) == [2, 3]
    assert len(manager) == 0
    with pytest.raises(OutOfOrderSequenceError):  # an expired producer is unknown again
        producer.send(1, 0, 1, ts=NOW + 6000)


def test_default_expiration_is_one_day(producer):
    producer.send(PID, 0, 0, ts=NOW)
    assert producer.manager.remove_expired(NOW + 86_400_000 - 1) == []
    assert producer.manager.remove_expired(NOW + 86_400_000) == [PID]


def _history(producer: Producer) -> None:
    for pid in (1, 2, 3):
        for seq in range(0, 12, 2):
            producer.send(pid, 0, seq, count=2, ts=NOW + seq)
    producer.manager.update(BatchHeader(producer.next_offset, 4, 5, NOW, NOW, 0), NOW)  # non-idempotent
    producer.log.append(BatchHeader(producer.next_offset, 4, 5, NOW, NOW, 0))
    producer.send(2, 1, 0, count=3, ts=NOW + 50)
    producer.send(4, 0, 0, ts=NOW + 60, attributes=ATTR_TRANSACTIONAL)
    producer.send(4, 0, 1, ts=NOW + 61, attributes=ATTR_TRANSACTIONAL)


def test_rebuild_from_headers_equals_the_incrementally_built_state(producer):
    _history(producer)
    rebuilt = ProducerStateManager("topic-0")
    rebuilt.rebuild(producer.log, NOW + 10**9)
    assert rebuilt == producer.manager
    assert rebuilt.entry(4).current_txn_first_offset == producer.manager.entry(4).current_txn_first_offset
    # A second rebuild of the same manager forgets what it had first.
    rebuilt.rebuild(producer.log[:3], NOW)
    assert sorted(rebuilt.producers) == [1] and rebuilt.end_offset == producer.log[2].next_offset


def test_rebuild_from_a_log_whose_head_was_deleted_does_not_raise(producer):
    _history(producer)
    tail = producer.log[4:]  # retention deleted the first batches: producer 1 starts mid-sequence
    rebuilt = ProducerStateManager("topic-0")
    rebuilt.rebuild(tail, NOW, start_offset=tail[0].base_offset)
    assert rebuilt.entry(1).last_seq == producer.manager.entry(1).last_seq
    assert rebuilt.check_and_prepare(1, 0, 12, 12, NOW) is None


def test_snapshot_round_trip(producer):
    _history(producer)
    data = producer.manager.snapshot_bytes()
    restored = ProducerStateManager.from_snapshot_bytes(data)
    assert restored == producer.manager
    assert restored.entry(4).current_txn_first_offset is not None
    assert ProducerStateManager.from_snapshot_bytes(data, "renamed-0").partition_name == "renamed-0"
    assert ProducerStateManager.from_snapshot_bytes(data, end_offset=producer.manager.end_offset) == restored
    with pytest.raises(CorruptRecordError, match="holds the state at offset"):
        ProducerStateManager.from_snapshot_bytes(data, end_offset=3)
    fewer = ProducerStateManager.from_snapshot_bytes(data, max_batches_per_producer=2)
    assert [b.first_seq for b in fewer.entry(1).batches] == [8, 10]


def test_snapshot_then_replay_of_the_tail_equals_the_full_state(producer):
    _history(producer)
    middle = 9
    partial = ProducerStateManager("topic-0")
    partial.rebuild(producer.log[:middle], NOW)
    restored = ProducerStateManager.from_snapshot_bytes(partial.snapshot_bytes())
    assert restored.replay(producer.log, NOW) == len(producer.log) - middle  # skips what it covers
    assert restored == producer.manager


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "version", "shape"])
def test_damaged_snapshot_bytes_are_corrupt(producer, damage):
    _history(producer)
    data = producer.manager.snapshot_bytes()
    if damage == "flip":
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x01
        data = bytes(bad)
    elif damage == "truncate":
        data = data[:-7]
    elif damage == "garbage":
        data = b"\xc1not msgpack"
    elif damage == "version":
        _, crc, body = msgpack.unpackb(data)
        data = msgpack.packb([99, crc, body])
    else:
        import crc32c
        body = msgpack.packb(["topic-0", 0, [[1, 0]]])
        data = msgpack.packb([1, crc32c.crc32c(body), body])
    with pytest.raises(CorruptRecordError):
        ProducerStateManager.from_snapshot_bytes(data)


def test_entry_helpers():
    batch = ProducerBatch(3, 5, 10, 12, NOW)
    assert batch.base_offset == 10
    assert ProducerStateManager("p").entry(PID) is None
    with pytest.raises(ValueError):
        ProducerStateManager("p", max_batches_per_producer=0)


# -- snapshot files -------------------------------------------------------------------------------------------
def _decode(offset: int, data: bytes) -> ProducerStateManager:
    return ProducerStateManager.from_snapshot_bytes(data, end_offset=offset)


def _manager_at(producer: Producer, batches: int) -> ProducerStateManager:
    manager = ProducerStateManager("topic-0")
    manager.rebuild(producer.log[:batches], NOW)
    return manager


def test_snapshot_files_are_written_listed_and_loaded(tmp_path, producer):
    _history(producer)
    assert list_snapshots(tmp_path) == [] and load_latest_snapshot(tmp_path, 10**9, _decode) is None
    written = {}
    for batches in (3, 8, 15):
        manager = _manager_at(producer, batches)
        path = write_snapshot(tmp_path, manager.end_offset, manager.snapshot_bytes())
        assert path.name == f"{manager.end_offset:020d}.snapshot" and snapshot_offset(path) == manager.end_offset
        written[manager.end_offset] = manager
    (tmp_path / (snapshot_path(tmp_path, 99).name + ".tmp")).write_bytes(b"torn")  # ignored
    (tmp_path / "00000000000000000000.arrows").write_bytes(b"")
    offsets = sorted(written)
    assert list_snapshots(tmp_path) == offsets
    assert load_latest_snapshot(tmp_path, 10**9, _decode) == (offsets[-1], written[offsets[-1]])
    assert load_latest_snapshot(tmp_path, offsets[-1] - 1, _decode) == (offsets[1], written[offsets[1]])
    assert load_latest_snapshot(tmp_path, offsets[0] - 1, _decode) is None
    assert list_snapshots(tmp_path / "missing") == []


def test_corrupt_snapshot_file_is_skipped_with_a_warning(tmp_path, producer, caplog):
    _history(producer)
    good, newer = _manager_at(producer, 5), _manager_at(producer, 12)
    write_snapshot(tmp_path, good.end_offset, good.snapshot_bytes())
    path = write_snapshot(tmp_path, newer.end_offset, newer.snapshot_bytes())
    damaged = bytearray(path.read_bytes())
    damaged[-3] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with caplog.at_level(logging.WARNING, logger="raystream.storage.producer_snapshot"):
        assert load_latest_snapshot(tmp_path, 10**9, _decode) == (good.end_offset, good)
    assert any(path.name in record.getMessage() and "corrupt" in record.getMessage() for record in caplog.records)
    # A snapshot whose content belongs to another offset (e.g. a renamed file) is skipped too.
    snapshot_path(tmp_path, good.end_offset).rename(snapshot_path(tmp_path, good.end_offset + 1))
    assert load_latest_snapshot(tmp_path, 10**9, _decode) is None


def test_unreadable_snapshot_is_skipped(tmp_path, producer, caplog, monkeypatch):
    _history(producer)
    good, newer = _manager_at(producer, 5), _manager_at(producer, 12)
    write_snapshot(tmp_path, good.end_offset, good.snapshot_bytes())
    unreadable = write_snapshot(tmp_path, newer.end_offset, newer.snapshot_bytes())
    snapshot_path(tmp_path, newer.end_offset + 100).mkdir()  # not a file: not a snapshot
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with caplog.at_level(logging.WARNING, logger="raystream.storage.producer_snapshot"):
        assert load_latest_snapshot(tmp_path, 10**9, _decode) == (good.end_offset, good)
    assert any(unreadable.name in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)


def test_snapshots_above_and_below_an_offset_are_deleted(tmp_path):
    for offset in (0, 10, 20, 30, 40):
        write_snapshot(tmp_path, offset, b"x")
    assert delete_snapshots_above(tmp_path, 30) == [40]
    assert delete_snapshots_above(tmp_path, 30) == []
    assert delete_snapshots_below(tmp_path, 10) == [0]
    assert list_snapshots(tmp_path) == [10, 20, 30]
    with pytest.raises(ValueError):
        snapshot_path(tmp_path, -1)
    assert snapshot_offset("12.snapshot") == 12 and snapshot_offset("x.snapshot") is None
    assert snapshot_offset("12.snapshot.tmp") is None and snapshot_offset(".snapshot") is None


# -- replay producers ---------------------------------------------------------------------------------------------
def _replay(producer: Producer, seq: int, count: int):
    """A replay producer's batch: only the records the log lacks are appended (ReplayOverlap's rest)."""
    answer = producer.manager.check_and_prepare(PID, 0, seq, seq + count - 1, NOW, replay=True)
    if isinstance(answer, DuplicateBatch):
        return answer
    if isinstance(answer, ReplayOverlap):
        seq, count = seq + answer.skip, count - answer.skip
    header = BatchHeader(producer.next_offset, count - 1, count, NOW, NOW, 0, PID, 0, seq)
    producer.log.append(header)
    producer.manager.update(header, NOW)
    return header


def test_a_replayed_run_drops_what_the_log_holds_and_appends_the_rest(producer):
    for seq in range(0, 30, 10):  # the first run wrote records 0..29 in batches of 10, then died
        _replay(producer, seq, 10)
    old = _replay(producer, 0, 25)  # the second run batches differently: 0..24 are all written
    assert isinstance(old, DuplicateBatch) and old.base_offset == -1 and old.last_offset == 29
    straddling = _replay(producer, 25, 10)  # 25..34: 25..29 are written, 30..34 are new
    assert straddling.base_sequence == 30 and straddling.record_count == 5
    assert sum(h.record_count for h in producer.log) == 35


def test_a_replay_gap_is_still_out_of_order(producer):
    _replay(producer, 0, 10)
    with pytest.raises(OutOfOrderSequenceError):
        _replay(producer, 12, 3)


def test_without_replay_an_old_sequence_is_out_of_order(producer):
    for seq in range(6):
        producer.send(PID, 0, seq)
    assert isinstance(producer.manager.check_and_prepare(PID, 0, 0, 0, NOW, replay=True), DuplicateBatch)
    with pytest.raises(OutOfOrderSequenceError):
        producer.manager.check_and_prepare(PID, 0, 0, 0, NOW)


@settings(max_examples=200, deadline=None)
@given(runs=st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=8), min_size=1, max_size=4),
       stops=st.lists(st.integers(0, 40), min_size=4, max_size=4))
def test_any_number_of_differently_batched_partial_runs_write_each_record_once(runs, stops):
    producer = Producer(ProducerStateManager("topic-0"))
    total = 30
    for run, stop in zip(runs, stops, strict=False):
        seq, sizes = 0, iter(run * 30)
        while seq < min(stop, total):  # a run that dies after ``stop`` records
            count = min(next(sizes), total - seq)
            _replay(producer, seq, count)
            seq += count
    seq, sizes = 0, iter(runs[0] * 30)
    while seq < total:  # the run that completes
        count = min(next(sizes), total - seq)
        _replay(producer, seq, count)
        seq += count
    sequences = [s for h in producer.log for s in range(h.base_sequence, h.base_sequence + h.record_count)]
    assert sequences == list(range(total))


# -- transactions ---------------------------------------------------------------------------------------------
def _txn_batch(producer: Producer, pid: int, seq: int, count: int = 2) -> BatchHeader:
    header = BatchHeader(producer.next_offset, count - 1, count, NOW, NOW, 0, pid, 0, seq, ATTR_TRANSACTIONAL)
    producer.log.append(header)
    producer.manager.update(header, NOW)
    return header


def _marker(producer: Producer, pid: int, commit: bool) -> BatchHeader:
    attributes = ATTR_CONTROL | ATTR_TRANSACTIONAL | (ATTR_COMMIT_MARKER if commit else 0)
    header = BatchHeader(producer.next_offset, 0, 0, NOW, NOW, 0, pid, 0, -1, attributes)
    producer.log.append(header)
    producer.manager.update(header, NOW)
    return header


def test_open_transactions_bound_the_last_stable_offset_and_aborts_are_indexed(producer):
    manager = producer.manager
    assert manager.first_unstable_offset() is None
    a1 = _txn_batch(producer, 1, 0)          # offsets 0-1, producer 1
    b1 = _txn_batch(producer, 2, 0)          # offsets 2-3, producer 2
    assert manager.first_unstable_offset() == 0
    _marker(producer, 1, commit=True)        # offset 4: producer 1 commits
    assert manager.first_unstable_offset() == 2
    b2 = _txn_batch(producer, 2, 2)          # offsets 5-6
    abort = _marker(producer, 2, commit=False)
    assert manager.first_unstable_offset() is None
    assert manager.aborted == [AbortedTransaction(2, 2, abort.base_offset)]
    assert [manager.is_aborted(h) for h in (a1, b1, b2, abort)] == [False, True, True, True]
    later = _txn_batch(producer, 2, 4)       # a new transaction of producer 2: not aborted
    assert not manager.is_aborted(later) and manager.first_unstable_offset() == later.base_offset


def test_aborted_transactions_survive_snapshots_and_rebuilds(producer):
    _txn_batch(producer, 7, 0)
    _marker(producer, 7, commit=False)
    _txn_batch(producer, 8, 0)               # still open
    restored = ProducerStateManager.from_snapshot_bytes(producer.manager.snapshot_bytes())
    assert restored == producer.manager and restored.first_unstable_offset() == 3
    rebuilt = ProducerStateManager("topic-0")
    rebuilt.replay(producer.log, NOW)
    assert rebuilt.aborted == producer.manager.aborted
    rebuilt.drop_aborted_below(3)            # retention moved past the aborted transaction (marker at 2)
    assert rebuilt.aborted == [] and not rebuilt.is_aborted(producer.log[0])


def test_version_1_snapshots_are_still_read():
    body = msgpack.packb(["topic-0", 5, [[PID, 0, NOW, None, [[0, 4, 0, 4, NOW]]]]])
    import crc32c

    old = msgpack.packb([1, crc32c.crc32c(body), body])
    manager = ProducerStateManager.from_snapshot_bytes(old)
    assert manager.end_offset == 5 and manager.aborted == [] and manager.entry(PID).last_seq == 4
