"""The partition core's DeleteRecords decisions (raystream.core.partition): the offset a request asks for,
the low watermark over the ISR, and how far a follower follows the leader's log start offset."""

import pytest

from raystream.core.partition import Partition
from raystream.errors import NotLeaderError, OffsetOutOfRangeError


def leader(isr=(1, 2, 3), hw=10) -> Partition:
    p = Partition("t-0 broker=1", 1)
    p.become_leader(1, (1, 2, 3), isr, 0, log_end_offset=hw, high_watermark=hw, now_ms=0)
    return p


def test_the_offset_asked_for_is_bounded_by_the_high_watermark():
    p = leader(hw=10)
    assert p.delete_records_offset(4, log_start_offset=0) == 4
    assert p.delete_records_offset(10, log_start_offset=0) == 10
    assert p.delete_records_offset(-1, log_start_offset=0) == 10  # -1: the high watermark
    assert p.delete_records_offset(2, log_start_offset=5) == 2  # below the log start: nothing new (the caller)
    for bad in (11, -2, 1.5, True):
        with pytest.raises(OffsetOutOfRangeError, match="high_watermark=10"):
            p.delete_records_offset(bad, log_start_offset=0)


def test_only_the_leader_deletes_records():
    p = Partition("t-0 broker=1", 1)
    p.become_follower(1, 2, (1, 2))
    with pytest.raises(NotLeaderError):
        p.delete_records_offset(0, log_start_offset=0)
    with pytest.raises(NotLeaderError):
        p.low_watermark(0)


def test_the_low_watermark_waits_for_every_isr_member():
    p = leader(isr=(1, 2))  # broker 3 is out of sync: not waited for
    assert p.low_watermark(6) == 0  # follower 2 has not answered since this leader took over
    assert p.record_follower(2, 10, 10, now_ms=1, log_start_offset=4) is True
    assert p.low_watermark(6) == 4
    assert p.record_follower(2, 10, 10, now_ms=2, log_start_offset=4) is False  # no progress: no wake-up
    assert p.record_follower(2, 10, 10, now_ms=3, log_start_offset=2) is False  # never backwards
    assert p.record_follower(2, 10, 10, now_ms=4) is False  # an answer without one changes nothing
    p.record_follower(3, 10, 10, now_ms=5, log_start_offset=0)
    assert p.record_follower(2, 10, 10, now_ms=6, log_start_offset=8) is True
    assert p.low_watermark(6) == 6  # the leader's own is the lowest now
    assert leader(isr=(1,)).low_watermark(3) == 3


def test_a_follower_follows_the_leaders_log_start_up_to_its_high_watermark():
    p = Partition("t-0 broker=2", 2)
    p.become_follower(1, 1, (1, 2))
    p.follow_high_watermark(5, log_end_offset=8)
    assert p.follower_log_start(4, log_start_offset=0, log_end_offset=8) == 4
    assert p.follower_log_start(7, log_start_offset=0, log_end_offset=8) == 5  # not past what it knows committed
    assert p.follower_log_start(4, log_start_offset=4, log_end_offset=8) is None
    assert p.follower_log_start(0, log_start_offset=2, log_end_offset=8) is None  # the leader's is behind: stay
