"""Transactions (exactly-once) on the shared cluster: commit, abort, fencing, offsets in a transaction,
coordinator timeouts, and what read_committed / read_uncommitted consumers see."""

from __future__ import annotations

import time
import uuid

import pytest
import ray

import raystream as rs
from raystream import errors
from raystream.protocol import ACTOR_NAMESPACE, FetchRequest, controller_actor_name, replica_actor_name

pytestmark = pytest.mark.integration
DEADLINE_S = 30


def values_until(consumer, topic, sentinel: bytes, partitions=(0,)) -> list[bytes]:
    """Everything the consumer reads (from the start) until it has read ``sentinel`` from each partition
    (the test wrote one, last, to each)."""
    consumer.assign([rs.TopicPartition(topic, p) for p in partitions])
    consumer.seek_to_beginning()
    out: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while out.count(sentinel) < len(partitions):
        assert time.monotonic() < deadline, f"sentinel not read; got {out}"
        out.extend(r.value for r in consumer.poll(timeout=0.5))
    return out


def plain_send(topic, value: bytes, partition=0) -> None:
    with rs.Producer(acks="all") as producer:
        producer.send(topic, value=value, partition=partition).result(timeout=DEADLINE_S)


def leader_fetch(topic, partition, read_committed: bool):
    leader = ray.get_actor(replica_actor_name("it", topic, partition, 0), namespace=ACTOR_NAMESPACE)
    return ray.get(leader.fetch.remote(FetchRequest(0, 1 << 20, 0, 1, None, None, None, read_committed)))


def test_commit_makes_every_record_visible_at_once(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=2)
    with rs.Producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}") as producer:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(4):
            producer.send(topic_name, value=f"v{i}".encode(), partition=i % 2)
        producer.flush()
        # written and replicated, but not committed: read_committed sees nothing, read_uncommitted all
        assert all(leader_fetch(topic_name, p, True).batches == [] for p in (0, 1))
        assert sum(b.num_rows for b in leader_fetch(topic_name, 0, False).batches) == 2
        producer.commit_transaction()
    plain_send(topic_name, b"after", partition=0)
    plain_send(topic_name, b"after", partition=1)
    with rs.Consumer(isolation_level="read_committed") as consumer:
        seen = values_until(consumer, topic_name, b"after", partitions=(0, 1))
    assert sorted(seen) == [b"after", b"after", b"v0", b"v1", b"v2", b"v3"]


def test_aborted_records_are_never_read_committed(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    with rs.Producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}") as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic_name, value=b"aborted-1")
        producer.send(topic_name, value=b"aborted-2")
        producer.abort_transaction()
        producer.begin_transaction()  # the same producer goes on after an abort
        producer.send(topic_name, value=b"kept")
        producer.commit_transaction()
    plain_send(topic_name, b"after")
    with rs.Consumer(isolation_level="read_committed") as consumer:
        assert values_until(consumer, topic_name, b"after") == [b"kept", b"after"]
    with rs.Consumer() as consumer:  # read_uncommitted: everything, in log order
        assert values_until(consumer, topic_name, b"after") == [b"aborted-1", b"aborted-2", b"kept", b"after"]


