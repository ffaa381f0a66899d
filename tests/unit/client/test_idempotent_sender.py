"""The idempotent producer against the fake cluster (whose partitions check sequences with the real
``ProducerStateManager``): configuration rules, producer ids, sequence numbers, retries, duplicates,
out-of-order handling, splits and sequence resets."""

from __future__ import annotations

import dataclasses
import time

import pyarrow as pa
import pytest
from fake_transport import wait_for

from raystream import errors
from raystream.client import Producer
from raystream.protocol import TopicPartition
from raystream.record import HEADER_TYPE, MAX_SEQUENCE, RECORD_SCHEMA

T0 = TopicPartition("t", 0)
T1 = TopicPartition("t", 1)


def produce_calls(fake, tp: TopicPartition | None = None) -> list[tuple[int, int, int, int]]:
    """(producer id, producer epoch, base sequence, record count) of every produce request, in order."""
    return [(c[6], c[7], c[8], c[3]) for c in fake.calls if c[0] == "produce" and (tp is None or c[1] == tp)]


def send_together(producer, values, partition: int | None = None):
    """Queue ``values`` (one batch each with batch_size=1) before the sender can drain any of them."""
    with producer._acc.cond:  # re-entrant: send appends under the same lock
        return [producer.send("t", value=v, partition=partition) for v in values]


# -- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("config", "expected"), [
    ({}, True),
    ({"acks": "all"}, True),
    ({"acks": -1}, True),
    ({"acks": 1}, False),
    ({"acks": 0}, False),
    ({"retries": 0}, False),
    ({"max_in_flight_requests_per_connection": 6}, False),
    ({"max_in_flight_requests_per_connection": 5}, True),
    ({"enable_idempotence": False}, False),
    ({"enable_idempotence": True}, True),
    ({"enable_idempotence": False, "acks": 1}, False),
])
def test_idempotence_default_follows_kafka(make_producer, config, expected):
    assert make_producer(**config).enable_idempotence is expected


@pytest.mark.parametrize(("config", "named"), [
    ({"acks": 1}, "acks=1"),
    ({"acks": 0}, "acks=0"),
    ({"max_in_flight_requests_per_connection": 6}, "max_in_flight_requests_per_connection=6"),
    ({"retries": 0}, "retries=0"),
])
def test_explicit_idempotence_with_a_conflicting_setting_raises(fake, config, named):
    with pytest.raises(ValueError, match=named):
        Producer(transport=fake, enable_idempotence=True, **config)


def test_idempotence_state_is_read_only_and_typed(fake, make_producer):
    producer = make_producer()
    with pytest.raises(AttributeError):
        producer.enable_idempotence = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        Producer(transport=fake, enable_idempotence="yes")  # type: ignore[arg-type]


# -- producer ids and sequences -----------------------------------------------------------------------------
def test_producer_id_is_fetched_once_lazily(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0)
    time.sleep(0.05)
    assert fake.count("init_producer_id") == 0  # nothing sent yet: nothing asked
    for i in range(5):
        producer.send("t", value=b"%d" % i).result(10)
    assert fake.count("init_producer_id") == 1
    assert {pid for pid, *_ in produce_calls(fake)} == {1000}


def test_non_idempotent_producer_sends_no_producer_fields(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0, acks=1)
    producer.send("t", value=b"x").result(10)
    assert fake.count("init_producer_id") == 0
    assert produce_calls(fake) == [(-1, -1, -1, 1)]


def test_sequences_are_assigned_per_partition_in_order_by_record_count(fake, make_producer):
    fake.add_topic("t", partitions=2)
    producer = make_producer(linger_ms=60_000)
    for partition, counts in ((0, (3, 1, 2)), (1, (2, 2))):
        for count in counts:
            for i in range(count):
                producer.send("t", value=b"v%d" % i, partition=partition)
            producer.flush(10)
    assert produce_calls(fake, T0) == [(1000, 0, 0, 3), (1000, 0, 3, 1), (1000, 0, 4, 2)]
    assert produce_calls(fake, T1) == [(1000, 0, 0, 2), (1000, 0, 2, 2)]


def test_send_batch_gets_sequences_too(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0)
    table = pa.table({"value": [b"a", b"b", b"c"]})
    producer.send_batch("t", table).result(10)
    producer.send_batch("t", table.slice(0, 2)).result(10)
    producer.send("t", value=b"z").result(10)
    assert produce_calls(fake) == [(1000, 0, 0, 3), (1000, 0, 3, 2), (1000, 0, 5, 1)]


def test_a_retried_batch_keeps_its_sequence(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=60_000, retry_backoff_ms=1)
    producer.send("t", value=b"a")
    producer.flush(10)
    fake.inject("produce", errors.NotLeaderError("moved"), times=2)
    futures = [producer.send("t", value=v) for v in (b"b", b"c")]
    producer.flush(10)
    assert [f.result(0).offset for f in futures] == [1, 2]
    assert produce_calls(fake) == [(1000, 0, 0, 1)] + [(1000, 0, 1, 2)] * 3
    assert fake.values(T0) == [b"a", b"b", b"c"]


