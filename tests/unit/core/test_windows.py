"""Event-time windows (raystream.core.windows) against brute force: which windows hold a record, when a
window closes, which records are late, how sessions merge."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream.core.windows import (
    HoppingWindows,
    Session,
    SessionWindows,
    StreamTime,
    TumblingWindows,
    merge_sessions,
)

TIMESTAMPS = st.lists(st.integers(-10_000, 10_000), max_size=50)


def brute_force(ts: int, size: int, advance: int) -> set[int]:
    first = (ts - size) // advance * advance
    return {s for s in range(first, ts + 1, advance) if s % advance == 0 and s <= ts < s + size}


@settings(max_examples=300, deadline=None)
@given(timestamps=TIMESTAMPS, size=st.integers(1, 50), advance=st.integers(1, 50))
def test_hopping_windows_hold_a_record_exactly_where_start_le_ts_lt_end(timestamps, size, advance):
    if advance > size:
        with pytest.raises(ValueError):
            HoppingWindows(size, advance)
        return
    windows = HoppingWindows(size, advance)
    got = windows.assign(np.array(timestamps, dtype=np.int64))
    assert list(got.rows) == sorted(got.rows)  # row order
    for row, ts in enumerate(timestamps):
        assert set(got.starts[got.rows == row].tolist()) == brute_force(ts, size, advance)


def test_tumbling_windows_put_each_record_in_one_window():
    got = TumblingWindows(60_000).assign(np.array([0, 59_999, 60_000, -1], dtype=np.int64))
    assert got.rows.tolist() == [0, 1, 2, 3]
    assert got.starts.tolist() == [0, 0, 60_000, -60_000]
    assert got.ends(60_000).tolist() == [60_000, 60_000, 120_000, 0]


def test_a_window_closes_at_end_plus_grace_in_stream_time_and_later_records_for_it_are_late():
    windows = TumblingWindows(10, grace_ms=5)
    time = StreamTime()
    assert time.advance(np.array([3, 12], dtype=np.int64)) == 12
    assert windows.closed(np.array([0, 10]), time.value).tolist() == [False, False]
    time.advance(np.array([15], dtype=np.int64))
    assert windows.closed(np.array([0, 10]), time.value).tolist() == [True, False]  # 0 + 10 + 5 <= 15
    batch = np.array([9, 10, 2], dtype=np.int64)
    assert time.late(windows, windows.assign(batch), len(batch)).tolist() == [True, False, True]
    time.advance(np.array([1], dtype=np.int64))  # an out-of-order record never moves stream time back
    assert time.value == 15


def test_a_record_in_several_hopping_windows_is_late_only_when_all_are_closed():
    windows = HoppingWindows(10, 5)  # ts 12 is in [5, 15) and [10, 20)
    time = StreamTime(15)
    assert time.late(windows, windows.assign(np.array([12])), 1).tolist() == [False]
    time.advance(np.array([20]))
    assert time.late(windows, windows.assign(np.array([12])), 1).tolist() == [True]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_sizes_and_gaps_are_positive_int_milliseconds(bad):
    for make in (lambda: TumblingWindows(bad), lambda: HoppingWindows(10, bad), lambda: SessionWindows(bad)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError):
        TumblingWindows(10, grace_ms=-1)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(st.integers(0, 200), max_size=30), gap=st.integers(1, 20))
def test_sessions_built_record_by_record_are_the_gap_separated_runs_of_the_sorted_times(events, gap):
    sessions: list[Session] = []
    for ts in events:  # in arrival order, out-of-order included
        merged, replaced = merge_sessions(sessions, ts, gap)
        sessions = [s for s in sessions if s not in replaced] + [merged]
    expected, times = [], sorted(events)
    for ts in times:
        if expected and ts - expected[-1][1] <= gap:
            expected[-1][1] = ts
        else:
            expected.append([ts, ts])
    assert sorted((s.start, s.end) for s in sessions) == [tuple(e) for e in expected]


def test_a_session_closes_gap_plus_grace_after_its_last_record():
    windows = SessionWindows(inactivity_gap_ms=30, grace_ms=10)
    assert not windows.closed(Session(0, 100), 139)
    assert windows.closed(Session(0, 100), 140)
