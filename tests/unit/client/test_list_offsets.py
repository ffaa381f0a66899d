"""ListOffsets with retries (client/list_offsets.py) and offset-spec parsing (client/offset_spec.py),
shared by the consumer, the admin client and Ray Data."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from raystream import errors
from raystream.client.list_offsets import ListOffsets, MetadataLeaders
from raystream.client.offset_spec import OffsetSpec, OffsetSpecTypeError, parse_offset_spec
from raystream.protocol import EARLIEST, LATEST, PartitionState, TopicMetadata, TopicPartition

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


class Leaders:
    """Partition 0's leader is broker 1; partition 1 has ``leader1`` (-1: none)."""

    def __init__(self, leader1=2):
        self.leader1 = leader1
        self.calls = 0

    def __call__(self, topics):
        self.calls += 1
        parts = (PartitionState("t", 0, (1, 2), 1, 1, (1, 2)), PartitionState("t", 1, (1, 2), self.leader1, 1, (1, 2)))
        return {"t": TopicMetadata("t", parts, {}, None)}


class Transport:
    """Answers ``list_offset`` from ``answers[(tp, broker)]``: a list consumed front first (an exception,
    an int, or None for a future that never completes)."""

    def __init__(self, answers):
        self.answers = answers
        self.asked = []

    def list_offset(self, tp, broker, spec, read_committed=False):
        self.asked.append((tp, broker, spec, read_committed))
        future = Future()
        answer = self.answers[(tp, broker)].pop(0)
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        elif answer is not None:
            future.set_result(answer)
        return future


def test_retries_a_retriable_error_then_answers():
    transport = Transport({(T0, 1): [errors.NotLeaderError("moved"), 7], (T1, 2): [9]})
    leaders = Leaders()
    result = ListOffsets(transport, MetadataLeaders(leaders), retry_backoff_s=0.001).run(
        {T0: LATEST, T1: LATEST}, timeout_s=5.0, read_committed=True)
    assert result.offsets == {T0: 7, T1: 9} and not result.failed and not result.unanswered
    assert leaders.calls == 2  # fresh leaders for the retry round
    assert [a[0] for a in transport.asked] == [T0, T1, T0] and all(a[3] for a in transport.asked)


def test_non_retriable_errors_fail_at_once_and_timeouts_stay_unanswered():
    transport = Transport({(T0, 1): [errors.CorruptRecordError("bad")], (T1, 2): [None, None, None, None]})
    result = ListOffsets(transport, MetadataLeaders(Leaders()), retry_backoff_s=0.01).run(
        {T0: EARLIEST, T1: EARLIEST}, timeout_s=0.05)
    assert isinstance(result.first_error(), errors.CorruptRecordError) and set(result.failed) == {T0}
    assert result.unanswered == {T1: None} and not result.offsets


def test_a_leaderless_partition_is_retried_or_left_unanswered():
    transport = Transport({(T0, 1): [3]})
    result = ListOffsets(transport, MetadataLeaders(Leaders(leader1=-1)), retry_backoff_s=0.01,
                         retry_leaderless=False).run({T0: 5, T1: 5}, timeout_s=5.0)
    assert result.offsets == {T0: 3} and isinstance(result.unanswered[T1], errors.LeaderNotAvailableError)
    leaders = Leaders(leader1=-1)
    result = ListOffsets(Transport({}), MetadataLeaders(leaders), retry_backoff_s=0.01).run({T1: 5}, timeout_s=0.1)
    assert isinstance(result.unanswered[T1], errors.LeaderNotAvailableError) and leaders.calls > 1


def test_an_unknown_partition_raises():
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        ListOffsets(Transport({}), MetadataLeaders(Leaders()), retry_backoff_s=0.01).run(
            {TopicPartition("t", 5): LATEST}, timeout_s=1.0)


def test_offset_specs():
    assert parse_offset_spec("earliest", "to").list_offsets_spec == EARLIEST
    assert parse_offset_spec("latest", "to").list_offsets_spec == LATEST
    assert parse_offset_spec({"timestamp": 0}, "start") == OffsetSpec("timestamp", timestamp_ms=0)
    assert parse_offset_spec(4, "to") == OffsetSpec("offset", offset=4)
    assert parse_offset_spec({"1": 3}, "start", per_partition=True).offsets == {1: 3}
    with pytest.raises(ValueError):
        parse_offset_spec({"timestamp": 0}, "to", min_timestamp_ms=1)
    for bad_type in ("1", 1.5, True):  # TypeError for Admin's callers, ValueError for read_topic's
        with pytest.raises(TypeError):
            parse_offset_spec({"timestamp": bad_type}, "to")
        with pytest.raises(ValueError):
            parse_offset_spec({"timestamp": bad_type}, "to")
        assert issubclass(OffsetSpecTypeError, TypeError)
    for bad in ("soon", -1, True, None, {1: 3}):
        with pytest.raises(ValueError):
            parse_offset_spec(bad, "to")
    with pytest.raises(ValueError, match="offset of partition 1"):
        parse_offset_spec({1: -3}, "end", per_partition=True)
