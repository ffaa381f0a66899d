"""Consumer (manual assignment) against the in-process fake cluster."""

from __future__ import annotations

import pyarrow as pa
import pytest
from fake_transport import wait_for

from raystream import errors
from raystream.client import Consumer, OffsetAndTimestamp
from raystream.protocol import Record, TopicPartition
from raystream.record import HEADER_TYPE

T0 = TopicPartition("t", 0)
T1 = TopicPartition("t", 1)


def produce(fake, tp, values, keys=None, timestamps=None, headers=None):
    n = len(values)
    table = pa.table({"key": pa.array(keys or [None] * n, pa.binary()), "value": pa.array(values, pa.binary()),
                      "headers": pa.array(headers or [None] * n, HEADER_TYPE),
                      "_timestamp": pa.array(timestamps or [1000 + i for i in range(n)], pa.int64())})
    result = fake.produce(tp, fake.leader_of(tp), table.to_batches()[0], -1, 1000).result()
    return result.base_offset


def poll_until(consumer, count, timeout=10.0):
    out = []
    wait_for(lambda: out.extend(consumer.poll(timeout=0.05)) or len(out) >= count, timeout,
             f"{count} records")
    return out


def test_poll_returns_records_with_kafka_shapes(fake, make_consumer):
    fake.add_topic("t", partitions=2)
    produce(fake, T0, [b"a", b"b"], keys=[b"k", None], headers=[[{"key": "h", "value": b"1"}], None])
    consumer = make_consumer(auto_offset_reset="earliest")
    consumer.assign([T0])
    records = poll_until(consumer, 2)
    assert records == [Record("t", 0, 0, 1000, b"k", b"a", (("h", b"1"),)),
                       Record("t", 0, 1, 1001, None, b"b", ())]
    assert consumer.position(T0) == 2
    assert consumer.assignment() == {T0}


def test_deserializers(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"1", b"2"], keys=[b"x", None])
    consumer = make_consumer(auto_offset_reset="earliest", key_deserializer=bytes.decode,
                             value_deserializer=int)
    consumer.assign([T0])
    records = poll_until(consumer, 2)
    assert [(r.key, r.value) for r in records] == [("x", 1), (None, 2)]


def test_poll_arrow_shape_and_projection(fake, make_consumer):
    fake.add_topic("t", partitions=2)
    produce(fake, T0, [b"a", b"b"])
    produce(fake, T1, [b"c"])
    consumer = make_consumer(auto_offset_reset="earliest")
    consumer.assign([T0, T1])
    empty = consumer.poll_arrow(timeout=0, columns=["value"])
    assert empty.num_rows == 0
    assert empty.schema.names == ["topic", "partition", "offset", "timestamp", "value"]
    rows = []
    wait_for(lambda: rows.append(consumer.poll_arrow(timeout=0.05, columns=["value"])) or
             sum(t.num_rows for t in rows) >= 3, message="3 rows")
    table = pa.concat_tables(rows)
    assert table.schema.names == ["topic", "partition", "offset", "timestamp", "value"]
    assert table.schema.field("topic").type == pa.dictionary(pa.int32(), pa.string())
    assert table.schema.field("partition").type == pa.int32()
    assert sorted(zip(table.column("partition").to_pylist(), table.column("offset").to_pylist(),
                      table.column("value").to_pylist(), strict=True)) == [(0, 0, b"a"), (0, 1, b"b"), (1, 0, b"c")]
    assert set(table.column("topic").to_pylist()) == {"t"}
    fetches = [c for c in fake.calls if c[0] == "fetch"]
    assert all(c[4] == ["value"] for c in fetches)  # only the requested column travels