def test_a_new_instance_fences_the_old_one_and_aborts_its_transaction(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    txn_id = f"tx-{uuid.uuid4().hex[:6]}"
    old = rs.Producer(transactional_id=txn_id)
    new = rs.Producer(transactional_id=txn_id)
    try:
        old.init_transactions()
        old.begin_transaction()
        old.send(topic_name, value=b"zombie").result(timeout=DEADLINE_S)
        new.init_transactions()  # aborts the zombie's open transaction
        with pytest.raises(errors.InvalidProducerEpochError):  # the partition leader fences it too
            old.send(topic_name, value=b"zombie-2").result(timeout=DEADLINE_S)
        with pytest.raises(errors.ProducerFencedError):
            old.commit_transaction()
        new.begin_transaction()
        new.send(topic_name, value=b"live")
        new.commit_transaction()
    finally:
        old.close()
        new.close()
    plain_send(topic_name, b"after")
    with rs.Consumer(isolation_level="read_committed") as consumer:
        assert values_until(consumer, topic_name, b"after") == [b"live", b"after"]


def test_offsets_sent_to_a_transaction_commit_with_it(cluster, topic_name):
    admin = rs.Admin()
    source, sink, group = topic_name, f"{topic_name}-out", f"g-{uuid.uuid4().hex[:6]}"
    admin.create_topic(source, partitions=1)
    admin.create_topic(sink, partitions=1)
    with rs.Producer(acks="all") as plain:
        for i in range(5):
            plain.send(source, value=f"in{i}".encode())
    tp = rs.TopicPartition(source, 0)
    with rs.Producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}") as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(sink, value=b"out-aborted")
        producer.send_offsets_to_transaction({tp: 3}, group)
        producer.abort_transaction()
        with pytest.raises(errors.GroupIdNotFoundError):
            admin.describe_group(group)  # the abort committed nothing: the group does not even exist
        producer.begin_transaction()
        producer.send(sink, value=b"out-0..4")
        producer.send_offsets_to_transaction({tp: 5}, group)
        producer.commit_transaction()
    committed = admin.describe_group(group).offsets[tp]
    assert getattr(committed, "offset", committed) == 5
    plain_send(sink, b"after")
    with rs.Consumer(isolation_level="read_committed") as consumer:
        assert values_until(consumer, sink, b"after") == [b"out-0..4", b"after"]


def test_an_expired_transaction_is_aborted_by_the_coordinator(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    producer = rs.Producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}", transaction_timeout_ms=1000)
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic_name, value=b"forgotten").result(timeout=DEADLINE_S)
        plain_send(topic_name, b"after")  # behind the open transaction: hidden from read_committed ...
        with rs.Consumer(isolation_level="read_committed") as consumer:  # ... until the timeout aborts it
            assert values_until(consumer, topic_name, b"after") == [b"after"]
        with pytest.raises(errors.ProducerFencedError):
            producer.commit_transaction()  # the coordinator bumped the epoch when it aborted
    finally:
        producer.close()


def test_an_open_transaction_survives_a_controller_restart(cluster, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=1)
    with rs.Producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}") as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic_name, value=b"before-restart").result(timeout=DEADLINE_S)
        controller = ray.get_actor(controller_actor_name("it"), namespace=ACTOR_NAMESPACE)
        ray.kill(controller, no_restart=False)
        wait_for(lambda: ray.get(controller.ping.remote(), timeout=5) == "it", timeout_s=60, message="restart")
        producer.send(topic_name, value=b"after-restart")  # a partition already in the transaction
        producer.commit_transaction()  # the restarted coordinator knows the transaction and its partitions
    plain_send(topic_name, b"after")
    with rs.Consumer(isolation_level="read_committed") as consumer:
        assert values_until(consumer, topic_name, b"after") == [b"before-restart", b"after-restart", b"after"]


def test_read_committed_latest_offsets_and_read_topic(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    with rs.Producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}") as producer:
        producer.init_transactions()
        for tag, commit in ((b"c1", True), (b"a1", False), (b"c2", True)):
            producer.begin_transaction()
            producer.send(topic_name, value=tag)
            producer.send(topic_name, value=tag + b"'")
            producer.commit_transaction() if commit else producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic_name, value=b"open").result(timeout=DEADLINE_S)  # left open
        tp = rs.TopicPartition(topic_name, 0)
        with rs.Consumer(isolation_level="read_committed") as committed, rs.Consumer() as uncommitted:
            lso, hw = committed.end_offsets([tp])[tp], uncommitted.end_offsets([tp])[tp]
        assert (lso, hw) == (9, 10)  # 6 records + 3 markers below the open transaction's first offset
        table = rs.data.read_topic(topic_name, isolation_level="read_committed", cluster="it").to_arrow_refs()
        values = [v for t in ray.get(table) for v in t.column("value").to_pylist()]
        assert values == [b"c1", b"c1'", b"c2", b"c2'"]  # nothing aborted, nothing from the open one
        producer.abort_transaction()
