"""The idempotent producer on a real cluster: producer ids from the controller, the leader's duplicate /
gap / epoch checks on the replica actor itself, the producer state surviving a replica restart, and the
Producer end to end."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pytest
import ray

import raystream as rs
from raystream import errors
from raystream.protocol import ACTOR_NAMESPACE, ProduceRequest, controller_actor_name, replica_actor_name
from raystream.record import HEADER_TYPE, RECORD_SCHEMA

pytestmark = pytest.mark.integration


def batch_of(n: int, tag: str = "v") -> pa.RecordBatch:
    return pa.record_batch([pa.nulls(n, pa.binary()), pa.array([f"{tag}{i}".encode() for i in range(n)]),
                            pa.nulls(n, HEADER_TYPE)], schema=RECORD_SCHEMA)


def call(ref, timeout: float = 30):
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause from None


def controller():
    return ray.get_actor(controller_actor_name("it"), namespace=ACTOR_NAMESPACE)


def leader_of(topic: str):
    return ray.get_actor(replica_actor_name("it", topic, 0, 0), namespace=ACTOR_NAMESPACE)


def process_id(actor) -> int:
    return call(actor.__ray_call__.remote(lambda _self: os.getpid()))


def produce(replica, batch, pid: int, epoch: int, seq: int, timeout_ms: int = 10_000):
    """acks=all. A batch ahead of its sequence waits up to timeout_ms / 2 (at most 1 s) for the gap to fill."""
    return call(replica.produce.remote(ProduceRequest(batch, -1, timeout_ms, None, pid, epoch, seq)))


def test_producer_ids_are_unique(cluster):
    ids = [call(controller().init_producer_id.remote()) for _ in range(5)]
    assert len({pid for pid, _ in ids}) == 5 and {epoch for _, epoch in ids} == {0}
    assert [pid for pid, _ in ids] == sorted(pid for pid, _ in ids)


def test_producer_ids_never_repeat_across_a_controller_restart(cluster):
    before = call(controller().init_producer_id.remote())[0]
    handle = controller()
    old_pid = process_id(handle)
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            if process_id(handle) != old_pid:
                after = call(handle.init_producer_id.remote())[0]
                break
        except ray.exceptions.RayActorError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the controller did not come back")
        time.sleep(0.1)
    assert after > before  # the restarted controller continues after the block recorded in its log


def test_a_produce_request_sent_twice_is_written_once(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    replica = leader_of(topic_name)
    pid, epoch = call(controller().init_producer_id.remote())
    first = produce(replica, batch_of(3), pid, epoch, 0)
    again = produce(replica, batch_of(3), pid, epoch, 0)  # a retry: same producer, epoch and sequence
    assert (again.base_offset, again.record_count) == (first.base_offset, first.record_count) == (0, 3)
    assert again.max_timestamp == first.max_timestamp
    assert call(replica.describe.remote()).log_end_offset == 3
    assert produce(replica, batch_of(2), pid, epoch, 3).base_offset == 3
    assert produce(replica, batch_of(3), pid, epoch, 0).base_offset == 0  # still one of the last 5 batches
    assert call(replica.describe.remote()).log_end_offset == 5


def test_a_sequence_gap_and_a_stale_epoch_are_rejected(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    replica = leader_of(topic_name)
    pid, epoch = call(controller().init_producer_id.remote())
    produce(replica, batch_of(2), pid, epoch, 0)
    with pytest.raises(errors.OutOfOrderSequenceError) as gap:
        produce(replica, batch_of(1), pid, epoch, 5, timeout_ms=200)
    assert (gap.value.expected_sequence, gap.value.received_sequence) == (2, 5)
    with pytest.raises(errors.OutOfOrderSequenceError):  # an unknown producer must start at 0
        produce(replica, batch_of(1), pid + 10_000, 0, 4, timeout_ms=200)
    assert produce(replica, batch_of(1), pid, epoch + 1, 0).base_offset == 2  # a bumped epoch starts at 0
    with pytest.raises(errors.InvalidProducerEpochError):
        produce(replica, batch_of(1), pid, epoch, 2)  # the old epoch is fenced now
    assert call(replica.describe.remote()).log_end_offset == 3


def test_the_leader_orders_overtaken_batches_by_sequence(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    replica = leader_of(topic_name)
    pid, epoch = call(controller().init_producer_id.remote())
    later = replica.produce.remote(ProduceRequest(batch_of(3, "second-"), -1, 10_000, None, pid, epoch, 3))  # arrives first
    time.sleep(0.2)
    first = produce(replica, batch_of(3, "first-"), pid, epoch, 0)
    assert (first.base_offset, call(later).base_offset) == (0, 3)


def test_a_restarted_replica_rebuilds_its_producer_state(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    replica = leader_of(topic_name)
    pid, epoch = call(controller().init_producer_id.remote())
    sent = [produce(replica, batch_of(4, f"b{i}-"), pid, epoch, 4 * i) for i in range(3)]
    old_pid = process_id(replica)
    ray.kill(replica, no_restart=False)  # a crash: no clean shutdown, no snapshot at the log end
    deadline = time.monotonic() + 30
    while True:  # ray.kill is asynchronous: wait for the new incarnation, then for it to lead again
        try:
            if process_id(replica) != old_pid:
                retry = produce(replica, batch_of(4, "b2-"), pid, epoch, 8)
                break
        except (ray.exceptions.RayActorError, errors.NotLeaderError, errors.LeaderNotAvailableError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the replica did not come back as leader")
        time.sleep(0.1)
    assert retry.base_offset == sent[2].base_offset == 8  # the duplicate is still recognised
    assert call(replica.describe.remote()).log_end_offset == 12
    with pytest.raises(errors.OutOfOrderSequenceError):
        produce(replica, batch_of(1), pid, epoch, 20, timeout_ms=200)
    assert produce(replica, batch_of(1), pid, epoch, 12).base_offset == 12


def test_idempotent_producer_end_to_end(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    n, rows = 20_000, 200_000  # rows: ~20 MB, so ~20 pipelined 1 MiB requests that Ray may reorder
    with rs.Producer(enable_idempotence=True, batch_size=16_384, linger_ms=1,
                     max_request_size=1_048_576) as producer:
        assert producer.enable_idempotence
        futures = [producer.send(topic_name, value=b"%06d" % i) for i in range(n)]
        pad = b"x" * 92
        table = pa.table({"value": [b"t%07d" % i + pad for i in range(rows)]})
        batch_future = producer.send_batch(topic_name, table)
        producer.flush(timeout=60)
    offsets = [f.result(0).offset for f in futures]
    assert offsets == sorted(offsets) and len(set(offsets)) == n
    pieces = batch_future.result(0)
    assert len(pieces) > 10
    batch_offsets = [o for piece in pieces for o in range(piece.base_offset, piece.base_offset + piece.count)]
    assert sorted(offsets + batch_offsets) == list(range(n + rows))  # unique and contiguous
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, 0)])
        values, deadline = [], time.monotonic() + 30
        while len(values) < n + rows and time.monotonic() < deadline:
            values.extend(r.value for r in consumer.poll(timeout=0.5, max_records=100_000))
    assert len(values) == n + rows
    assert values[:n] == [b"%06d" % i for i in range(n)]
    assert [v[:8] for v in values[n:]] == [b"t%07d" % i for i in range(rows)]  # in send order