def test_poll_arrow_all_columns(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"a"], keys=[b"k"])
    consumer = make_consumer(auto_offset_reset="earliest")
    consumer.assign([T0])
    rows = []
    wait_for(lambda: rows.append(consumer.poll_arrow(timeout=0.05)) or rows[-1].num_rows, message="a row")
    table = rows[-1]
    assert table.schema.names == ["topic", "partition", "offset", "timestamp", "key", "value", "headers"]
    assert table.to_pylist() == [{"topic": "t", "partition": 0, "offset": 0, "timestamp": 1000, "key": b"k",
                                  "value": b"a", "headers": None}]


def test_unknown_projection_column_is_a_value_error(fake, make_consumer):
    fake.add_topic("t")
    consumer = make_consumer()
    consumer.assign([T0])
    with pytest.raises(ValueError):
        consumer.poll_arrow(timeout=0, columns=["nope"])
    with pytest.raises(TypeError):
        consumer.poll_arrow(timeout=0, columns="value")


def test_max_poll_records(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"%d" % i for i in range(25)])
    consumer = make_consumer(auto_offset_reset="earliest", max_poll_records=10)
    consumer.assign([T0])
    first = poll_until(consumer, 1)
    assert len(first) == 10
    rest = poll_until(consumer, 15)
    assert [r.offset for r in first + rest] == list(range(25))


def test_auto_offset_reset_latest_is_the_default(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"old"])
    consumer = make_consumer()
    consumer.assign([T0])
    assert consumer.position(T0) == 1
    assert consumer.poll(timeout=0) == []
    produce(fake, T0, [b"new"])
    assert [r.value for r in poll_until(consumer, 1)] == [b"new"]


def test_auto_offset_reset_none_raises(fake, make_consumer):
    fake.add_topic("t")
    consumer = make_consumer(auto_offset_reset="none")
    consumer.assign([T0])
    with pytest.raises(errors.NoOffsetForPartitionError):
        consumer.poll(timeout=0)
    consumer.seek(T0, 0)
    assert consumer.poll(timeout=0) == []


def test_out_of_range_resets_per_policy(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"%d" % i for i in range(10)])
    fake.truncate_front(T0, 6)
    consumer = make_consumer(auto_offset_reset="earliest")
    consumer.assign([T0])
    consumer.seek(T0, 2)  # below the log start now
    assert [r.offset for r in poll_until(consumer, 4)] == [6, 7, 8, 9]
    strict = make_consumer(auto_offset_reset="none")
    strict.assign([T0])
    strict.seek(T0, 2)
    with pytest.raises(errors.OffsetOutOfRangeError):
        wait_for(lambda: strict.poll(timeout=0.05) and False, message="the out-of-range error")


def test_position_reset_stays_in_flight_across_zero_timeout_polls(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"a"])
    fake.holding_list_offset = True
    consumer = make_consumer(auto_offset_reset="earliest")
    consumer.assign([T0])
    for _ in range(5):
        assert consumer.poll(timeout=0) == []
    assert fake.count("list_offset") == 1  # one request, not one per poll
    fake.release()
    assert [r.value for r in poll_until(consumer, 1)] == [b"a"]


def test_retriable_reset_error_is_retried(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"a"])
    fake.inject("list_offset", errors.LeaderNotAvailableError("electing"), times=2)
    consumer = make_consumer(auto_offset_reset="earliest", retry_backoff_ms=1)
    consumer.assign([T0])
    assert [r.value for r in poll_until(consumer, 1)] == [b"a"]
    assert fake.count("list_offset") == 3


def test_seek_and_positions(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"%d" % i for i in range(10)], timestamps=[100 * i for i in range(10)])
    fake.truncate_front(T0, 2)
    consumer = make_consumer()
    consumer.assign([T0])
    consumer.seek(T0, 5)
    assert consumer.position(T0) == 5
    assert [r.offset for r in poll_until(consumer, 5)] == [5, 6, 7, 8, 9]
    consumer.seek_to_beginning()
    assert consumer.position(T0) == 2
    consumer.seek_to_end([T0])
    assert consumer.position(T0) == 10
    assert consumer.beginning_offsets([T0]) == {T0: 2}
    assert consumer.end_offsets([T0]) == {T0: 10}
    assert consumer.offsets_for_times({T0: 450}) == {T0: OffsetAndTimestamp(5, 500)}
    assert consumer.offsets_for_times({T0: 10_000}) == {T0: None}
    assert consumer.highwater(T0) == 10


