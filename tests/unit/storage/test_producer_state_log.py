"""The idempotent-producer state kept with a real log (no Ray): ``Log.iter_headers`` / ``on_roll`` and the
replica's plumbing in :mod:`raystream.actors.producer_ids` — snapshots at roll and close, replay after a
crash, rebuild after truncation, snapshot cleanup at retention, expiry."""

from __future__ import annotations

import asyncio
import logging

import pytest
from storage_helpers import records

from raystream.actors.producer_ids import ReplicaProducerState, sequence_ahead
from raystream.clock import now_ms
from raystream.core.producer_state import DuplicateBatch
from raystream.errors import ClosedError, OutOfOrderSequenceError
from raystream.record import MAX_SEQUENCE
from raystream.storage.log import Log
from raystream.storage.producer_snapshot import list_snapshots, snapshot_path

PID = 7
SMALL_SEGMENTS = {"segment.bytes": 3000}


def produce(log: Log, state: ReplicaProducerState, seq: int, n: int = 3, pid: int = PID, epoch: int = 0):
    """What the leader does: check, append unless a duplicate, record."""
    duplicate = state.check(pid, epoch, seq, n)
    if duplicate is not None:
        return duplicate
    info = log.append(records(n, start=seq), producer_id=pid, producer_epoch=epoch, base_sequence=seq, now=now_ms())
    state.record(info.header)
    return info


def fill(log: Log, state: ReplicaProducerState, batches: int, n: int = 3, pid: int = PID) -> int:
    seq = 0
    for _ in range(batches):
        produce(log, state, seq, n, pid)
        seq += n
    return seq


def reopen(log: Log, log_dir, crash: bool, config=None) -> tuple[Log, ReplicaProducerState]:
    if crash:
        log._simulate_crash()
    else:
        log.close()
    new = Log(log_dir, log.config if config is None else config, now=now_ms())
    return new, ReplicaProducerState(new, "t-0")


@pytest.fixture
def opened(make_log):
    def _open(config=None) -> tuple[Log, ReplicaProducerState]:
        log = make_log(config)
        return log, ReplicaProducerState(log, "t-0")
    return _open


# -- Log.iter_headers / on_roll / AppendInfo.header ---------------------------------------------------------
def test_iter_headers_yields_every_batch_header_from_an_offset_across_segments(make_log):
    log = make_log(SMALL_SEGMENTS)
    infos = [log.append(records(3, start=i * 3), producer_id=1, producer_epoch=0, base_sequence=i * 3, now=now_ms())
             for i in range(20)]
    assert len(log.segments) > 2
    assert list(log.iter_headers()) == [i.header for i in infos]
    assert [h.base_offset for h in log.iter_headers(31)] == list(range(30, 60, 3))  # from the batch holding 31
    assert list(log.iter_headers(log.log_end_offset)) == []
    assert infos[4].header.base_sequence == 12 and infos[4].header.producer_id == 1


def test_iter_headers_after_close_raises(make_log):
    log = make_log()
    log.append(records(2), now=now_ms())
    headers = log.iter_headers()
    log.close()
    with pytest.raises(ClosedError):
        next(headers)


def test_on_roll_is_told_every_new_segment_and_its_failure_does_not_fail_the_append(make_log, caplog):
    log = make_log(SMALL_SEGMENTS)
    rolled = []
    log.on_roll = rolled.append
    for i in range(20):
        log.append(records(3, start=i * 3), now=now_ms())
    assert rolled == [s.base_offset for s in log.segments[1:]]

    def broken(offset: int) -> None:
        raise OSError("disk full")

    log.on_roll = broken
    with caplog.at_level(logging.ERROR):
        log.roll()
        log.append(records(1), now=now_ms())
    assert "on_roll listener failed" in caplog.text and log.log_end_offset == 61


# -- the replica's producer state ---------------------------------------------------------------------------
def test_duplicates_and_gaps_are_detected(opened):
    log, state = opened()
    first = produce(log, state, 0)
    produce(log, state, 3)
    duplicate = produce(log, state, 0)
    assert isinstance(duplicate, DuplicateBatch) and duplicate.base_offset == first.base_offset
    assert log.log_end_offset == 6
    with pytest.raises(OutOfOrderSequenceError):
        produce(log, state, 9)


def test_clean_close_snapshots_at_the_log_end_and_reopen_replays_nothing(opened, log_dir):
    log, state = opened()
    fill(log, state, 4)
    log, reopened = reopen(log, log_dir, crash=False)
    assert list_snapshots(log_dir) == []  # only the replica's shutdown writes the close snapshot
    assert reopened.replayed_batches == 4
    reopened.snapshot()
    assert list_snapshots(log_dir) == [12]
    log, again = reopen(log, log_dir, crash=False)
    assert again.replayed_batches == 0 and again.manager == reopened.manager
    assert isinstance(produce(log, again, 9), DuplicateBatch)


