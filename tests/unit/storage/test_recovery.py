"""Opening a log after a crash or a clean shutdown: torn tails, corrupt batches, torn segment files,
missing or garbage index files, leftover temporary files."""

from __future__ import annotations

import random
import struct

import pyarrow as pa
import pytest
from storage_helpers import BIG, batch_positions, flip_byte, offsets_of, records, rows, truncate_file

from raystream.errors import CorruptRecordError, LogDirectoryLockedError
from raystream.storage.batch import parse_frame
from raystream.storage.files import read_state, write_state
from raystream.storage.segment import LogSegment


def _crashed_log(make_log, batches=4, size=3, **kwargs):
    """A crashed log of ``batches`` batches of ``size`` records in one segment, nothing flushed.
    Returns (expected rows, batch positions, segment path, file size)."""
    log = make_log(**kwargs)
    for i in range(batches):
        log.append(records(size, start=i * size), leader_epoch=i, now=100 + i)
    expected = rows(log)
    positions = batch_positions(log)
    path, size_bytes = log.active_segment.path, log.active_segment.size
    log._simulate_crash()
    return expected, positions, path, size_bytes


def _last_message(path, position):
    data = path.read_bytes()[position:]
    return data, parse_frame(pa.py_buffer(data))


def _regions(message: bytes, frame) -> dict[str, int]:
    """Offsets (within one message) of its parts."""
    return {"marker": 0, "metadata-length": 5, "flatbuffer-root": 8, "flatbuffer-middle": 40,
            "checksum-digit": frame.crc_start + 3, "batch-header": message.index(frame.header_bytes) + 1,
            "batch-header-array-length": message.index(frame.header_bytes),
            "metadata-padding-end": frame.metadata_end - 1, "body-start": frame.metadata_end,
            "body-end": frame.total_length - 1}


# -- torn tails -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", ["1", "4", "8", "9", "metadata-mid", "metadata-end", "body-mid", "last-byte"])
def test_torn_tail_is_truncated_and_intact_batches_kept(make_log, log_dir, cut):
    expected, positions, path, size = _crashed_log(make_log)
    last = positions[-1]
    message, frame = _last_message(path, last)
    cuts = {"1": 1, "4": 4, "8": 8, "9": 9, "metadata-mid": frame.metadata_end // 2,
            "metadata-end": frame.metadata_end, "body-mid": frame.metadata_end + frame.body_length // 2,
            "last-byte": frame.total_length - 1}
    truncate_file(path, last + cuts[cut])
    log = make_log(path=log_dir)
    report = log.recovery_report
    assert not report.clean_shutdown
    assert report.truncated_bytes == cuts[cut]
    assert report.error and report.deleted_segments == 0
    assert report.log_end_offset == log.log_end_offset == 9
    assert rows(log) == expected[:9]
    assert path.stat().st_size == last
    assert log.epoch_cache.entries == [(0, 0), (1, 3), (2, 6)]  # the dropped batch's epoch is forgotten
    assert log.append(records(1), now=1).base_offset == 9
    log.close()
    assert offsets_of(make_log(path=log_dir).read(0, BIG)) == list(range(10))


def test_cut_inside_an_earlier_batch_drops_everything_after_it(make_log, log_dir):
    expected, positions, path, size = _crashed_log(make_log)
    truncate_file(path, positions[1] + 20)
    log = make_log(path=log_dir)
    assert rows(log) == expected[:3]
    assert log.recovery_report.truncated_bytes == 20


def test_cut_at_a_batch_boundary_loses_nothing_more(make_log, log_dir):
    expected, positions, path, size = _crashed_log(make_log)
    truncate_file(path, positions[-1])
    log = make_log(path=log_dir)
    assert rows(log) == expected[:9]
    assert log.recovery_report.truncated_bytes == 0 and log.recovery_report.error is None


def test_recovery_report_counts_dropped_batches(make_log, log_dir):
    """RecoveryReport documents ``truncated_bytes`` / ``dropped_batches`` as what a crash cost."""
    expected, positions, path, size = _crashed_log(make_log)
    truncate_file(path, positions[2] + 30)  # batch 2 is torn; batch 3 vanished with the cut
    report = make_log(path=log_dir).recovery_report
    assert report.truncated_bytes == 30
    assert report.dropped_batches == 1


def test_every_torn_length_of_the_last_batch_is_cut_by_segment_recovery(make_log, log_dir):
    expected, positions, path, size = _crashed_log(make_log, batches=2, size=1)
    original = path.read_bytes()
    for cut in range(positions[-1] + 1, size):
        path.write_bytes(original[:cut])
        segment = LogSegment.open(path, 4096)
        try:
            result = segment.rebuild(verify=True)
        finally:
            segment.close()
        assert (result.valid_bytes, result.batches, bool(result.error)) == (positions[-1], 1, True), cut


