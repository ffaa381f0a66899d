"""LogSegment: appends, positions, sparse index entries, timestamp lookup, truncation and rebuild."""

from __future__ import annotations

import random

import pytest
from storage_helpers import stored

from raystream.record import RECORD_SCHEMA, stored_schema
from raystream.storage.segment import LogSegment, segment_name

SCHEMA = stored_schema(RECORD_SCHEMA)


@pytest.fixture
def segments(tmp_path):
    made: list[LogSegment] = []

    def _make(base: int = 0, interval: int = 4096, path=None) -> LogSegment:
        seg = LogSegment.open(path, interval) if path else LogSegment.create(tmp_path, base, SCHEMA, interval)
        made.append(seg)
        return seg

    yield _make
    for seg in made:
        seg.close()


def _fill(seg: LogSegment, sizes: list[int], timestamps: list[list[int]] | None = None) -> list[tuple[int, int]]:
    """Append batches of the given record counts; returns (position, bytes written) per batch."""
    out = []
    base = seg.next_offset
    for i, n in enumerate(sizes):
        position = seg.size
        written = seg.append(stored(base, n, timestamps=timestamps[i] if timestamps else None))
        out.append((position, written))
        base += n
    return out


def test_create_writes_the_schema_and_names_files_by_base(tmp_path, segments):
    seg = segments(base=1234)
    assert seg.path.name == segment_name(1234) + ".arrows" == "00000000000000001234.arrows"
    assert seg.size == seg.data_start == seg.path.stat().st_size > 0
    assert seg.is_empty and seg.next_offset == 1234
    assert list(seg.batches(0)) == []


def test_append_positions_and_reads(segments):
    seg = segments(base=100)
    placed = _fill(seg, [3, 1, 5])
    assert placed[0][0] == seg.data_start
    for (pos, written), (next_pos, _) in zip(placed, placed[1:], strict=False):
        assert next_pos == pos + written
    assert seg.size == placed[-1][0] + placed[-1][1] == seg.path.stat().st_size
    assert seg.next_offset == 109 and seg.batch_count == 3
    assert [pos for pos, _ in seg.headers()] == [p for p, _ in placed]
    got = list(seg.batches(100))
    assert [(pos, b.base_offset, b.last_offset) for pos, b in got] == [
        (placed[0][0], 100, 102), (placed[1][0], 103, 103), (placed[2][0], 104, 108)]
    # Batches whose last offset is below the start are skipped; the one holding it is returned whole.
    assert [b.base_offset for _, b in seg.batches(103)] == [103, 104]
    assert [b.base_offset for _, b in seg.batches(105)] == [104]
    assert list(seg.batches(109)) == []
    assert got[2][1].data.column("_offset").to_pylist() == list(range(104, 109))


def test_index_entries_follow_index_interval_bytes(segments):
    interval = 3000
    seg = segments(interval=interval)
    placed = _fill(seg, [random.Random(1).randint(1, 30) for _ in range(60)])
    positions = [p for p, _ in placed]
    bases = [b.base_offset for _, b in seg.batches(0)]
    assert seg.offset_index.keys[0] == 0 and seg.offset_index.values[0] == seg.data_start
    entries = dict(zip(seg.offset_index.values, seg.offset_index.keys, strict=True))
    assert 3 <= len(entries) < len(placed)
    last_entry = None
    for position, base in zip(positions, bases, strict=True):
        if position in entries:
            assert entries[position] == base - seg.base_offset  # an entry points at its own batch
            if last_entry is not None:
                assert position - last_entry >= interval  # at most one entry per interval
            last_entry = position
        else:
            assert position - last_entry < interval  # ... and one as soon as the interval is reached
    assert set(entries) <= set(positions)


def test_time_index_keys_increase_and_point_at_batches(segments):
    seg = segments(interval=1)
    tss = [[50, 10], [20], [70, 60], [65], [90]]
    _fill(seg, [len(t) for t in tss], tss)
    assert seg.time_index.keys == [50, 70, 90]
    assert seg.time_index.values == [0, 3, 6]
    assert seg.max_timestamp == 90 and seg.offset_of_max_timestamp == 6
    assert seg.rolling_timestamp == 50


def test_find_offset_by_timestamp_matches_brute_force(segments):
    rng = random.Random(5)
    seg = segments(base=10, interval=700)
    tss = [[rng.randint(0, 1000) for _ in range(rng.randint(1, 4))] for _ in range(40)]
    _fill(seg, [len(t) for t in tss], tss)
    flat = [(10 + i, t) for i, t in enumerate(x for ts in tss for x in ts)]
    assert len(seg.time_index) > 1
    for target in list(range(-1, 1003, 7)) + [max(t for _, t in flat)]:
        for start in (10, 30, 10 + len(flat) - 1):
            expected = next((o for o, t in flat if t >= target and o >= start), None)
            assert seg.find_offset_by_timestamp(target, start) == expected, (target, start)


