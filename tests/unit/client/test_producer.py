"""Producer behaviour against the in-process fake cluster."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest
from fake_transport import FakeTransport, wait_for

from raystream import errors
from raystream.client import Producer, ResultTimeoutError
from raystream.core.partitioner import partition_for_key
from raystream.protocol import RecordMetadata, TopicPartition

T0 = TopicPartition("t", 0)


def test_send_resolves_to_record_metadata_with_consecutive_offsets(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0)
    futures = [producer.send("t", value=f"v{i}", key=b"k", timestamp=1000 + i) for i in range(5)]
    metas = [f.result(timeout=10) for f in futures]
    assert metas == [RecordMetadata("t", 0, i, 1000 + i) for i in range(5)]
    assert fake.values(T0) == [f"v{i}".encode() for i in range(5)]


def test_same_key_same_partition_as_kafka(fake, make_producer):
    fake.add_topic("t", partitions=7)
    producer = make_producer()
    for key in (b"alpha", b"beta", "gamma", b"", b"\x00\xff"):
        expected = partition_for_key(key.encode() if isinstance(key, str) else key, 7)
        parts = {producer.send("t", value=b"x", key=key).result(10).partition for _ in range(3)}
        assert parts == {expected}


def test_sticky_partitioning_switches_after_the_batch_is_sent(fake, make_producer):
    fake.add_topic("t", partitions=4)
    producer = make_producer(linger_ms=60_000)
    first = [producer.send("t", value=b"a") for _ in range(20)]
    producer.flush(timeout=10)
    second = [producer.send("t", value=b"b") for _ in range(20)]
    producer.flush(timeout=10)
    p1 = {f.result(0).partition for f in first}
    p2 = {f.result(0).partition for f in second}
    assert len(p1) == 1 and len(p2) == 1 and p1 != p2
    assert fake.count("produce") == 2


def test_linger_batches_records_into_few_produce_calls(fake, make_producer):
    fake.add_topic("t", partitions=3)
    producer = make_producer(linger_ms=60_000)
    futures = [producer.send("t", value=b"v%d" % i, key=b"k%d" % i) for i in range(300)]
    assert fake.count("produce") == 0  # nothing leaves before linger or flush
    producer.flush(timeout=10)
    assert all(f.done() for f in futures)
    assert fake.count("produce") == 3  # one batch per partition


def test_linger_expiry_sends_without_flush(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=5)
    assert producer.send("t", value=b"x").result(timeout=10).offset == 0


def test_batch_size_caps_each_produce_request(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=60_000, batch_size=2000)
    futures = [producer.send("t", value=b"x" * 100) for _ in range(100)]
    producer.flush(timeout=10)
    produced = [c for c in fake.calls if c[0] == "produce"]
    assert 5 <= len(produced) < 100
    assert all(c[5].nbytes <= 2000 for c in produced)
    assert [f.result(0).offset for f in futures] == list(range(100))


def test_order_is_kept_per_partition_across_retries(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=0, batch_size=500, retry_backoff_ms=1)
    fake.inject("produce", errors.NotLeaderError("moved"), times=3)
    fake.inject("produce", errors.RequestTimeoutError("slow"), times=2)
    futures = [producer.send("t", value=b"%04d" % i) for i in range(400)]
    producer.flush(timeout=10)
    assert [f.result(0).offset for f in futures] == list(range(400))
    assert fake.values(T0) == [b"%04d" % i for i in range(400)]


def test_not_leader_refreshes_metadata_and_retries_on_the_new_leader(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=0, retry_backoff_ms=1)
    assert producer.send("t", value=b"a").result(10).offset == 0
    old = fake.leader_of(T0)
    fake.set_leader(T0, (old + 1) % 3)
    metadata_calls = fake.count("get_metadata")
    assert producer.send("t", value=b"b").result(10).offset == 1
    brokers = [c[2] for c in fake.calls if c[0] == "produce"]
    assert brokers == [old, old, (old + 1) % 3]
    assert fake.count("get_metadata") > metadata_calls


def test_leader_epoch_is_sent_and_a_fenced_epoch_is_retried(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=0, retry_backoff_ms=1)
    producer.send("t", value=b"a").result(10)
    leader = fake.leader_of(T0)
    fake.set_leader(T0, leader)  # same broker, newer epoch: the cached epoch is now stale
    assert producer.send("t", value=b"b").result(10).offset == 1


def test_record_too_large_is_raised_by_send(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(max_request_size=1000)
    with pytest.raises(errors.RecordTooLargeError):
        producer.send("t", value=b"x" * 2000)
    assert fake.count("produce") == 0
    producer2 = make_producer(buffer_memory=1000, max_request_size=10_000)
    with pytest.raises(errors.RecordTooLargeError):
        producer2.send("t", value=b"x" * 2000)


def test_a_batch_the_broker_finds_too_large_is_split(fake, make_producer):
    fake.add_topic("t", max_message_bytes=1500)
    producer = make_producer(linger_ms=60_000)
    futures = [producer.send("t", value=b"x" * 100) for _ in range(50)]
    producer.flush(timeout=10)
    assert [f.result(0).offset for f in futures] == list(range(50))
    assert len(fake.values(T0)) == 50


def test_delivery_timeout_fails_the_future_with_request_timeout(fake, make_producer):
    fake.add_topic("t")
    fake.set_leader(T0, -1)  # no leader: the batch cannot leave
    producer = make_producer(linger_ms=0, request_timeout_ms=50, delivery_timeout_ms=100, retry_backoff_ms=5)
    future = producer.send("t", value=b"x")
    with pytest.raises(errors.RequestTimeoutError):
        future.result(timeout=10)
    assert isinstance(future.exception(0), errors.RequestTimeoutError)


def test_request_without_response_times_out_then_expires(fake, make_producer):
    fake.add_topic("t")
    fake.hold_produce()
    producer = make_producer(linger_ms=0, request_timeout_ms=30, delivery_timeout_ms=100, retry_backoff_ms=5)
    future = producer.send("t", value=b"x")
    exc = future.exception(timeout=10)
    assert isinstance(exc, errors.RequestTimeoutError)
    assert fake.count("produce") >= 2  # retried after the request timeout
    fake.release()


def test_non_retriable_error_fails_at_once(fake, make_producer):
    fake.add_topic("t")
    fake.inject("produce", errors.SchemaMismatchError("bad"), times=1)
    producer = make_producer(linger_ms=0)
    with pytest.raises(errors.SchemaMismatchError):
        producer.send("t", value=b"x").result(10)
    assert fake.count("produce") == 1


def test_future_api_and_callbacks(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=60_000)
    seen = []
    future = producer.send("t", value=b"x")
    future.add_done_callback(lambda f: seen.append(f.result().offset))
    assert not future.done()
    with pytest.raises(ResultTimeoutError):
        future.result(timeout=0.01)
    with pytest.raises(TimeoutError):  # also a builtin TimeoutError, like concurrent.futures
        future.result(timeout=0)
    producer.flush()
    assert future.done() and future.exception() is None and seen == [0]
    late = []
    future.add_done_callback(lambda f: late.append(f.result().offset))
    assert late == [0]


def test_flush_timeout_and_forced_close_fail_pending_records(fake, make_producer):
    fake.add_topic("t")
    fake.hold_produce()
    producer = make_producer(linger_ms=0)
    future = producer.send("t", value=b"x")
    wait_for(lambda: fake.count("produce") == 1, message="the produce request")
    with pytest.raises(ResultTimeoutError):
        producer.flush(timeout=0.05)
    queued = producer.send("t", value=b"y")
    producer.close(timeout=0)
    assert isinstance(future.exception(1), errors.ClosedError)
    assert isinstance(queued.exception(1), errors.ClosedError)
    fake.release()


def test_closed_producer_rejects_sends_and_close_is_idempotent(fake, make_producer):
    fake.add_topic("t")
    with make_producer(linger_ms=60_000) as producer:
        future = producer.send("t", value=b"x")
    assert future.result(0).offset == 0  # close flushed it
    producer.close()
    with pytest.raises(errors.ClosedError):
        producer.send("t", value=b"y")
    with pytest.raises(errors.ClosedError):
        producer.send_batch("t", pa.table({"value": [b"y"]}))
    assert not producer._sender.thread.is_alive()


def test_buffer_memory_blocks_then_times_out(fake, make_producer):
    fake.add_topic("t")
    fake.hold_produce()
    producer = make_producer(linger_ms=0, buffer_memory=300, max_block_ms=50)
    producer.send("t", value=b"x" * 200)
    with pytest.raises(errors.RequestTimeoutError):
        producer.send("t", value=b"x" * 200)
    fake.release()
    producer.flush(timeout=10)
    assert producer.send("t", value=b"x" * 200).result(10).offset == 1


def test_blocked_send_proceeds_when_memory_frees(fake, make_producer):
    fake.add_topic("t")
    fake.hold_produce()
    producer = make_producer(linger_ms=0, buffer_memory=300, max_block_ms=10_000)
    producer.send("t", value=b"x" * 200)
    out = []
    thread = threading.Thread(target=lambda: out.append(producer.send("t", value=b"y" * 200)))
    thread.start()
    wait_for(lambda: fake.count("produce") == 1, message="the first produce")
    fake.release()
    thread.join(10)
    fake.release()
    producer.flush(timeout=10)
    assert out[0].result(0).offset == 1


def test_acks_zero_resolves_with_unknown_offset(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(acks=0, linger_ms=0)
    meta = producer.send("t", value=b"x", timestamp=5).result(10)
    assert (meta.offset, meta.timestamp) == (-1, 5)
    producer.flush(timeout=10)
    assert [c[4] for c in fake.calls if c[0] == "produce"] == [0]


def test_acks_all_maps_to_minus_one(fake, make_producer):
    fake.add_topic("t")
    make_producer(acks="all", linger_ms=0).send("t", value=b"x").result(10)
    make_producer(acks=1, linger_ms=0).send("t", value=b"x").result(10)
    assert [c[4] for c in fake.calls if c[0] == "produce"] == [-1, 1]


def test_values_keys_headers_and_serializers(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=0, key_serializer=lambda k: str(k).encode(),
                             value_serializer=lambda v: repr(v).encode())
    producer.send("t", value={"a": 1}, key=42, headers={"h": "v", "b": b"\x00"}).result(10)
    producer.send("t", value=None, key=None, headers=[("x", b"1"), ("x", b"2")]).result(10)
    table = fake.records(T0)
    assert table.column("value").to_pylist() == [b"{'a': 1}", None]
    assert table.column("key").to_pylist() == [b"42", None]
    assert table.column("headers").to_pylist() == [
        [{"key": "h", "value": b"v"}, {"key": "b", "value": b"\x00"}],
        [{"key": "x", "value": b"1"}, {"key": "x", "value": b"2"}]]
    plain = make_producer(linger_ms=0)
    plain.send("t", value="héllo", key="k").result(10)
    assert fake.values(T0)[-1] == "héllo".encode()


def test_argument_errors_are_raised_before_any_remote_call(fake):
    fake.add_topic("t")
    with pytest.raises(ValueError):
        Producer(transport=fake, acks=2)
    with pytest.raises(ValueError):
        Producer(transport=fake, delivery_timeout_ms=10, request_timeout_ms=30_000)
    with pytest.raises(TypeError):
        Producer(transport=fake, linger_ms="5")
    with Producer(transport=fake) as producer:
        for kwargs in ({"topic": 1}, {"topic": "t", "value": 1.5}, {"topic": "t", "key": object()},
                       {"topic": "t", "partition": "0"}, {"topic": "t", "headers": {1: b"x"}},
                       {"topic": "t", "timestamp": -1}):
            with pytest.raises((TypeError, ValueError)):
                producer.send(**kwargs)
        with pytest.raises(TypeError):
            producer.send_batch("t", {"value": [b"x"]})  # a dict is not a table (lists of dicts are)
    assert fake.count("produce") == 0


def test_unknown_topic_and_partition(fake, make_producer):
    fake.add_topic("t", partitions=2)
    producer = make_producer()
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        producer.send("nope", value=b"x")
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        producer.send("t", value=b"x", partition=2)
    assert producer.send("t", value=b"x", partition=1).result(10).partition == 1
    assert producer.partitions_for("t") == {0, 1}


def test_new_partitions_are_seen_after_refresh(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = make_producer(linger_ms=0)
    producer.send("t", value=b"x").result(10)
    fake.create_partitions("t", 3)
    assert producer.send("t", value=b"x", partition=2).result(10).partition == 2


def test_transactional_producer_state_rules(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(transactional_id="tx")
    assert producer.enable_idempotence  # implied, as in Kafka
    for call in (producer.begin_transaction, producer.commit_transaction, producer.abort_transaction):
        with pytest.raises(errors.InvalidTxnStateError):
            call()  # nothing before init_transactions
    with pytest.raises(errors.InvalidTxnStateError, match="inside a transaction"):
        producer.send("t", value=b"x")
    with pytest.raises(ValueError, match="idempotent"):
        make_producer(transactional_id="tx2", enable_idempotence=False)
    with pytest.raises(errors.InvalidTxnStateError, match="transactional_id"):
        make_producer().init_transactions()


def test_callback_exceptions_do_not_break_the_sender(fake, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=0)
    producer.send("t", value=b"x").add_done_callback(lambda f: 1 / 0)
    assert producer.send("t", value=b"y").result(10).offset == 1


def test_concurrent_senders_keep_per_thread_order(fake: FakeTransport, make_producer):
    fake.add_topic("t")
    producer = make_producer(linger_ms=1, batch_size=4000)

    def run(tag: int) -> None:
        for i in range(200):
            producer.send("t", value=b"%d-%03d" % (tag, i))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    producer.flush(timeout=10)
    values = fake.values(T0)
    assert len(values) == 800
    for tag in range(4):
        mine = [v for v in values if v.startswith(b"%d-" % tag)]
        assert mine == sorted(mine)