def test_prefetch_is_issued_and_discarded_after_seek(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"a%d" % i for i in range(5)])
    consumer = make_consumer(auto_offset_reset="earliest", fetch_max_wait_ms=0)
    consumer.assign([T0])
    first = poll_until(consumer, 5)
    assert [r.value for r in first] == [b"a%d" % i for i in range(5)]
    fetch_offsets = [c[3] for c in fake.calls if c[0] == "fetch"]
    assert fetch_offsets[-1] == 5  # the next fetch went out before poll returned
    produce(fake, T0, [b"b%d" % i for i in range(3)])
    consumer.seek(T0, 1)
    again = poll_until(consumer, 7)
    assert [r.offset for r in again] == list(range(1, 8))


def test_prefetch_in_flight_at_seek_is_discarded(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"a"])
    consumer = make_consumer(auto_offset_reset="earliest", fetch_max_wait_ms=60_000)
    consumer.assign([T0])
    assert [r.offset for r in poll_until(consumer, 1)] == [0]
    # a long-poll at offset 1 is now in flight; seek back, then let it complete with new data
    consumer.seek(T0, 0)
    produce(fake, T0, [b"b"])
    records = poll_until(consumer, 2)
    assert [(r.offset, r.value) for r in records] == [(0, b"a"), (1, b"b")]


def test_at_most_one_fetch_in_flight_per_partition(fake, make_consumer):
    fake.add_topic("t")
    consumer = make_consumer(auto_offset_reset="earliest", fetch_max_wait_ms=60_000)
    consumer.assign([T0])
    for _ in range(5):
        consumer.poll(timeout=0)
    assert fake.count("fetch") == 1


def test_pause_and_resume(fake, make_consumer):
    fake.add_topic("t", partitions=2)
    produce(fake, T0, [b"a"])
    produce(fake, T1, [b"b"])
    consumer = make_consumer(auto_offset_reset="earliest")
    consumer.assign([T0, T1])
    consumer.pause([T1])
    assert consumer.paused() == {T1}
    records = poll_until(consumer, 1)
    assert [(r.partition, r.value) for r in records] == [(0, b"a")]
    assert consumer.poll(timeout=0.05) == []
    assert all(c[1] != T1 for c in fake.calls if c[0] == "fetch")
    consumer.resume([T1])
    assert [(r.partition, r.value) for r in poll_until(consumer, 1)] == [(1, b"b")]


def test_fetch_from_a_moved_leader_refreshes_metadata(fake, make_consumer):
    fake.add_topic("t")
    produce(fake, T0, [b"a"])
    consumer = make_consumer(auto_offset_reset="earliest", retry_backoff_ms=1)
    consumer.assign([T0])
    consumer.position(T0)
    fake.set_leader(T0, (fake.leader_of(T0) + 1) % 3)
    produce(fake, T0, [b"b"])
    assert [r.value for r in poll_until(consumer, 2)] == [b"a", b"b"]


def test_non_retriable_fetch_error_is_raised(fake, make_consumer):
    fake.add_topic("t")
    consumer = make_consumer(auto_offset_reset="earliest", retry_backoff_ms=1)
    consumer.assign([T0])
    fake.inject("fetch", errors.CorruptRecordError("bad crc"))
    with pytest.raises(errors.CorruptRecordError):
        wait_for(lambda: consumer.poll(timeout=0.05) and False, message="the error")


