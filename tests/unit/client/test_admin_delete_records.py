"""Admin.delete_records (Kafka's AdminClient.deleteRecords) against the in-process fake cluster: the log
start offset moves, consumers and ListOffsets see it, errors are typed, leader changes are retried."""

from __future__ import annotations

import pyarrow as pa
import pytest

from raystream import errors
from raystream.client import Admin
from raystream.protocol import EARLIEST, TopicPartition

TP = TopicPartition("orders", 0)


@pytest.fixture
def admin(fake):
    fake.add_topic("orders", partitions=2)
    client = Admin(transport=fake, request_timeout_ms=2_000)
    yield client
    client.close()


def fill(make_producer, n, partition=0):
    producer = make_producer(acks="all")
    producer.send_batch("orders", pa.table({"value": [b"v%d" % i for i in range(n)]}), partition=partition).result(5)


def test_records_below_the_offset_are_gone_for_consumers_and_list_offsets(fake, admin, make_producer,
                                                                         make_consumer):
    fill(make_producer, 10)
    fill(make_producer, 4, partition=1)
    assert admin.delete_records({TP: 6, TopicPartition("orders", 1): -1}) == {TP: 6, TopicPartition("orders", 1): 4}
    assert fake.logs[TP].log_start_offset == 6
    assert admin._offsets_of([TP], EARLIEST) == {TP: 6}
    consumer = make_consumer(auto_offset_reset="earliest")
    consumer.assign([TP])
    records = []
    while len(records) < 4:
        records.extend(consumer.poll(timeout=1.0))
    assert [r.offset for r in records] == [6, 7, 8, 9]
    assert admin.delete_records({TP: 3}) == {TP: 6}  # never backwards
    assert admin.delete_records({}) == {}


def test_errors_are_typed(fake, admin, make_producer):
    fill(make_producer, 5)
    with pytest.raises(errors.OffsetOutOfRangeError, match="high_watermark=5"):
        admin.delete_records({TP: 6})
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        admin.delete_records({TopicPartition("orders", 7): 0})
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        admin.delete_records({TopicPartition("missing", 0): 0})
    assert fake.logs[TP].log_start_offset == 0


@pytest.mark.parametrize("offsets,error", [
    ([(TP, 1)], TypeError), ({("orders", 0): 1}, TypeError), ({TP: 1.5}, TypeError), ({TP: True}, TypeError),
    ({TP: -2}, ValueError), ({TopicPartition("bad name", 0): 1}, errors.InvalidTopicError),
])
def test_bad_arguments_fail_before_any_request(fake, admin, offsets, error):
    with pytest.raises(error):
        admin.delete_records(offsets)
    assert fake.count("delete_records") == 0


def test_a_moved_leader_is_found_again(fake, admin, make_producer):
    fill(make_producer, 8)
    fake.inject("delete_records", errors.NotLeaderError("moved"), tp=TP)
    fake.set_leader(TP, 2)
    assert admin.delete_records({TP: 3}) == {TP: 3}
    assert [c[2] for c in fake.calls if c[0] == "delete_records"] == [2, 2]  # the retry went to the leader


def test_a_partition_that_never_answers_times_out(fake, admin, make_producer):
    fill(make_producer, 3)
    fake.inject("delete_records", errors.RequestTimeoutError("followers are slow"), times=1000, tp=TP)
    with pytest.raises(errors.RequestTimeoutError, match="orders-0|followers are slow"):
        admin.delete_records({TP: 1})


def test_a_closed_admin_refuses(admin):
    admin.close()
    with pytest.raises(errors.ClosedError):
        admin.delete_records({TP: 0})