def test_a_retry_of_a_written_batch_is_answered_with_the_original_offsets(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0, retry_backoff_ms=1)
    producer.send("t", value=b"first").result(10)
    # the second request is written, but its response is lost: the retry is a duplicate
    fake.inject("produce_after_append", errors.RequestTimeoutError("reply lost"), times=1)
    assert producer.send("t", value=b"second").result(10).offset == 1
    assert producer.send("t", value=b"third").result(10).offset == 2
    assert fake.values(T0) == [b"first", b"second", b"third"]  # written once
    assert [seq for _, _, seq, _ in produce_calls(fake)] == [0, 1, 1, 2]


# -- out-of-order sequences ---------------------------------------------------------------------------------
def test_out_of_order_behind_a_failed_earlier_batch_is_retried_in_order(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0, batch_size=1, retry_backoff_ms=10)
    producer.send("t", value=b"warm-up").result(10)  # producer id and metadata known
    fake.hold_produce()
    fake.inject("produce", errors.NotLeaderError("moved"), times=1)  # "a" fails; "b", "c" arrive after a gap
    futures = send_together(producer, [b"a", b"b", b"c"])
    wait_for(lambda: fake.count("produce") == 5, message="three requests and the retry of 'a'")
    time.sleep(0.1)
    assert fake.count("produce") == 5  # the partition sends one request at a time while recovering
    fake.release()
    assert [f.result(10).offset for f in futures] == [1, 2, 3]
    assert fake.values(T0) == [b"warm-up", b"a", b"b", b"c"]  # unlike without idempotence: in order
    assert [seq for _, _, seq, _ in produce_calls(fake)] == [0, 1, 2, 3, 1, 2, 3]


def test_out_of_order_alone_fails_the_batch_and_the_partition_starts_a_new_epoch(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0)
    producer.send("t", value=b"a").result(10)
    # a second writer with the same producer id moves the leader's sequences past the producer's next one
    two = pa.record_batch([pa.nulls(2, pa.binary()), pa.array([b"x", b"y"]), pa.nulls(2, HEADER_TYPE)],
                          schema=RECORD_SCHEMA)
    fake.produce(T0, 0, two, -1, 1000, producer_id=1000, producer_epoch=0, base_sequence=1).result(1)
    with pytest.raises(errors.OutOfOrderSequenceError):
        producer.send("t", value=b"b").result(10)
    # the partition resets: a higher epoch, sequences from 0, and the next record goes through
    assert producer.send("t", value=b"c").result(10).offset == 3
    assert produce_calls(fake)[-1] == (1000, 1, 0, 1)
    assert fake.values(T0) == [b"a", b"x", b"y", b"c"]


def test_a_leader_that_forgot_the_producer_gets_fresh_sequences_without_an_error(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0)
    producer.send("t", value=b"a").result(10)
    fake.logs[T0].producers.clear()  # as after producer.id.expiration.ms
    assert producer.send("t", value=b"b").result(10).offset == 1
    assert produce_calls(fake)[1:] == [(1000, 0, 1, 1), (1000, 1, 0, 1)]


def test_a_batch_that_fails_for_good_resets_the_partition_sequences(fake, make_producer):
    fake.add_topic("t", partitions=2)
    producer = make_producer(linger_ms=0)
    producer.send("t", value=b"a", partition=0).result(10)
    producer.send("t", value=b"a", partition=1).result(10)
    fake.inject("produce", errors.InvalidRecordError("rejected"), times=1, tp=T0)
    with pytest.raises(errors.InvalidRecordError):
        producer.send("t", value=b"b", partition=0).result(10)
    assert producer.send("t", value=b"c", partition=0).result(10).offset == 1
    assert producer.send("t", value=b"c", partition=1).result(10).offset == 1
    assert produce_calls(fake, T0)[-1] == (1000, 1, 0, 1)  # a new epoch on partition 0 only
    assert produce_calls(fake, T1)[-1] == (1000, 0, 1, 1)


def test_split_halves_share_the_original_sequence_range(fake, make_producer):
    fake.add_topic("t", partitions=1, max_message_bytes=700)
    producer = make_producer(linger_ms=60_000)
    futures = [producer.send("t", value=b"%03d" % i + b"x" * 97) for i in range(8)]  # ~1 KB: too large
    futures.append(producer.send("t", value=b"after"))
    producer.flush(10)
    assert [f.result(0).offset for f in futures] == list(range(9))
    written = [(seq, count) for _, _, seq, count in produce_calls(fake)]
    assert written[0] == (0, 9)  # rejected whole, then split (possibly twice) over sequences 0..8
    accepted = [(seq, count) for seq, count in written[1:] if count < 9]
    assert [seq for seq, _ in accepted][-1] + accepted[-1][1] == 9
    assert fake.values(T0)[-1] == b"after"