def _three_batch_segment(segments, base=0):
    seg = segments(base=base, interval=1)
    placed = _fill(seg, [3, 3, 3])  # [0-2] [3-5] [6-8]
    return seg, placed


@pytest.mark.parametrize("offset, next_offset, kept", [(9, 9, 3), (100, 9, 3), (8, 6, 2), (6, 6, 2),
                                                       (4, 3, 1), (3, 3, 1), (1, 0, 0), (0, 0, 0)])
def test_truncate_to_drops_whole_batches(segments, offset, next_offset, kept):
    seg, placed = _three_batch_segment(segments)
    size_before = seg.size
    dropped = seg.truncate_to(offset)
    cut = placed[kept][0] if kept < 3 else size_before
    assert dropped == size_before - cut
    assert seg.size == cut == seg.path.stat().st_size
    assert seg.next_offset == next_offset and seg.batch_count == kept
    assert [b.base_offset for _, b in seg.batches(0)] == [0, 3, 6][:kept]
    assert all(v < seg.size for v in seg.offset_index.values)
    assert len(seg.offset_index) == kept  # interval=1: one entry per batch, rebuilt for what is left
    seg.append(stored(next_offset, 2))  # the segment takes appends at the cut
    assert [b.base_offset for _, b in seg.batches(0)][-1] == next_offset


def test_truncate_to_then_reads_see_no_stale_views(segments):
    seg, _ = _three_batch_segment(segments)
    assert len(list(seg.batches(0))) == 3
    seg.truncate_to(3)
    seg.append(stored(3, 1, timestamps=[42]))
    got = [b for _, b in seg.batches(0)]
    assert [b.base_offset for b in got] == [0, 3]
    assert got[1].data.column("_timestamp").to_pylist() == [42]


def test_reopen_and_rebuild_restores_summary_and_indexes(segments):
    seg = segments(base=7, interval=900)
    tss = [[5], [9, 3], [8], [20], [1, 2, 3]]
    _fill(seg, [len(t) for t in tss], tss)
    expect = (seg.next_offset, seg.max_timestamp, seg.offset_of_max_timestamp, seg.rolling_timestamp,
              seg.batch_count, seg.offset_index.keys[:], seg.offset_index.values[:], seg.time_index.keys[:],
              seg.time_index.values[:])
    seg.flush()
    seg.close()
    again = segments(path=seg.path, interval=900)
    assert again.schema.equals(SCHEMA) and again.base_offset == 7
    result = again.rebuild(verify=True)
    assert result.error is None and result.valid_bytes == again.size and result.batches == 5
    assert (again.next_offset, again.max_timestamp, again.offset_of_max_timestamp, again.rolling_timestamp,
            again.batch_count, again.offset_index.keys, again.offset_index.values, again.time_index.keys,
            again.time_index.values) == expect


def test_load_indexes_after_flush_restores_max_timestamp(segments):
    """After a flush the index files are trusted; the summary must still be the segment's true one,
    even when the max timestamp was reached in a batch without an index entry."""
    seg = segments(interval=1)
    one = _fill(seg, [1])[0][1]
    seg.truncate_to(0)
    seg = segments(base=100, interval=int(one * 1.5))
    tss = [[100], [5000], [200], [300], [400], [500]]
    _fill(seg, [1] * 6, tss)
    assert seg.max_timestamp == 5000 and seg.offset_of_max_timestamp == 101
    assert seg.offset_index.keys == [0, 2, 4]  # batch 1 (the max) has no entry
    seg.flush()
    seg.close()
    again = segments(path=seg.path, interval=int(one * 1.5))
    again.load_or_rebuild_indexes()
    assert again.next_offset == 106
    assert again.max_timestamp == 5000
    assert again.find_offset_by_timestamp(4000, 100) == 101


@pytest.mark.parametrize("cut_from_end", [1, 8, 50, 200])
def test_rebuild_stops_at_a_torn_tail(segments, cut_from_end):
    seg, placed = _three_batch_segment(segments)
    seg.flush()
    seg.close()
    with open(seg.path, "r+b") as f:
        f.truncate(seg.size - cut_from_end)
    again = segments(path=seg.path)
    result = again.rebuild(verify=True)
    assert result.valid_bytes == placed[2][0] and result.batches == 2 and result.error
    assert again.next_offset == 6
    torn_size = again.size
    assert again.truncate_bytes(result.valid_bytes) == torn_size - placed[2][0]
    assert again.size == placed[2][0] == again.path.stat().st_size
