"""Time- and size-based retention: whole sealed segments only, never past the high watermark."""

from __future__ import annotations

import pytest
from storage_helpers import BIG, offsets_of, records

from raystream.config import TopicConfig
from raystream.errors import OffsetOutOfRangeError


def _segments_with_max_timestamps(make_log, maxima, config=None, leader_epochs=None):
    """One sealed segment per entry of ``maxima`` (2 batches of 2 records, the second at the max
    timestamp) plus an active segment with one batch at timestamp max(maxima) + 1."""
    log = make_log({"retention.ms": 1000, **(config or {})})
    for i, ts in enumerate(maxima):
        epoch = leader_epochs[i] if leader_epochs else 0
        log.append(records(2, start=log.log_end_offset, timestamps=[ts - 10, ts - 20]), now=0,
                   leader_epoch=epoch)
        log.append(records(2, start=log.log_end_offset, timestamps=[ts - 30, ts]), now=0, leader_epoch=epoch)
        log.roll()
    log.append(records(1, start=log.log_end_offset, timestamps=[max(maxima) + 1]), now=0,
               leader_epoch=leader_epochs[-1] if leader_epochs else 0)
    assert [s.base_offset for s in log.segments] == [4 * i for i in range(len(maxima) + 1)]
    return log


def test_retention_ms_deletes_segments_by_their_max_timestamp(make_log, log_dir):
    log = _segments_with_max_timestamps(make_log, [100, 200, 300])
    paths = [s.path for s in log.segments]
    assert log.apply_retention(now=1100) == 0   # 100 is not older than now - 1000
    assert log.apply_retention(now=1101) == 1
    assert log.log_start_offset == 4 and not paths[0].exists()
    assert log.apply_retention(now=1250) == 1
    assert log.log_start_offset == 8
    assert [s.base_offset for s in log.segments] == [8, 12]
    with pytest.raises(OffsetOutOfRangeError):
        log.read(7, BIG)
    assert offsets_of(log.read(8, BIG)) == [8, 9, 10, 11, 12]
    log._simulate_crash()
    again = make_log({"retention.ms": 1000}, path=log_dir)
    assert (again.log_start_offset, again.log_end_offset) == (8, 13)


def test_retention_uses_the_max_not_the_first_timestamp(make_log):
    log = make_log({"retention.ms": 1000})
    log.append(records(2, timestamps=[10, 5000]), now=0)
    log.roll()
    log.append(records(1, start=2, timestamps=[6000]), now=0)
    assert log.apply_retention(now=5500) == 0
    assert log.apply_retention(now=6001) == 1


def test_retention_deletes_only_a_prefix(make_log):
    log = _segments_with_max_timestamps(make_log, [5000, 100, 200])
    assert log.apply_retention(now=3000) == 0  # the oldest-by-offset segment is still young
    assert log.log_start_offset == 0 and len(log.segments) == 4


def test_retention_never_deletes_the_active_segment(make_log):
    log = make_log({"retention.ms": 10})
    log.append(records(3, timestamps=[1, 2, 3]), now=0)
    assert log.apply_retention(now=10**9) == 0
    assert offsets_of(log.read(0, BIG)) == [0, 1, 2]
    log.roll()
    assert log.apply_retention(now=10**9) == 1
    assert log.log_start_offset == 3 and log.log_end_offset == 3
    assert len(log.segments) == 1 and log.active_segment.is_empty


def test_retention_stops_at_the_high_watermark(make_log):
    log = _segments_with_max_timestamps(make_log, [100, 200, 300])
    assert log.apply_retention(now=10**6, high_watermark=7) == 1   # segment [4, 8) is not fully committed
    assert log.log_start_offset == 4
    assert log.apply_retention(now=10**6, high_watermark=8) == 1
    assert log.apply_retention(now=10**6, high_watermark=8) == 0
    assert log.apply_retention(now=10**6, high_watermark=12) == 1
    assert log.log_start_offset == 12 and len(log.segments) == 1


def test_retention_bytes(make_log):
    log = _segments_with_max_timestamps(make_log, [100, 200, 300], {"retention.ms": -1})
    sizes = [s.size for s in log.segments]
    total = sum(sizes)
    limit = total - sizes[0] - sizes[1] // 2  # dropping the first segment is not enough for the second
    log.config = TopicConfig.from_dict({"retention.bytes": limit}, base=log.config)  # a config update
    assert log.apply_retention(now=0) == 1
    assert log.size_bytes == total - sizes[0] and log.log_start_offset == 4
    log.config = TopicConfig.from_dict({"retention.bytes": 0}, base=log.config)
    assert log.apply_retention(now=0) == 2  # everything but the active segment
    assert log.log_start_offset == 12 and offsets_of(log.read(12, BIG)) == [12]


def test_no_limits_delete_nothing(make_log):
    log = _segments_with_max_timestamps(make_log, [1, 2], {"retention.ms": -1, "retention.bytes": -1})
    assert log.apply_retention(now=2**62) == 0 and len(log.segments) == 3


def test_compact_only_topics_are_not_retained_by_time(make_log):
    log = _segments_with_max_timestamps(make_log, [1, 2], {"cleanup.policy": "compact"})
    assert log.apply_retention(now=2**62) == 0


def test_compact_delete_topics_are_retained(make_log):
    log = _segments_with_max_timestamps(make_log, [1, 2], {"cleanup.policy": "compact,delete"})
    assert log.apply_retention(now=2**62) == 2


def test_retention_moves_the_leader_epoch_cache_start(make_log):
    log = _segments_with_max_timestamps(make_log, [100, 200, 300], leader_epochs=[1, 2, 3])
    assert log.epoch_cache.entries == [(1, 0), (2, 4), (3, 8)]
    assert log.apply_retention(now=1150) == 1
    assert log.epoch_cache.entries == [(2, 4), (3, 8)]


def test_retention_after_clean_restart_uses_the_true_max_timestamp(make_log, log_dir):
    """A segment whose max timestamp sits in a batch without an index entry must not look older after a
    clean restart (which trusts the index files)."""
    log = make_log({"retention.ms": 1000, "index.interval.bytes": 1000})
    for ts in [100, 9000, 200, 300, 400, 500, 600]:
        log.append(records(1, start=log.log_end_offset, timestamps=[ts]), now=0)
    log.roll()
    log.append(records(1, start=log.log_end_offset, timestamps=[9500]), now=0)
    assert log.segments[0].max_timestamp == 9000
    assert log.segments[0].offset_index.keys[-1] > 1  # the 9000 batch has no index entry
    log.close()
    log = make_log({"retention.ms": 1000, "index.interval.bytes": 1000}, path=log_dir)
    assert log.apply_retention(now=9500) == 0
    assert log.log_start_offset == 0