def test_crash_recovery_replays_from_the_last_roll_snapshot(opened, log_dir):
    log, state = opened(SMALL_SEGMENTS)
    fill(log, state, 25)
    snapshots = list_snapshots(log_dir)
    assert snapshots == [s.base_offset for s in log.segments[1:]]  # one per roll, as in Kafka
    in_active = sum(1 for _ in log.iter_headers(log.active_segment.base_offset))
    expected = state.manager
    log, recovered = reopen(log, log_dir, crash=True)
    assert recovered.manager == expected
    assert recovered.replayed_batches == in_active
    assert isinstance(produce(log, recovered, 72), DuplicateBatch)  # the last batch's retry


def test_without_usable_snapshots_the_whole_log_is_replayed(opened, log_dir):
    log, state = opened(SMALL_SEGMENTS)
    fill(log, state, 25)
    expected = state.manager
    for offset in list_snapshots(log_dir):
        snapshot_path(log_dir, offset).write_bytes(b"garbage")
    log, recovered = reopen(log, log_dir, crash=True)
    assert recovered.manager == expected and recovered.replayed_batches == 25


def test_truncation_forgets_the_cut_batches(opened, log_dir):
    log, state = opened(SMALL_SEGMENTS)
    fill(log, state, 25)
    cut = log.segments[2].base_offset + 3
    log.truncate_to(cut)
    state.after_truncation()
    assert max(list_snapshots(log_dir)) <= log.log_end_offset
    assert state.manager.end_offset == log.log_end_offset
    entry = state.manager.entry(PID)
    assert entry is not None and entry.last_seq == log.log_end_offset - 1  # sequences == offsets here
    # the cut sequences are accepted again (a new leader's copy of them is replicated next)
    assert not isinstance(produce(log, state, log.log_end_offset), DuplicateBatch)


def test_full_truncation_starts_empty_without_snapshots(opened, log_dir):
    log, state = opened(SMALL_SEGMENTS)
    fill(log, state, 25)
    log.truncate_fully_and_start_at(500)
    state.after_full_truncation()
    assert list_snapshots(log_dir) == [] and len(state) == 0 and state.manager.end_offset == 500


def test_retention_deletes_snapshots_below_the_log_start_but_keeps_the_producers(opened, log_dir):
    log, state = opened({**SMALL_SEGMENTS, "retention.bytes": 6000})
    fill(log, state, 25)
    assert log.apply_retention(now=now_ms()) > 0
    state.after_retention()
    assert min(list_snapshots(log_dir)) >= log.log_start_offset
    assert state.manager.entry(PID) is not None  # KIP-360: still known after its batches went
    log, recovered = reopen(log, log_dir, crash=True)
    assert recovered.manager.entry(PID).last_seq == 74


def test_idle_producers_expire(opened):
    log, state = opened()
    produce(log, state, 0)
    last = state.manager.entry(PID).last_timestamp
    assert state.expire(10_000, now_ms=last + 9_999) == []
    assert state.expire(10_000, now_ms=last + 10_000) == [PID]
    with pytest.raises(OutOfOrderSequenceError):  # unknown again: only sequence 0 is accepted
        produce(log, state, 3)


# -- the leader's wait for overtaken batches ----------------------------------------------------------------
def test_sequence_ahead_tells_a_gap_from_an_old_retry():
    def oos(expected: int, received: int) -> OutOfOrderSequenceError:
        return OutOfOrderSequenceError("x", expected_sequence=expected, received_sequence=received)

    assert sequence_ahead(oos(3, 9)) and not sequence_ahead(oos(9, 3)) and not sequence_ahead(oos(3, 3))
    assert sequence_ahead(oos(MAX_SEQUENCE - 1, 4))  # across the wrap
    assert not sequence_ahead(OutOfOrderSequenceError("no details"))


def test_a_batch_ahead_of_its_sequence_waits_for_the_ones_before_it(opened):
    log, state = opened()
    produce(log, state, 0)
    appended = asyncio.Event()
    rechecks = []

    async def wait(seconds: float) -> None:
        try:
            await asyncio.wait_for(appended.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def scenario():
        later = asyncio.ensure_future(state.check_in_order(PID, 0, 6, 3, wait, 5.0, lambda: rechecks.append(1)))
        await asyncio.sleep(0.01)
        assert not later.done()  # held: sequence 3 has not arrived yet
        produce(log, state, 3)  # the overtaken batch arrives and is appended
        appended.set()
        assert await later is None  # now in order: may be appended
        with pytest.raises(OutOfOrderSequenceError):  # an old sequence does not wait
            await state.check_in_order(PID, 0, 1, 1, wait, 5.0, lambda: None)
        with pytest.raises(OutOfOrderSequenceError):  # a gap nobody fills: after the bound
            await state.check_in_order(PID, 0, 30, 1, wait, 0.05, lambda: None)

    asyncio.run(scenario())
    assert rechecks == [1]