# -- corrupt batches ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("region, mask", [
    ("marker", 0xFF), ("metadata-length", 0x10), ("flatbuffer-root", 0xFF), ("flatbuffer-middle", 0xFF),
    ("checksum-digit", 0x01), ("batch-header", 0xFF), ("batch-header-array-length", 0x01),
    ("metadata-padding-end", 0xFF), ("body-start", 0xFF), ("body-end", 0x80)])
def test_a_corrupt_byte_in_the_last_batch_drops_it(make_log, log_dir, region, mask):
    expected, positions, path, size = _crashed_log(make_log)
    message, frame = _last_message(path, positions[-1])
    flip_byte(path, positions[-1] + _regions(message, frame)[region], mask)
    log = make_log(path=log_dir)
    assert rows(log) == expected[:9]
    assert log.recovery_report.error
    assert log.recovery_report.truncated_bytes == size - positions[-1]
    assert path.stat().st_size == positions[-1]


def test_every_corrupt_byte_of_the_last_batch_is_cut_by_segment_recovery(make_log, log_dir):
    """Segment recovery must survive (and cut) a flipped byte anywhere in the last batch."""
    expected, positions, path, size = _crashed_log(make_log, batches=2, size=1)
    original = path.read_bytes()
    failures = []
    for i in range(positions[-1], size):
        damaged = bytearray(original)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        segment = LogSegment.open(path, 4096)
        try:
            result = segment.rebuild(verify=True)
            if (result.valid_bytes, result.batches) != (positions[-1], 1) or not result.error:
                failures.append((i - positions[-1], "kept"))
        except Exception as exc:  # noqa: BLE001 - any other exception means the log cannot be opened
            failures.append((i - positions[-1], type(exc).__name__))
        finally:
            segment.close()
    assert failures == [], f"{len(failures)} of {size - positions[-1]} positions: {failures[:12]}"


def _three_segments_crashed(make_log):
    log = make_log()
    for i in range(9):
        log.append(records(2, start=2 * i), now=100 + i)
        if i in (2, 5):
            log.roll()
    assert [s.base_offset for s in log.segments] == [0, 6, 12]
    expected = rows(log)
    paths = [s.path for s in log.segments]
    positions = [batch_positions(log, i) for i in range(3)]
    sizes = [s.size for s in log.segments]
    log._simulate_crash()
    return expected, paths, positions, sizes


def test_corrupt_middle_segment_after_recovery_point_cuts_the_log(make_log, log_dir):
    expected, paths, positions, sizes = _three_segments_crashed(make_log)
    state = read_state(log_dir / "checkpoint")
    write_state(log_dir / "checkpoint", {**state, "recovery_point": 0})  # nothing known to be synced
    flip_byte(paths[1], positions[1][1] + 300)  # the middle batch of the middle segment
    log = make_log(path=log_dir)
    report = log.recovery_report
    assert report.recovered_from_offset == 0
    assert report.deleted_segments == 1
    assert report.truncated_bytes == (sizes[1] - positions[1][1]) + sizes[2]
    assert report.error
    assert [s.base_offset for s in log.segments] == [0, 6]
    assert not paths[2].exists()
    assert log.log_end_offset == 8
    assert rows(log) == expected[:8]
    assert log.append(records(1), now=1).base_offset == 8


def test_corruption_below_the_recovery_point_is_not_scanned(make_log, log_dir):
    """Segments below the recovery point are trusted (as Kafka): opening does not verify them."""
    expected, paths, positions, sizes = _three_segments_crashed(make_log)
    flip_byte(paths[0], positions[0][1] + 300)
    log = make_log(path=log_dir)
    assert log.recovery_report.recovered_from_offset == 12
    assert log.log_end_offset == 18 and len(log.segments) == 3


@pytest.mark.parametrize("torn_bytes", [0, 3, 8, 20])
def test_last_segment_with_a_torn_schema_is_removed(make_log, log_dir, torn_bytes):
    log = make_log()
    log.append(records(3), now=1)
    log.roll()
    expected = rows(log)
    active = log.active_segment.path
    log._simulate_crash()
    truncate_file(active, torn_bytes)
    log = make_log(path=log_dir)
    assert not active.exists()
    assert [s.base_offset for s in log.segments] == [0]
    assert rows(log) == expected and log.log_end_offset == 3
    assert log.append(records(1), now=1).base_offset == 3
    assert offsets_of(log.read(0, BIG)) == [0, 1, 2, 3]


