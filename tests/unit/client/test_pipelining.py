"""Producer hot paths: the ``send`` fast path, per-result callback locks, and pipelined produce requests."""

from __future__ import annotations

import threading
import time

import pytest
from fake_transport import wait_for

from raystream import errors
from raystream.client.accumulator import RECORDS, RecordAccumulator, _binary_array
from raystream.client.futures import BatchResult
from raystream.core.partitioner import partition_for_key
from raystream.protocol import PartitionState, TopicMetadata, TopicPartition

T0 = TopicPartition("t", 0)


# -- pipelining ------------------------------------------------------------------------------------------------
def _send_together(producer, values):
    """Queue ``values`` (one batch each with batch_size=1) before the sender can drain any of them."""
    with producer._acc.cond:  # re-entrant: send appends under the same lock
        return [producer.send("t", value=v) for v in values]


@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_at_most_max_in_flight_requests_per_partition_in_send_order(fake, make_producer, max_in_flight):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0, batch_size=1, max_in_flight_requests_per_connection=max_in_flight)
    fake.hold_produce()
    values = [f"v{i}".encode() for i in range(8)]
    futures = _send_together(producer, values)
    wait_for(lambda: fake.count("produce") == max_in_flight, message="pipelined requests")
    time.sleep(0.2)
    assert fake.count("produce") == max_in_flight  # no more until one completes
    fake.release()
    assert [f.result(10).offset for f in futures] == list(range(8))
    assert fake.values(T0) == values


def test_retriable_error_stops_pipelining_and_retries_after_in_flight_requests(fake, make_producer):
    fake.add_topic("t", partitions=1)
    # without idempotence (test_idempotence.py has the idempotent counterpart, which keeps the order)
    producer = make_producer(linger_ms=0, batch_size=1, retry_backoff_ms=10, enable_idempotence=False)
    fake.hold_produce()
    fake.inject("produce", errors.NotLeaderError("moved"), times=1)  # the first request fails
    futures = _send_together(producer, [b"a", b"b", b"c"])
    wait_for(lambda: fake.count("produce") == 3, message="three requests")
    time.sleep(0.2)
    # "a" waits for the requests still in flight ("b", "c"): not retried meanwhile
    assert fake.count("produce") == 3 and not any(f.done() for f in futures)
    fake.release()
    # the documented caveat without idempotence: the retried batch lands after the later ones
    assert [f.result(10).offset for f in futures] == [2, 0, 1]
    assert fake.values(T0) == [b"b", b"c", b"a"]


def test_partition_sends_one_request_at_a_time_after_an_error_until_a_success(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0, batch_size=1, retry_backoff_ms=10)
    fake.inject("produce", errors.NotLeaderError("moved"), times=1)
    assert producer.send("t", value=b"a").result(10).offset == 0
    assert T0 not in producer._sender._single  # the success restored pipelining
    fake.hold_produce()
    futures = _send_together(producer, [b"b", b"c", b"d"])
    wait_for(lambda: fake.count("produce") == 5, message="pipelined again")
    fake.release()
    assert [f.result(10).offset for f in futures] == [1, 2, 3]


def test_drain_pops_as_many_ready_batches_as_allowed_in_order():
    acc = RecordAccumulator(batch_size=1, linger_ms=0, buffer_memory=1 << 20, max_block_ms=1000,
                            delivery_timeout_ms=10_000)
    for i in range(4):
        acc.append("t", 0, None, RECORDS, None, bytes([i]), None, i, 40)
    first, _ = acc.drain(time.monotonic(), lambda tp: 3)
    assert [b.timestamps[0] for b in first] == [0, 1, 2]
    rest, _ = acc.drain(time.monotonic(), lambda tp: True)
    assert [b.timestamps[0] for b in rest] == [3]
    assert acc.drain(time.monotonic(), lambda tp: 5)[0] == []


