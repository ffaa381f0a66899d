"""Log: appends, reads, timestamps, rolling, schemas, flushing, replication appends, truncation, reopen."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pytest
from storage_helpers import BIG, offsets_of, records, rows

import raystream.storage.segment as segment_module
from raystream.clock import now_ms
from raystream.errors import (
    ClosedError,
    CorruptRecordError,
    InvalidLogDirectoryError,
    InvalidRecordError,
    KafkaStorageError,
    LogDirectoryLockedError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    SchemaMismatchError,
)
from raystream.record import ATTR_LOG_APPEND_TIME, ATTR_TRANSACTIONAL
from raystream.storage.batch import RawBatches, raw_batches
from raystream.storage.files import write_state
from raystream.storage.segment import LogSegment


def _fill(log, batch_sizes, now=1000, **kwargs):
    infos, start = [], log.log_end_offset
    for n in batch_sizes:
        infos.append(log.append(records(n, start=start), now=now, **kwargs))
        start += n
    return infos


# -- append -------------------------------------------------------------------------------------------------
def test_append_assigns_contiguous_offsets(make_log):
    log = make_log()
    assert log.log_end_offset == 0 and log.log_start_offset == 0
    infos = _fill(log, [3, 1, 4], now=500)
    assert [(i.base_offset, i.last_offset, i.record_count) for i in infos] == [(0, 2, 3), (3, 3, 1), (4, 7, 4)]
    assert all(i.max_timestamp == 500 and i.log_append_time == -1 for i in infos)
    assert log.log_end_offset == 8
    assert rows(log) == [(o, 500, f"k{o}".encode(), f"v{o}".encode()) for o in range(8)]


def test_append_accepts_a_table_with_several_chunks(make_log):
    log = make_log()
    table = pa.Table.from_batches([records(2), records(3, start=2)])
    info = log.append(table, now=1)
    assert (info.base_offset, info.last_offset) == (0, 4)
    assert [r[2] for r in rows(log)] == [f"k{i}".encode() for i in range(5)]
    assert len(log.read_batches(0, BIG)) == 1  # one call, one batch


def test_headers_and_null_values_roundtrip(make_log):
    log = make_log()
    headers = [[{"key": "a", "value": b"1"}, {"key": "a", "value": None}], [], [{"key": "z", "value": b""}]]
    log.append(records(keys=[b"x", None, b""], values=[None, b"v", b"w"], headers=headers), now=1)
    got = log.read(0, BIG)[0].to_pydict()
    assert got["key"] == [b"x", None, b""]
    assert got["value"] == [None, b"v", b"w"]
    assert got["headers"] == headers


def test_user_timestamp_column_is_used_and_nulls_take_now(make_log):
    log = make_log()
    info = log.append(records(3, timestamps=[30, None, 10]), now=999)
    assert info.max_timestamp == 999
    info2 = log.append(records(2, start=3, timestamps=[50, 40]), now=999)
    assert info2.max_timestamp == 50
    assert [r[1] for r in rows(log)] == [30, 999, 10, 50, 40]
    headers = [b.header for b in log.read_batches(0, BIG)]
    assert [(h.first_timestamp, h.max_timestamp) for h in headers] == [(30, 999), (50, 50)]
    assert "_timestamp" not in log.schema.names


def test_log_append_time_overrides_record_timestamps(make_log):
    log = make_log({"message.timestamp.type": "LogAppendTime"})
    info = log.append(records(2, timestamps=[5, 6]), now=777)
    assert [r[1] for r in rows(log)] == [777, 777]
    header = log.read_batches(0, BIG)[0].header
    assert header.attributes & ATTR_LOG_APPEND_TIME
    assert (header.first_timestamp, header.max_timestamp) == (777, 777)
    assert info.max_timestamp == 777
    assert info.log_append_time == 777  # the produce response carries the broker's append time


def test_log_append_time_requested_per_batch(make_log):
    log = make_log()
    info = log.append(records(1, timestamps=[5]), now=321, attributes=ATTR_LOG_APPEND_TIME)
    assert info.log_append_time == 321
    assert rows(log)[0][1] == 321


def test_arrow_native_schema_log(make_log, log_dir):
    schema = pa.schema([("id", pa.int64()), ("price", pa.float64()), ("name", pa.string()),
                        ("qty", pa.int32())])
    log = make_log(schema=schema)
    assert log.schema.equals(schema)
    batch = pa.RecordBatch.from_pydict({"id": [1, 2, 3], "price": [1.5, None, -2.0], "name": ["a", "bé", None],
                                        "qty": pa.array([7, 8, 9], pa.int32())}, schema=schema)
    log.append(batch, now=10)
    log.append(batch.slice(1), now=20)
    got = pa.Table.from_batches(log.read(0, BIG))
    assert got.column("_offset").to_pylist() == [0, 1, 2, 3, 4]
    assert got.column("price").to_pylist() == [1.5, None, -2.0, None, -2.0]
    assert got.column("name").to_pylist() == ["a", "bé", None, "bé", None]
    assert got.schema.field("qty").type == pa.int32()
    only = log.read(1, BIG, columns=["name", "id"])
    assert [b.schema.names for b in only] == [["name", "id"], ["name", "id"]]
    assert pa.Table.from_batches(only).column("id").to_pylist() == [2, 3, 2, 3]
    log.close()
    again = make_log(path=log_dir)  # the schema comes from the files, not the argument
    assert again.schema.equals(schema)
    assert pa.Table.from_batches(again.read(0, BIG)).equals(got)


# -- read ---------------------------------------------------------------------------------------------------
@pytest.fixture
def three_batches(make_log):
    log = make_log()
    _fill(log, [3, 3, 3])  # [0-2] [3-5] [6-8]
    return log


@pytest.mark.parametrize("start, max_offset, expected", [
    (0, None, list(range(9))), (1, None, list(range(1, 9))), (4, None, list(range(4, 9))),
    (8, None, [8]), (9, None, []), (0, 3, [0, 1, 2]), (0, 4, [0, 1, 2, 3]), (1, 5, [1, 2, 3, 4]),
    (4, 5, [4]), (4, 4, []), (5, 3, []), (0, 100, list(range(9))), (2, 7, [2, 3, 4, 5, 6])])
def test_read_range_semantics(three_batches, start, max_offset, expected):
    got = three_batches.read(start, BIG, max_offset=max_offset)
    assert offsets_of(got) == expected
    assert all(b.num_rows for b in got)
    assert [r[2] for r in rows(three_batches, start, max_offset)] == [f"k{o}".encode() for o in expected]


def test_read_mid_batch_slices_zero_copy(three_batches):
    first = three_batches.read(4, BIG, max_offset=5)
    assert len(first) == 1 and first[0].num_rows == 1
    assert first[0].column("value").to_pylist() == [b"v4"]


def test_read_returns_at_least_one_batch_even_above_max_bytes(make_log):
    log = make_log()
    big = os.urandom(50_000)
    log.append(records(keys=[b"a"], values=[big]), now=1)
    log.append(records(keys=[b"b"], values=[b"small"]), now=1)
    got = log.read(0, 1)
    assert len(got) == 1 and got[0].column("value").to_pylist() == [big]
    assert offsets_of(log.read(1, 1)) == [1]


def test_read_max_bytes_limits_the_total(three_batches):
    sizes = [b.get_total_buffer_size() for b in three_batches.read(0, BIG)]
    assert len(sizes) == 3
    assert offsets_of(three_batches.read(0, sizes[0] + sizes[1])) == list(range(6))
    assert offsets_of(three_batches.read(0, sizes[0] + sizes[1] - 1)) == list(range(3))
    assert offsets_of(three_batches.read(0, sum(sizes))) == list(range(9))


def test_read_projection_returns_only_requested_columns(three_batches):
    got = three_batches.read(2, BIG, max_offset=7, columns=["value", "_offset"])
    assert all(b.schema.names == ["value", "_offset"] for b in got)
    table = pa.Table.from_batches(got)
    assert table.column("_offset").to_pylist() == [2, 3, 4, 5, 6]
    assert table.column("value").to_pylist() == [f"v{i}".encode() for i in range(2, 7)]
    assert pa.Table.from_batches(three_batches.read(0, BIG, columns=["key"])).num_columns == 1


def test_read_batches_returns_whole_stored_batches(three_batches):
    got = three_batches.read_batches(4, BIG, max_offset=6)
    assert [(b.base_offset, b.last_offset, b.data.num_rows) for b in got] == [(3, 5, 3)]
    assert [b.base_offset for b in three_batches.read_batches(0, 1)] == [0]
    assert [b.base_offset for b in three_batches.read_batches(0, BIG, verify=True)] == [0, 3, 6]
    assert three_batches.read_batches(9, BIG) == []


@pytest.mark.parametrize("reopen", [False, True], ids=["after-appends", "after-clean-reopen"])
def test_read_in_a_big_segment_starts_from_the_index(make_log, log_dir, monkeypatch, reopen):
    log = make_log()
    one = records(1)
    for _ in range(1000):
        log.append(one, now=1)
    if reopen:
        log.close()
        log = make_log(path=log_dir)
    assert len(log.segments) == 1 and len(log.active_segment.offset_index) > 50
    calls = {"decode": 0, "parse_frame": 0, "frames": 0}

    def counting(name):
        original = getattr(segment_module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    real_frames = LogSegment.frames

    def counting_frames(self, position=None):
        for item in real_frames(self, position):
            calls["frames"] += 1
            yield item

    monkeypatch.setattr(segment_module, "decode", counting("decode"))
    monkeypatch.setattr(segment_module, "parse_frame", counting("parse_frame"))
    monkeypatch.setattr(LogSegment, "frames", counting_frames)
    got = log.read(999, BIG)
    assert offsets_of(got) == [999]
    assert calls["decode"] == 1
    # A short scan from the floor entry of the index, not 1000 frames.
    assert calls["frames"] <= 20 and calls["parse_frame"] <= 20, calls
    calls.update(decode=0, parse_frame=0, frames=0)
    assert offsets_of(log.read(500, 1)) == [500]
    assert calls["decode"] <= 2 and calls["frames"] <= 20 and calls["parse_frame"] <= 20, calls


# -- timestamps -------------------------------------------------------------------------------------------------
def _timestamped_log(make_log, config=None, seed=3, batches=40):
    rng = random.Random(seed)
    log = make_log({"index.interval.bytes": 1500, "segment.bytes": 12_000, **(config or {})})
    flat = []
    for _ in range(batches):
        tss = [rng.randint(0, 10_000) for _ in range(rng.randint(1, 3))]
        info = log.append(records(len(tss), start=log.log_end_offset, timestamps=tss), now=1)
        flat.extend(zip(range(info.base_offset, info.last_offset + 1), tss, strict=True))
    assert len(log.segments) > 2
    return log, flat


def _brute_force(flat, target, start=0):
    return next((o for o, t in flat if t >= target and o >= start), None)


def test_offset_for_timestamp_matches_brute_force(make_log):
    log, flat = _timestamped_log(make_log)
    for target in [-5, 0, *range(1, 10_001, 97), max(t for _, t in flat), 10_001]:
        assert log.offset_for_timestamp(target) == _brute_force(flat, target), target


def test_offset_for_timestamp_after_clean_reopen_matches_brute_force(make_log, log_dir):
    log, flat = _timestamped_log(make_log)
    log.close()
    log = make_log(path=log_dir, config={"index.interval.bytes": 1500, "segment.bytes": 12_000})
    assert log.recovery_report.clean_shutdown
    wrong = [(t, log.offset_for_timestamp(t), _brute_force(flat, t))
             for t in range(0, 10_001, 37) if log.offset_for_timestamp(t) != _brute_force(flat, t)]
    assert wrong == []


def test_offset_for_timestamp_respects_log_start_offset(make_log):
    log = make_log()
    log.append(records(3, timestamps=[100, 200, 300]), now=1)
    log.append(records(2, start=3, timestamps=[150, 400]), now=1)
    assert log.offset_for_timestamp(150) == 1
    log.delete_records_before(2)
    assert log.offset_for_timestamp(150) == 2
    assert log.offset_for_timestamp(350) == 4
    assert log.offset_for_timestamp(401) is None
    with pytest.raises(TypeError):
        log.offset_for_timestamp("100")


# -- rolling --------------------------------------------------------------------------------------------------
def test_rolls_on_segment_bytes(make_log):
    log = make_log({"segment.bytes": 3000})
    for i in range(20):
        log.append(records(1, start=i), now=1)
    assert len(log.segments) > 3
    for before, after in zip(log.segments, log.segments[1:], strict=False):
        assert after.base_offset == before.next_offset
    for seg in log.segments[:-1]:
        assert seg.batch_count == 1 or seg.size <= 3000, (seg, "exceeds segment.bytes")
    assert offsets_of(log.read(0, BIG)) == list(range(20))
    assert [s.base_offset for s in log.segments] == sorted(int(p.name[:20]) for p in
                                                           log.directory.glob("*.arrows"))


def test_a_batch_larger_than_segment_bytes_gets_its_own_segment(make_log):
    log = make_log({"segment.bytes": 100})
    _fill(log, [1, 1, 1])
    assert [s.batch_count for s in log.segments] == [1, 1, 1]
    assert offsets_of(log.read(0, BIG)) == [0, 1, 2]


def test_rolls_on_segment_ms_by_record_timestamps(make_log):
    log = make_log({"segment.ms": 1000})
    log.append(records(1, timestamps=[10_000]), now=0)
    log.append(records(1, start=1, timestamps=[10_999]), now=99_999_999)  # wall clock does not matter
    assert len(log.segments) == 1
    log.append(records(1, start=2, timestamps=[11_000]), now=0)
    assert [s.base_offset for s in log.segments] == [0, 2]
    log.append(records(1, start=3, timestamps=[5]), now=0)  # older records do not roll
    assert len(log.segments) == 2
    log.append(records(1, start=4), now=12_000)  # without the column, the append time is the timestamp
    assert [s.base_offset for s in log.segments] == [0, 2, 4]


def test_roll_flushes_and_advances_the_recovery_point(make_log):
    log = make_log()
    _fill(log, [2, 2])
    assert log.recovery_point == 0
    log.roll()
    assert log.recovery_point == 4 and [s.base_offset for s in log.segments] == [0, 4]
    log.roll()  # an empty active segment is not rolled again
    assert len(log.segments) == 2


def test_change_schema_rolls_and_keeps_old_data_readable(make_log, log_dir):
    log = make_log()
    _fill(log, [2])
    new = pa.schema([("user", pa.string()), ("score", pa.float32())])
    log.change_schema(new)
    assert log.schema.equals(new) and [s.base_offset for s in log.segments] == [0, 2]
    with pytest.raises(SchemaMismatchError):
        log.append(records(1), now=1)
    log.append(pa.RecordBatch.from_pydict({"user": ["ann"], "score": pa.array([1.0], pa.float32())}), now=2)
    got = log.read(0, BIG)
    assert [b.schema.names for b in got] == [["_offset", "_timestamp", "key", "value", "headers"],
                                            ["_offset", "_timestamp", "user", "score"]]
    assert offsets_of(got) == [0, 1, 2]
    assert offsets_of(log.read(0, BIG, columns=["_offset"])) == [0, 1, 2]
    log.change_schema(new)  # no change: no roll
    assert len(log.segments) == 2
    log.close()
    again = make_log(path=log_dir)
    assert again.schema.equals(new)
    assert offsets_of(again.read(0, BIG)) == [0, 1, 2]


def test_change_schema_on_an_empty_active_segment_replaces_it(make_log, log_dir):
    log = make_log()
    _fill(log, [1])
    a = pa.schema([("a", pa.int64())])
    b = pa.schema([("b", pa.int64())])
    log.change_schema(a)
    log.change_schema(b)
    assert [s.base_offset for s in log.segments] == [0, 1]
    assert log.schema.equals(b)
    log.close()
    again = make_log(path=log_dir)
    assert again.schema.equals(b) and again.log_end_offset == 1


# -- flushing -------------------------------------------------------------------------------------------------
def test_flush_messages_triggers_fsync(make_log, monkeypatch):
    log = make_log({"flush.messages": 5})
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    _fill(log, [2, 2])
    assert log.recovery_point == 0 and log.active_segment._fd not in synced
    _fill(log, [1])
    assert log.recovery_point == 5
    assert log.active_segment._fd in synced
    _fill(log, [3])
    assert log.recovery_point == 5
    _fill(log, [3])
    assert log.recovery_point == 11


def test_flush_ms_triggers_flush_by_append_time(make_log):
    log = make_log({"flush.ms": 100}, now=1000)
    log.append(records(1), now=1050)
    assert log.recovery_point == 0
    log.append(records(1), now=1100)
    assert log.recovery_point == 2


def test_explicit_flush_advances_the_recovery_point(make_log):
    log = make_log()
    _fill(log, [3])
    log.flush(now=now_ms())
    assert log.recovery_point == 3


# -- replication --------------------------------------------------------------------------------------------
def _replicate(leader, follower, start: int = 0) -> int:
    """What a follower's ``replicate`` does with the leader's ``read_raw``: check, then append verbatim."""
    for group in leader.read_raw(start, BIG):
        for raw in raw_batches(group):
            follower.append_raw_as_follower(raw, now=99)
    return follower.log_end_offset


def test_append_raw_as_follower_writes_the_leaders_bytes_with_offsets_and_headers(make_log, tmp_path):
    leader = make_log()
    leader.append(records(2), leader_epoch=1, producer_id=7, producer_epoch=2, base_sequence=0,
                  attributes=ATTR_TRANSACTIONAL, schema_id=3, now=10)
    leader.append(records(3, start=2, timestamps=[5, 6, 7]), leader_epoch=2, now=20)
    follower = make_log(path=tmp_path / "follower")
    assert _replicate(leader, follower) == 5
    assert [b.header for b in follower.read_batches(0, BIG)] == [b.header for b in leader.read_batches(0, BIG)]
    assert rows(follower) == rows(leader)
    assert follower.epoch_cache.entries == [(1, 0), (2, 2)]
    leader.flush(now=30)
    follower.flush(now=30)
    assert follower.active_segment.path.read_bytes() == leader.active_segment.path.read_bytes()  # verbatim
    # A gap (the leader compacted or deleted records) keeps the leader's offsets.
    gapped = make_log(path=tmp_path / "gapped")
    gapped.truncate_fully_and_start_at(10)
    gapped.append(records(3, start=10), now=40)
    assert _replicate(gapped, follower, start=10) == 13
    assert offsets_of(follower.read(0, BIG)) == [0, 1, 2, 3, 4, 10, 11, 12]
    first = next(raw_batches(leader.read_raw(0, BIG)[0]))
    with pytest.raises(InvalidRecordError):
        follower.append_raw_as_follower(first, now=now_ms())
    with pytest.raises(TypeError):
        follower.append_raw_as_follower(leader.read_batches(0, BIG)[0], now=now_ms())
    assert follower.log_end_offset == 13


def test_read_raw_slices_each_segment_within_max_bytes_and_max_offset(make_log):
    log = make_log()
    for n in (2, 3):
        log.append(records(n), now=10)
    log.roll()
    log.append(records(4), now=10)
    groups = log.read_raw(0, BIG)
    assert [[r.header.base_offset for r in raw_batches(g)] for g in groups] == [[0, 2], [5]]
    assert [[r.header.base_offset for r in raw_batches(g)] for g in log.read_raw(3, BIG, max_offset=5)] == [[2]]
    one = log.read_raw(0, 1)  # at least one batch, whatever max_bytes says
    assert [[r.header.base_offset for r in raw_batches(g)] for g in one] == [[0]]
    assert log.read_raw(9, BIG) == []


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_raw_batches_refuse_altered_or_torn_bytes(make_log, tmp_path, damage):
    leader = make_log()
    leader.append(records(3), now=10)
    (group,) = leader.read_raw(0, BIG)
    data = bytearray(group.data.to_pybytes())
    if damage == "flip":
        data[-20] ^= 0x01  # in the body: only the checksum can tell
    else:
        del data[-16:]
    bad = RawBatches(group.schema, pa.py_buffer(bytes(data)))
    with pytest.raises(CorruptRecordError):
        list(raw_batches(bad))


def test_leader_epoch_cache_follows_appends_and_truncation(make_log, log_dir):
    log = make_log()
    _fill(log, [2], leader_epoch=0)
    _fill(log, [2], leader_epoch=0)
    _fill(log, [3], leader_epoch=2)
    _fill(log, [1], leader_epoch=5)
    assert log.epoch_cache.entries == [(0, 0), (2, 4), (5, 7)]
    assert log.epoch_cache.end_offset_for(2, log.log_end_offset) == (2, 7)
    assert log.epoch_cache.end_offset_for(4, log.log_end_offset) == (2, 7)
    assert log.epoch_cache.end_offset_for(5, log.log_end_offset) == (5, 8)
    assert log.epoch_cache.epoch_for_offset(5) == 2
    assert log.truncate_to(7) == 7
    assert log.epoch_cache.entries == [(0, 0), (2, 4)]
    _fill(log, [1], leader_epoch=6)
    assert log.epoch_cache.entries == [(0, 0), (2, 4), (6, 7)]
    log.close()
    again = make_log(path=log_dir)
    assert again.epoch_cache.entries == [(0, 0), (2, 4), (6, 7)]
    again.delete_records_before(5)
    assert again.epoch_cache.entries == [(2, 5), (6, 7)]


# -- truncation and deletion ----------------------------------------------------------------------------------
@pytest.fixture
def multi_segment(make_log):
    """Segments [0-5] [6-11] and active [12-14]; batches of 3."""
    log = make_log()
    _fill(log, [3, 3])
    log.roll()
    _fill(log, [3, 3])
    log.roll()
    _fill(log, [3])
    log.set_high_watermark(15)
    assert [s.base_offset for s in log.segments] == [0, 6, 12]
    return log


@pytest.mark.parametrize("offset, leo, segments", [(15, 15, 3), (20, 15, 3), (13, 12, 3), (12, 12, 3),
                                                   (11, 9, 2), (9, 9, 2), (7, 6, 2), (6, 6, 2),
                                                   (5, 3, 1), (1, 0, 1)])
def test_truncate_to(multi_segment, offset, leo, segments):
    log = multi_segment
    assert log.truncate_to(offset) == leo
    assert log.log_end_offset == leo and len(log.segments) == segments
    assert offsets_of(log.read(0, BIG)) == list(range(leo))
    assert log.high_watermark == leo and log.recovery_point <= leo
    assert len(list(log.directory.glob("*.arrows"))) == segments
    info = log.append(records(1), now=1)
    assert info.base_offset == leo


def test_truncate_to_then_crash_keeps_the_truncation(multi_segment, log_dir, make_log):
    multi_segment.truncate_to(8)
    multi_segment._simulate_crash()
    again = make_log(path=log_dir)
    assert again.log_end_offset == 6
    assert offsets_of(again.read(0, BIG)) == list(range(6))


def test_truncate_fully_and_start_at(multi_segment, log_dir, make_log):
    log = multi_segment
    assert log.truncate_fully_and_start_at(100) == 100
    assert (log.log_start_offset, log.log_end_offset, len(log.segments)) == (100, 100, 1)
    assert log.epoch_cache.entries == []
    assert log.read(100, BIG) == []
    with pytest.raises(OffsetOutOfRangeError):
        log.read(99, BIG)
    assert log.append(records(2), now=1).base_offset == 100
    log.close()
    again = make_log(path=log_dir)
    assert (again.log_start_offset, again.log_end_offset) == (100, 102)
    assert offsets_of(again.read(100, BIG)) == [100, 101]


def test_delete_records_before(multi_segment, log_dir, make_log):
    log = multi_segment
    assert log.delete_records_before(4) == 4
    assert len(log.segments) == 3  # the first segment still holds 4 and 5
    assert offsets_of(log.read(4, BIG)) == list(range(4, 15))
    with pytest.raises(OffsetOutOfRangeError):
        log.read(3, BIG)
    assert log.delete_records_before(2) == 4  # never backwards
    assert log.delete_records_before(7) == 7
    assert [s.base_offset for s in log.segments] == [6, 12]
    assert log.delete_records_before(15) == 15
    assert [s.base_offset for s in log.segments] == [12]  # the active segment stays
    assert log.read(15, BIG) == []
    with pytest.raises(OffsetOutOfRangeError):
        log.delete_records_before(16)
    log._simulate_crash()
    again = make_log(path=log_dir)
    assert (again.log_start_offset, again.log_end_offset) == (15, 15)


def test_set_high_watermark_is_clamped(multi_segment):
    multi_segment.set_high_watermark(100)
    assert multi_segment.high_watermark == 15
    multi_segment.delete_records_before(7)
    multi_segment.set_high_watermark(2)
    assert multi_segment.high_watermark == 7


# -- close and reopen ---------------------------------------------------------------------------------------------
def test_clean_close_and_reopen_keeps_everything(multi_segment, log_dir, make_log, monkeypatch):
    log = multi_segment
    log.delete_records_before(1)
    log.append(records(1, start=15), leader_epoch=4, now=5)
    log.set_high_watermark(14)
    before = (rows(log), [b.header for b in log.read_batches(1, BIG)], log.epoch_cache.entries,
              [(s.base_offset, s.next_offset, s.size, s.max_timestamp) for s in log.segments])
    log.close()
    log.close()  # idempotent
    assert (log_dir / ".clean_shutdown").exists()
    rebuilt = []
    real_rebuild = LogSegment.rebuild
    monkeypatch.setattr(LogSegment, "rebuild", lambda self, verify: rebuilt.append(self) or real_rebuild(self, verify))
    again = make_log(path=log_dir)
    report = again.recovery_report
    assert report.clean_shutdown and report.truncated_bytes == 0 and report.error is None
    assert report.log_end_offset == 16
    assert rebuilt == []  # index files were trusted, nothing scanned
    assert not (log_dir / ".clean_shutdown").exists()
    assert (again.log_start_offset, again.log_end_offset, again.high_watermark, again.recovery_point) == \
        (1, 16, 14, 16)
    assert (rows(again), [b.header for b in again.read_batches(1, BIG)], again.epoch_cache.entries,
            [(s.base_offset, s.next_offset, s.size, s.max_timestamp) for s in again.segments]) == before
    assert again.append(records(1), now=6).base_offset == 16


def test_crash_without_damage_keeps_everything(multi_segment, log_dir, make_log):
    expected = rows(multi_segment)
    multi_segment._simulate_crash()
    again = make_log(path=log_dir)
    assert not again.recovery_report.clean_shutdown
    assert again.recovery_report.truncated_bytes == 0 and again.recovery_report.error is None
    assert rows(again) == expected


def test_context_manager_closes_cleanly(log_dir, make_log):
    with make_log() as log:
        _fill(log, [2])
    assert log._closed
    assert make_log(path=log_dir).recovery_report.clean_shutdown


def test_delete_removes_the_directory(make_log, log_dir):
    log = make_log()
    _fill(log, [2])
    log.roll()
    log.delete()
    assert not log_dir.exists()


# -- bad input: a typed error, nothing lost -------------------------------------------------------------------------
@pytest.fixture
def full_log(make_log):
    """A two-segment log; ``check()`` asserts it still holds exactly its records, in memory and on disk."""
    log = make_log({"max.message.bytes": 4000})
    _fill(log, [3])
    log.roll()
    _fill(log, [2])
    expected = rows(log)
    sizes = [s.size for s in log.segments]

    def check():
        assert [s.size for s in log.segments] == sizes  # nothing was written
        assert rows(log) == expected
        assert log.log_end_offset == 5
        log.append(records(1, start=5), now=1000)
        expected.append((5, 1000, b"k5", b"v5"))
        assert rows(log) == expected
        log.truncate_to(5)
        del expected[-1]
    log.check = check
    return log


@pytest.mark.parametrize("value", [
    {"key": [b"a"], "value": [b"b"], "headers": [[]]}, [{"key": b"a", "value": b"b", "headers": []}],
    None, b"bytes", pa.array([1, 2])], ids=["dict", "list", "none", "bytes", "array"])
def test_append_of_a_non_arrow_value_is_a_type_error(full_log, value):
    with pytest.raises(TypeError):
        full_log.append(value, now=now_ms())
    full_log.check()


def test_append_of_a_pandas_frame_is_a_type_error(full_log):
    pd = pytest.importorskip("pandas")
    with pytest.raises(TypeError):
        full_log.append(pd.DataFrame({"key": [b"a"], "value": [b"b"], "headers": [[]]}), now=now_ms())
    full_log.check()


def test_append_of_an_empty_batch_is_invalid(full_log):
    with pytest.raises(InvalidRecordError, match="empty"):
        full_log.append(records(0), now=now_ms())
    with pytest.raises(InvalidRecordError):
        full_log.append(pa.Table.from_batches([], schema=records(0).schema), now=now_ms())
    full_log.check()


def test_append_above_max_message_bytes_is_record_too_large(full_log):
    huge = records(keys=[b"k"], values=[b"x" * 5000])
    with pytest.raises(RecordTooLargeError) as info:
        full_log.append(huge, now=now_ms())
    assert info.value.limit == 4000 and info.value.size >= 5000
    assert "4000" in str(info.value)
    full_log.check()


@pytest.mark.parametrize("batch, named", [
    (pa.RecordBatch.from_pydict({"key": [b"a"], "value": [b"b"]}), "headers"),
    (pa.RecordBatch.from_pydict({"key": ["a"], "value": [b"b"], "headers": pa.array([[]], pa.list_(
        pa.struct([("key", pa.string()), ("value", pa.binary())])))}), "key"),
    (records(1).append_column("extra", pa.array([1])), "extra"),
    (records(1).append_column("_timestamp", pa.array(["now"])), "_timestamp"),
    (records(1).append_column("_offset", pa.array([7], pa.int64())), "_offset"),
    (pa.RecordBatch.from_arrays([records(1).column(i) for i in (1, 0, 2)], names=["value", "key", "headers"]),
     "order"),
], ids=["missing", "wrong-type", "extra", "bad-timestamp", "offset-column", "order"])
def test_append_with_a_mismatched_schema_names_the_fields(full_log, batch, named):
    with pytest.raises(SchemaMismatchError) as info:
        full_log.append(batch, now=now_ms())
    assert named in str(info.value)
    assert any(named in str(f) for f in info.value.fields), info.value.fields
    full_log.check()


def test_arrow_native_schema_mismatch_names_every_field(make_log):
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("x", pa.float64()), ("s", pa.string())])
    log = make_log(schema=schema)
    bad = pa.RecordBatch.from_pydict({"id": [1], "x": ["oops"], "t": [1]})
    with pytest.raises(SchemaMismatchError) as info:
        log.append(bad, now=now_ms())
    message = str(info.value)
    assert "'id'" in message and "nullable" in message  # nullable where the schema says not null
    assert "'x'" in message and "'s'" in message and "'t'" in message
    assert len(info.value.fields) == 4
    assert log.log_end_offset == 0


def test_schema_with_reserved_names_or_wrong_type(tmp_path, make_log):
    with pytest.raises(SchemaMismatchError):
        make_log(schema=pa.schema([("_offset", pa.int64())]), path=tmp_path / "a")
    assert offsets_of(make_log(path=tmp_path / "a").read(0, BIG)) == []  # the lock was released
    with pytest.raises(TypeError):
        make_log(schema="key: binary", path=tmp_path / "b")


@pytest.mark.parametrize("call", [
    lambda log: log.truncate_to(-1), lambda log: log.truncate_fully_and_start_at(-5),
    lambda log: log.delete_records_before(-1), lambda log: log.read(0, 0), lambda log: log.read(0, -1),
    lambda log: log.read_batches(0, 0), lambda log: log.read(0, BIG, columns=["nope"]),
], ids=["truncate_to", "truncate_fully", "delete_records_before", "zero-max-bytes", "negative-max-bytes",
        "read_batches-zero-max-bytes", "unknown-column"])
def test_argument_mistakes_are_value_errors(full_log, call):
    with pytest.raises(ValueError):
        call(full_log)
    full_log.check()


@pytest.mark.parametrize("call", [
    lambda log: log.read("0", BIG), lambda log: log.read(True, BIG), lambda log: log.read(1.0, BIG),
    lambda log: log.truncate_to("3"), lambda log: log.read(0, BIG, columns="key"),
    lambda log: log.read(0, BIG, columns=[1]), lambda log: log.delete_records_before(2.0),
], ids=["str", "bool", "float", "truncate-str", "columns-str", "columns-int", "delete-float"])
def test_argument_type_mistakes_are_type_errors(full_log, call):
    with pytest.raises(TypeError):
        call(full_log)
    full_log.check()


@pytest.mark.parametrize("start", [-1, 6, 100])
def test_read_out_of_range_carries_both_bounds(full_log, start):
    for read in (full_log.read, full_log.read_batches):
        with pytest.raises(OffsetOutOfRangeError) as info:
            read(start, BIG)
        error = info.value
        assert (error.offset, error.log_start_offset, error.log_end_offset) == (start, 0, 5)
        assert str(start) in str(error) and "log_start_offset=0" in str(error) and "log_end_offset=5" in str(error)
    full_log.check()


def test_read_below_the_log_start_offset_carries_both_bounds(full_log):
    full_log.delete_records_before(3)
    with pytest.raises(OffsetOutOfRangeError) as info:
        full_log.read(2, BIG)
    assert (info.value.log_start_offset, info.value.log_end_offset) == (3, 5)
    assert "log_start_offset=3" in str(info.value) and "log_end_offset=5" in str(info.value)


def test_a_path_that_is_not_a_log_directory(tmp_path, make_log):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(InvalidLogDirectoryError) as info:
        make_log(path=foreign)
    assert "notes.txt" in str(info.value) and not info.value.retriable
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InvalidLogDirectoryError):
        make_log(path=a_file)
    assert a_file.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_log(path=empty).log_end_offset == 0  # an empty directory becomes a log


def test_a_log_of_an_unknown_format_is_rejected_and_released(tmp_path, make_log):
    log = make_log(path=tmp_path / "old")
    log.close()
    write_state(tmp_path / "old" / "raystream-log.meta", {"format": 99})
    for _ in range(2):
        with pytest.raises(InvalidLogDirectoryError, match="format"):
            make_log(path=tmp_path / "old")


def test_two_owners_at_once(full_log, log_dir, make_log):
    with pytest.raises(LogDirectoryLockedError) as info:
        make_log(path=log_dir)
    assert isinstance(info.value, KafkaStorageError) and not info.value.retriable
    full_log.check()
    full_log.close()
    assert make_log(path=log_dir).log_end_offset == 5


@pytest.mark.parametrize("call", [
    lambda log: log.append(records(1), now=now_ms()), lambda log: log.append_raw_as_follower(None, now=now_ms()),
    lambda log: log.read(0, BIG), lambda log: log.read_batches(0, BIG), lambda log: log.read_raw(0, BIG),
    lambda log: log.flush(now=now_ms()),
    lambda log: log.roll(), lambda log: log.change_schema(pa.schema([("a", pa.int64())])),
    lambda log: log.truncate_to(1), lambda log: log.truncate_fully_and_start_at(0),
    lambda log: log.delete_records_before(1), lambda log: log.apply_retention(now=0),
    lambda log: log.offset_for_timestamp(0),
], ids=["append", "append_raw_as_follower", "read", "read_batches", "read_raw", "flush", "roll", "change_schema",
        "truncate_to", "truncate_fully", "delete_records_before", "apply_retention", "offset_for_timestamp"])
def test_operations_after_close_are_closed_errors(full_log, log_dir, make_log, call):
    expected = rows(full_log)
    full_log.close()
    with pytest.raises(ClosedError):
        call(full_log)
    full_log.close()  # still idempotent
    again = make_log(path=log_dir)
    assert again.recovery_report.clean_shutdown
    assert rows(again) == expected