def test_arrow_native_topic_poll_gives_rows(fake, make_consumer, make_producer):
    schema = pa.schema([("user", pa.string()), ("amount", pa.int64())])
    fake.add_topic("ev", schema=schema, key_column="user")
    make_producer().send_batch("ev", pa.table({"user": ["ann"], "amount": [3]}, schema=schema)).result(10)
    consumer = make_consumer(auto_offset_reset="earliest")
    consumer.assign([TopicPartition("ev", 0)])
    record = poll_until(consumer, 1)[0]
    assert (record.key, record.value, record.headers) == ("ann", {"user": "ann", "amount": 3}, ())
    consumer.seek(TopicPartition("ev", 0), 0)
    rows = []
    wait_for(lambda: rows.append(consumer.poll_arrow(timeout=0.05, columns=["amount"])) or rows[-1].num_rows,
             message="a row")
    assert rows[-1].column_names == ["topic", "partition", "offset", "timestamp", "amount"]


def test_iterator_and_context_manager(fake):
    fake.add_topic("t")
    produce(fake, T0, [b"a", b"b"])
    with Consumer(transport=fake, auto_offset_reset="earliest", consumer_timeout_ms=200) as consumer:
        consumer.assign([T0])
        assert [r.value for r in consumer] == [b"a", b"b"]
    with pytest.raises(errors.ClosedError):
        consumer.poll()
    consumer.close()  # idempotent


def test_closed_consumer_raises(fake, make_consumer):
    fake.add_topic("t")
    consumer = make_consumer()
    consumer.close()
    for call in (lambda: consumer.assign([T0]), lambda: consumer.poll(0), lambda: consumer.poll_arrow(0),
                 lambda: consumer.seek(T0, 0), consumer.assignment, lambda: consumer.position(T0)):
        with pytest.raises(errors.ClosedError):
            call()


def test_argument_errors_before_remote_calls(fake, make_consumer):
    fake.add_topic("t")
    with pytest.raises(ValueError):
        Consumer(transport=fake, auto_offset_reset="smallest")
    with pytest.raises(ValueError):
        Consumer(transport=fake, isolation_level="dirty")
    with pytest.raises(TypeError):
        Consumer(transport=fake, max_poll_records="10")
    consumer = make_consumer()
    calls = len(fake.calls)
    with pytest.raises(TypeError):
        consumer.assign(["t"])
    with pytest.raises(TypeError):
        consumer.assign("t")
    with pytest.raises(ValueError):
        consumer.seek(T0, 0)  # not assigned
    with pytest.raises(TypeError):
        consumer.poll(timeout="1")
    with pytest.raises(ValueError):
        consumer.poll(timeout=-1)
    with pytest.raises(TypeError):
        consumer.offsets_for_times([T0])
    assert len(fake.calls) == calls
    consumer.assign([T0])
    with pytest.raises(ValueError):
        consumer.seek(T0, -3)
    with pytest.raises(TypeError):
        consumer.seek(T0, "3")
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        consumer.assign([TopicPartition("t", 4)])
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        consumer.assign([TopicPartition("nope", 0)])


def test_group_calls_need_a_group_id_and_valid_arguments(fake, make_consumer):
    consumer = make_consumer()
    for call in (lambda: consumer.subscribe(["t"]), consumer.commit, lambda: consumer.committed([])):
        with pytest.raises(ValueError, match="group_id"):
            call()
    fake.add_topic("t", partitions=1)
    grouped = make_consumer(group_id="g", session_timeout_ms=10_000)
    with pytest.raises(TypeError):
        grouped.subscribe("t")  # a str is not a list of topics
    with pytest.raises(TypeError):
        grouped.subscribe(["t"], pattern="t.*")
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        grouped.subscribe(["missing"])
    with pytest.raises(ValueError, match="partition_assignment_strategy"):
        make_consumer(group_id="g", partition_assignment_strategy=["nope"])
    with pytest.raises(ValueError, match="heartbeat_interval_ms"):
        make_consumer(group_id="g", session_timeout_ms=1000, heartbeat_interval_ms=1000)