# -- send fast path --------------------------------------------------------------------------------------------
def test_fast_path_sends_like_the_general_path(fake, make_producer):
    fake.add_topic("t", partitions=5)
    producer = make_producer(linger_ms=0)
    producer.partitions_for("t")  # metadata cached: the fast path applies
    meta = producer.send("t", value=b"v", key=b"key").result(10)
    assert meta.partition == partition_for_key(b"key", 5)
    tombstone = producer.send("t", value=None, key=b"key").result(10)
    assert (tombstone.partition, tombstone.offset) == (meta.partition, meta.offset + 1)
    assert fake.records(TopicPartition("t", meta.partition)).column("value").to_pylist() == [b"v", None]
    unkeyed = producer.send("t", value=b"x").result(10)
    assert 0 <= unkeyed.partition < 5


@pytest.mark.parametrize("removal", ["expire", "remove_queued", "drain_all"])
def test_fast_path_never_appends_to_a_batch_taken_out_of_its_queue(removal):
    # append_sticky writes into the sticky partition's open batch without looking at the queue: a batch
    # removed from the queue (expired, failed, force-closed) must refuse records, or they are lost with it.
    acc = RecordAccumulator(batch_size=1 << 20, linger_ms=60_000, buffer_memory=1 << 20, max_block_ms=1000,
                            delivery_timeout_ms=10_000)
    meta = TopicMetadata("t", (PartitionState("t", 0, (0,), 0, 0, (0,)),), {})
    acc.append("t", None, meta, RECORDS, None, b"a", None, 1, 40)
    assert acc.append_sticky("t", b"b", 2, 40) is not None  # the open batch takes it
    removed = {"expire": lambda: acc.expire(time.monotonic() + 3600),
               "remove_queued": lambda: acc.remove_queued({T0}), "drain_all": acc.drain_all}[removal]()
    assert [b.values for b in removed] == [[b"a", b"b"]]
    assert acc.append_sticky("t", b"c", 3, 40) is None  # the general path must start a new batch
    acc.append("t", None, meta, RECORDS, None, b"c", None, 3, 40)
    assert acc.append_sticky("t", b"d", 4, 40) is not None
    acc.begin_flush()  # ready now, linger or not
    (batch,), _ = acc.drain(time.monotonic(), lambda tp: True)
    assert batch.values == [b"c", b"d"]


def test_fast_path_keeps_the_checks(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0, max_request_size=200)
    producer.send("t", value=b"x").result(10)
    with pytest.raises(errors.RecordTooLargeError):
        producer.send("t", value=b"x" * 500)
    with pytest.raises(TypeError):
        producer.send(["t"], value=b"x")
    producer.close()
    with pytest.raises(errors.ClosedError):
        producer.send("t", value=b"x")


def test_headers_after_plain_records_in_one_batch(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=60_000)
    futures = [producer.send("t", value=b"a"), producer.send("t", value=b"b", headers={"h": b"1"}),
               producer.send("t", value=b"c")]
    producer.flush(10)
    assert [f.result(0).offset for f in futures] == [0, 1, 2]
    assert fake.records(T0).column("headers").to_pylist() == [None, [{"key": "h", "value": b"1"}], None]


def test_binary_array_all_null_and_mixed():
    assert _binary_array([None, None]).null_count == 2
    assert _binary_array([b"a", None, b""]).to_pylist() == [b"a", None, b""]


# -- callbacks -------------------------------------------------------------------------------------------------
def test_callbacks_added_concurrently_run_exactly_once():
    result = BatchResult("t", 0)
    counts = [0] * 8
    start = threading.Barrier(9)

    def add(slot: int) -> None:
        start.wait()
        for _ in range(2000):
            result.add_callback(lambda slot=slot: counts.__setitem__(slot, counts[slot] + 1))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    start.wait()
    result.complete(0)
    for thread in threads:
        thread.join()
    assert counts == [2000] * 8


def test_callback_locks_are_per_result():
    a, b = BatchResult("t", 0), BatchResult("t", 1)
    ran = []
    with a._lock:  # another batch busy completing does not block adding callbacks here
        b.add_callback(lambda: ran.append("b"))
        b.complete(5)
    assert ran == ["b"]
    a.complete(0)
    a.add_callback(lambda: ran.append("a"))  # already done: runs at once
    assert ran == ["b", "a"]
