"""The producer's modes and its transactional sends against the fake cluster, with a stand-in transaction
coordinator whose AddPartitionsToTxn answers the test controls: one request for the partitions new to a
drain, sent without blocking the sender, holding only those partitions' batches."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
from fake_transport import FakeTransport, wait_for

from raystream import errors
from raystream.client.transaction_manager import ProducerMode, producer_mode
from raystream.protocol import TopicPartition

T0 = TopicPartition("t", 0)
T1 = TopicPartition("t", 1)


class TxnFake(FakeTransport):
    """FakeTransport plus a coordinator: ``init_transactions`` answers at once; each AddPartitionsToTxn is
    left pending in ``adds`` (its partitions, its future) unless ``auto_add``."""

    def __init__(self) -> None:
        super().__init__()
        self.adds: list[tuple[list[TopicPartition], Future]] = []
        self.auto_add = False
        self.txn_calls: list[tuple] = []

    def txn_call(self, method, *args, timeout_s=None):
        self.txn_calls.append((method, *args))
        return (7000, 0) if method == "init_transactions" else None

    def txn_submit(self, method, *args):
        assert method == "add_partitions_to_txn", method
        future: Future = Future()
        with self.lock:
            self.adds.append((list(args[3]), future))
        if self.auto_add:
            future.set_result(None)
        return future

    def produce(self, *args, transactional: bool = False, **kwargs):
        assert transactional, "a transactional producer's batches are marked"
        return super().produce(*args, **kwargs)

    def produced(self, tp: TopicPartition) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c[0] == "produce" and c[1] == tp)


@pytest.fixture
def fake() -> TxnFake:
    return TxnFake()


def open_transaction(make_producer, **config):
    producer = make_producer(transactional_id="tx", **config)
    producer.init_transactions()
    producer.begin_transaction()
    return producer


@pytest.mark.parametrize(("config", "mode"), [
    ({}, ProducerMode.IDEMPOTENT),
    ({"acks": 1}, ProducerMode.PLAIN),
    ({"enable_idempotence": False}, ProducerMode.PLAIN),
    ({"replay_id": "r"}, ProducerMode.REPLAY),
    ({"transactional_id": "tx"}, ProducerMode.TRANSACTIONAL),
])
def test_the_configuration_names_one_mode(config, mode):
    args = {"enable_idempotence": None, "acks": -1, "transactional_id": None, "replay_id": None}
    args.update(config)
    assert producer_mode(args["enable_idempotence"], args["acks"], 5, 5, args["transactional_id"],
                         args["replay_id"]) is mode
    assert mode.sequenced is (mode is not ProducerMode.PLAIN)


def test_new_partitions_of_a_drain_are_added_in_one_request_without_blocking(fake, make_producer):
    fake.add_topic("t", partitions=2)
    producer = open_transaction(make_producer, linger_ms=60_000)
    futures = [producer.send("t", value=b"a", partition=0), producer.send("t", value=b"b", partition=1)]
    flusher = threading.Thread(target=producer.flush, daemon=True)
    flusher.start()
    wait_for(lambda: len(fake.adds) == 1, message="one AddPartitionsToTxn")
    assert sorted(fake.adds[0][0]) == [T0, T1]
    time.sleep(0.1)
    assert fake.count("produce") == 0  # held until the partitions are in the transaction
    assert producer._sender.thread.is_alive() and not any(f.done() for f in futures)
    fake.adds[0][1].set_result(None)
    assert [f.result(10).offset for f in futures] == [0, 0]
    flusher.join(10)
    assert len(fake.adds) == 1


def test_only_the_new_partition_waits_for_its_add(fake, make_producer):
    fake.add_topic("t", partitions=2)
    producer = open_transaction(make_producer, linger_ms=0)
    fake.auto_add = True
    assert producer.send("t", value=b"a", partition=0).result(10).offset == 0
    fake.auto_add = False
    waiting = producer.send("t", value=b"b", partition=1)
    wait_for(lambda: len(fake.adds) == 2, message="the second partition's add")
    assert producer.send("t", value=b"c", partition=0).result(10).offset == 1  # not held behind it
    assert not waiting.done() and fake.produced(T1) == 0
    fake.adds[1][1].set_result(None)
    assert waiting.result(10).offset == 0
    producer.commit_transaction()
    assert [c[0] for c in fake.txn_calls] == ["init_transactions", "end_txn"]


def test_a_retriable_add_failure_is_retried(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = open_transaction(make_producer, linger_ms=0, retry_backoff_ms=10)
    future = producer.send("t", value=b"a")
    wait_for(lambda: len(fake.adds) == 1, message="the add")
    fake.adds[0][1].set_exception(errors.LeaderNotAvailableError("coordinator restarting"))
    wait_for(lambda: len(fake.adds) == 2, message="the retried add")
    fake.adds[1][1].set_result(None)
    assert future.result(10).offset == 0
    producer.commit_transaction()


def test_a_failed_add_fails_the_partitions_batches_and_the_commit(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = open_transaction(make_producer, linger_ms=0)
    future = producer.send("t", value=b"a")
    wait_for(lambda: len(fake.adds) == 1, message="the add")
    fake.adds[0][1].set_exception(errors.ProducerFencedError("a newer instance"))
    with pytest.raises(errors.ProducerFencedError):
        future.result(10)
    assert fake.count("produce") == 0
    with pytest.raises(errors.ProducerFencedError, match="fenced by a newer instance"):
        producer.commit_transaction()
    producer.abort_transaction()
    producer.begin_transaction()  # a new transaction starts clean


def test_a_transaction_error_is_the_producers_to_report(fake, make_producer):
    fake.add_topic("t", partitions=1)
    producer = open_transaction(make_producer, linger_ms=0)
    fake.auto_add = True
    fake.inject("produce", errors.InvalidRecordError("rejected"), times=1)
    with pytest.raises(errors.InvalidRecordError):
        producer.send("t", value=b"bad").result(10)
    with pytest.raises(errors.InvalidTxnStateError, match="InvalidRecordError"):
        producer.commit_transaction()
    producer.abort_transaction()
    producer.begin_transaction()
    # its sequences on the partition are spent and the coordinator owns the epoch: it cannot go on
    with pytest.raises(errors.OutOfOrderSequenceError, match="transactional producer 'tx'"):
        producer.send("t", value=b"good").result(10)
