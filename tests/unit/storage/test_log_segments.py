"""LogSegments: the ordered map base offset -> segment behind every Log (Kafka's LogSegments)."""

from __future__ import annotations

import pytest
from storage_helpers import stored

from raystream.record import RECORD_SCHEMA, stored_schema
from raystream.storage.log_segments import LogSegments
from raystream.storage.segment import LogSegment


@pytest.fixture
def make_segment(tmp_path):
    made = iter(range(1_000))

    def _make(base: int, records: int = 2) -> LogSegment:
        directory = tmp_path / f"d{next(made)}"  # one directory each: two segments may share a base
        directory.mkdir()
        segment = LogSegment.create(directory, base, stored_schema(RECORD_SCHEMA), 4096)
        segment.append(stored(base, records))
        return segment

    return _make


def test_segments_stay_in_base_offset_order_whatever_the_insertion_order(make_segment):
    segments = LogSegments([make_segment(10), make_segment(0)])
    segments.add(make_segment(20))
    assert [s.base_offset for s in segments] == segments.base_offsets() == [0, 10, 20]
    assert segments.active.base_offset == 20 and len(segments) == 3
    assert [s.base_offset for s in segments[1:]] == [10, 20] and segments[-1] is segments.active


def test_floor_lookup_finds_the_segment_holding_an_offset(make_segment):
    segments = LogSegments([make_segment(0), make_segment(10), make_segment(20)])
    assert [segments.floor(o).base_offset for o in (0, 9, 10, 19, 20, 10**9)] == [0, 0, 10, 10, 20, 20]
    assert [s.base_offset for s in segments.from_offset(15)] == [10, 20]
    empty_start = LogSegments([make_segment(5)])
    assert empty_start.floor(0).base_offset == 5  # below every base: the first segment


def test_remove_replace_and_membership_are_by_identity(make_segment):
    first, second, third = make_segment(0), make_segment(10), make_segment(20)
    segments = LogSegments([first, second, third])
    with pytest.raises(ValueError, match="already"):
        segments.add(make_segment(10))
    cleaned = make_segment(0)
    assert cleaned not in segments  # same base, another segment
    segments.replace([first, second], cleaned)
    assert list(segments) == [cleaned, third] and cleaned in segments and first not in segments
    with pytest.raises(ValueError, match="not in the log"):
        segments.remove(first)
    assert segments.remove_after(0) == [third] and list(segments) == [cleaned]
    assert segments.clear() == [cleaned] and len(segments) == 0
