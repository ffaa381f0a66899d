"""Arrow data moves through the object store and is released: long runs keep its usage flat."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
import ray

import raystream as rs

pytestmark = pytest.mark.integration
MIB = 1 << 20
ROUNDS = 200


def object_store_bytes_used() -> int:
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return reply.store_stats.object_store_bytes_used


def settled_usage(wait_for, ceiling: int) -> int:
    """Usage once Ray has released what is no longer referenced (release is asynchronous)."""
    return wait_for(lambda: (u := object_store_bytes_used()) <= ceiling and u + 1, timeout_s=30,
                    message=f"object store usage to drop below {ceiling // MIB} MiB") - 1


def test_long_produce_consume_run_keeps_object_store_flat(cluster, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=2)
    table = pa.table({"value": pa.array([b"x" * 1000] * 2000)})  # ~2 MiB per send
    baseline = object_store_bytes_used()
    consumed = 0
    samples = []
    with rs.Producer(acks=1) as producer, rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, p) for p in range(2)])
        for round_ in range(ROUNDS):  # ~2 MiB a round through the cluster
            producer.send_batch(topic_name, table, partition=round_ % 2).result(timeout=60)
            consumed += consumer.poll_arrow(timeout=0.1).num_rows
            if round_ % 10 == 9:
                samples.append(object_store_bytes_used())
        deadline = time.monotonic() + 60
        while consumed < ROUNDS * 2000 and time.monotonic() < deadline:
            consumed += consumer.poll_arrow(timeout=0.5).num_rows
    assert consumed == ROUNDS * 2000
    volume = ROUNDS * 2 * MIB
    used = [x - baseline for x in samples]
    # Ray frees released objects in periodic batches, so usage saws up and down with the traffic of the
    # last moments; what must not happen is growth with the volume that went through (~400 MiB).
    assert max(used) < volume // 2, [x // MIB for x in used]
    third = len(used) // 3
    assert sum(used[-third:]) / third <= sum(used[:third]) / third + 64 * MIB, [x // MIB for x in used]
    settled_usage(wait_for, baseline + 8 * MIB)


def test_slow_consumer_does_not_pin_memory(cluster, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=1)
    table = pa.table({"value": pa.array([b"y" * 1000] * 2000)})
    baseline = object_store_bytes_used()
    with rs.Consumer(auto_offset_reset="earliest", max_partition_fetch_bytes=1 * MIB) as slow:
        slow.assign([rs.TopicPartition(topic_name, 0)])
        slow.poll(timeout=0.1)  # starts prefetching, then never polls again while data piles up
        with rs.Producer(acks=1) as producer:
            for _ in range(40):  # ~80 MiB behind the slow consumer
                producer.send_batch(topic_name, table, partition=0).result(timeout=60)
        # while the consumer still sits on its prefetch, what went through is released: at most the
        # prefetched fetch (max_partition_fetch_bytes) and a little slack stay
        settled_usage(wait_for, baseline + 8 * MIB)
        assert len(slow.poll(timeout=5)) > 0  # still works when it comes back
    settled_usage(wait_for, baseline + 8 * MIB)