# -- the producer id request --------------------------------------------------------------------------------
def test_producer_id_request_is_retried_on_retriable_errors(fake, make_producer):
    fake.add_topic("t", partitions=1)
    fake.inject("init_producer_id", errors.LeaderNotAvailableError("controller restarting"), times=2)
    producer = make_producer(linger_ms=0, retry_backoff_ms=10)
    assert producer.send("t", value=b"x").result(10).offset == 0
    assert fake.count("init_producer_id") == 3


def test_a_non_retriable_producer_id_error_fails_the_queued_records(fake, make_producer):
    fake.add_topic("t", partitions=1)
    fake.inject("init_producer_id", errors.RaystreamError("no ids here"), times=1)
    producer = make_producer(linger_ms=0, retry_backoff_ms=10)
    with pytest.raises(errors.RaystreamError, match="no ids here"):
        producer.send("t", value=b"x").result(10)
    assert producer.send("t", value=b"y").result(10).offset == 0  # asked again later


def test_producer_id_unavailable_until_the_delivery_timeout_expires_the_records(fake, make_producer):
    fake.add_topic("t", partitions=1)
    fake.inject("init_producer_id", errors.LeaderNotAvailableError("controller down"), times=10_000)
    producer = make_producer(linger_ms=0, retry_backoff_ms=10, request_timeout_ms=100, delivery_timeout_ms=300)
    with pytest.raises(errors.RequestTimeoutError, match="controller down"):
        producer.send("t", value=b"x").result(10)


def test_out_of_order_answered_after_the_earlier_batch_succeeded_is_still_retried(fake, make_producer):
    # Ray may run a caller's requests out of order: "b" reached the leader before "a" and was rejected,
    # but the answers come back in order, so "a" is acknowledged before "b"'s rejection is seen.
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0, batch_size=1, retry_backoff_ms=10)
    producer.send("t", value=b"warm-up").result(10)
    fake.hold_produce(failures=True)
    overtaken = errors.OutOfOrderSequenceError("b overtook a", expected_sequence=1, received_sequence=2)
    fake.inject("produce", overtaken, tp=T0, skip=1)  # the second request ("b") fails
    futures = send_together(producer, [b"a", b"b"])
    wait_for(lambda: fake.count("produce") == 3, message="both requests")
    fake.release()
    assert [f.result(10).offset for f in futures] == [1, 2]
    assert fake.values(T0) == [b"warm-up", b"a", b"b"]


def test_sequences_wrap_at_int32_max_as_in_kafka(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=60_000)
    producer.send("t", value=b"a")
    producer.flush(10)
    # move both sides to just below the wrap: the leader's last sequence and the producer's next one
    entry = fake.logs[T0].producers.entry(1000)
    entry.batches[-1] = dataclasses.replace(entry.batches[-1], first_seq=MAX_SEQUENCE - 2,
                                            last_seq=MAX_SEQUENCE - 2)
    producer._txn._sequences[T0].next_sequence = MAX_SEQUENCE - 1
    for value in (b"b", b"c", b"d"):
        producer.send("t", value=value)
    producer.flush(10)
    last = producer.send("t", value=b"e")
    producer.flush(10)
    assert last.result(0).offset == 4
    assert [seq for _, _, seq, _ in produce_calls(fake)] == [0, MAX_SEQUENCE - 1, 1]  # b c d = MAX-1, MAX, 0
    assert fake.values(T0) == [b"a", b"b", b"c", b"d", b"e"]


def test_request_stuck_on_a_replaced_leader_is_retried_on_the_new_one(fake, make_producer):
    """A leader whose node died answers nothing; once the controller names a new leader, the producer
    (re-checking after leader_recheck_ms) resends there, and idempotence returns the original offset."""
    from fake_transport import wait_for

    from raystream.protocol import TopicPartition

    tp = TopicPartition("t", 0)
    fake.add_topic("t", partitions=1)
    producer = make_producer(acks="all", linger_ms=0, leader_recheck_ms=100)
    old = fake.leader_of(tp)
    fake.hold_produce()  # applied, but the answer never comes back (until release)
    future = producer.send("t", value=b"v")
    wait_for(lambda: len(fake.held) == 1, message="the first request held (applied, unanswered)")
    fake.holding = False  # the new leader answers
    fake.set_leader(tp, (old + 1) % 3)
    assert future.result(timeout=10).offset == 0
    assert fake.values(tp) == [b"v"]  # written once: the retry was recognised as a duplicate
    brokers = [c[2] for c in fake.calls if c[0] == "produce"]
    assert brokers[0] == old and brokers[-1] == (old + 1) % 3
    fake.release()