def test_a_torn_schema_in_an_earlier_segment_is_a_typed_error_and_releases_the_lock(make_log, log_dir):
    log = make_log()
    log.append(records(3), now=1)
    log.roll()
    log.append(records(3), now=1)
    first = log.segments[0].path
    log._simulate_crash()
    truncate_file(first, 5)
    for _ in range(2):  # the failed open released the lock: the second attempt fails the same way
        with pytest.raises(CorruptRecordError):
            make_log(path=log_dir)


# -- index files after a clean shutdown -------------------------------------------------------------------------
def _clean_log_with_indexes(make_log, log_dir):
    log = make_log({"index.interval.bytes": 1500})
    rng = random.Random(11)
    for _ in range(30):
        n = rng.randint(1, 3)
        log.append(records(n, start=log.log_end_offset, timestamps=[rng.randint(0, 5000) for _ in range(n)]),
                   now=1)
    expected = rows(log)
    segment = log.active_segment
    summary = (segment.next_offset, segment.max_timestamp, segment.offset_index.keys[:],
               segment.time_index.keys[:])
    log.close()
    return expected, summary, segment.offset_index.path, segment.time_index.path


GARBAGE = {
    "missing": None,
    "empty": b"",
    "odd-length": b"\x01\x02\x03",
    "random": random.Random(1).randbytes(12 * 17 + 5),
    "random-whole-entries": random.Random(2).randbytes(12 * 9),
    "entry-past-the-end": struct.pack("<IQ", 0, 10**9),
    "zeros": b"\x00" * 36,
}


@pytest.mark.parametrize("which", ["index", "timeindex", "both"])
@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_missing_or_garbage_index_files_are_rebuilt(make_log, log_dir, which, garbage):
    expected, summary, index_path, time_path = _clean_log_with_indexes(make_log, log_dir)
    for path in ([index_path] if which == "index" else [time_path] if which == "timeindex" else
                 [index_path, time_path]):
        if GARBAGE[garbage] is None:
            path.unlink()
        else:
            path.write_bytes(GARBAGE[garbage])
    log = make_log({"index.interval.bytes": 1500}, path=log_dir)
    assert log.recovery_report.clean_shutdown
    segment = log.active_segment
    assert (segment.next_offset, segment.max_timestamp, segment.offset_index.keys,
            segment.time_index.keys) == summary
    assert rows(log) == expected
    for offset in range(0, log.log_end_offset, 5):
        assert log.read(offset, 1)[0].column("_offset")[0].as_py() == offset
    log.close()
    assert index_path.stat().st_size % 12 == 0 and time_path.stat().st_size % 12 == 0


# -- leftovers ------------------------------------------------------------------------------------------------------
def test_leftover_tmp_files_are_ignored(make_log, log_dir):
    log = make_log()
    log.append(records(3), leader_epoch=2, now=1)
    log.set_high_watermark(3)
    log.close()
    for name in ("checkpoint.tmp", "leader-epoch-checkpoint.tmp", "00000000000000000000.index.tmp",
                 "raystream-log.meta.tmp"):
        (log_dir / name).write_bytes(b"\xc1garbage")
    log = make_log(path=log_dir)
    assert log.recovery_report.clean_shutdown
    assert (log.log_end_offset, log.high_watermark, log.epoch_cache.entries) == (3, 3, [(2, 0)])
    assert offsets_of(log.read(0, BIG)) == [0, 1, 2]
    assert not list(log_dir.glob("*.tmp"))


def test_leftover_deleted_and_cleaned_files_are_removed(make_log, log_dir):
    log = make_log()
    log.append(records(3), now=1)
    data = log.active_segment.path.read_bytes()
    log._simulate_crash()
    (log_dir / "00000000000000000000.arrows.deleted").write_bytes(data)
    (log_dir / "00000000000000000000.arrows.cleaned").write_bytes(data[:50])
    log = make_log(path=log_dir)
    assert offsets_of(log.read(0, BIG)) == [0, 1, 2]
    assert sorted(p.name for p in log_dir.glob("*.arrows*")) == ["00000000000000000000.arrows"]


def test_crash_while_open_elsewhere_is_still_locked(make_log, log_dir):
    log = make_log()
    log.append(records(1), now=1)
    with pytest.raises(LogDirectoryLockedError):
        make_log(path=log_dir)
    log._simulate_crash()
    assert offsets_of(make_log(path=log_dir).read(0, BIG)) == [0]
