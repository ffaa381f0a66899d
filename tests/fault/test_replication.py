"""Replication on a 3-node ``ray.cluster_utils.Cluster``: placement, acks=all, ISR shrink and rejoin."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import ray
from fault_cluster import multi_node_ray

import raystream as rs
from raystream.core.names import partition_dir_name
from raystream.protocol import ACTOR_NAMESPACE, controller_actor_name, replica_actor_name

pytestmark = pytest.mark.fault
CLUSTER = "ft"


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory):
    with multi_node_ray(tmp_path_factory, 3, "node") as (_, dirs):
        # These tests watch the leader's own ISR bookkeeping (replica.lag.time.max.ms), so the controller's
        # faster failure detection is slowed down here; tests/fault/test_failover.py covers that.
        handle = rs.init(cluster=CLUSTER, data_dir=dirs[0], broker_config={"replica.lag.time.max.ms": 2000,
                                                                           "replica.session.timeout.ms": 60000})
        yield handle, dirs
        rs.shutdown(stop_cluster=True)


def consume(topic, partition, expected, timeout_s=60):
    out = []
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic, partition)])
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(consumer.poll(timeout=0.5))
    return out


def test_three_brokers_registered_on_distinct_nodes(three_nodes):
    handle, dirs = three_nodes
    brokers = handle.brokers()
    assert len(brokers) == 3
    assert len({b.node_id for b in brokers.values()}) == 3
    assert sorted(b.data_dir for b in brokers.values()) == sorted(dirs)


def test_rf3_replicas_on_distinct_nodes_and_acks_all_round_trip(three_nodes):
    handle, _ = three_nodes
    admin = rs.Admin()
    admin.create_topic("rf3", partitions=3, replication_factor=3, config={"min.insync.replicas": 2})
    description = admin.describe_topic("rf3")
    leaders = set()
    for part in description.partitions:
        assert len(set(part.replicas)) == 3
        assert sorted(part.isr) == sorted(part.replicas)
        leaders.add(part.leader)
    assert len(leaders) == 3, "leaders should spread over the nodes"
    with rs.Producer(acks="all") as producer:
        futures = [producer.send("rf3", value=b"%d" % i, partition=i % 3) for i in range(300)]
        producer.flush()
        assert all(f.result(timeout=30).offset >= 0 for f in futures)
    for p in range(3):
        assert [r.value for r in consume("rf3", p, 100)] == [b"%d" % i for i in range(p, 300, 3)]
    # every replica holds every record (the high watermark covers the whole log on all of them)
    for part in ray.get(handle.controller.get_metadata.remote(["rf3"]))["rf3"].partitions:
        for broker in part.replicas:
            actor = ray.get_actor(replica_actor_name(CLUSTER, "rf3", part.partition, broker),
                                  namespace=ACTOR_NAMESPACE)
            assert ray.get(actor.describe.remote()).log_end_offset == 100


def test_followers_hold_the_leaders_bytes_across_a_schema_change(three_nodes, wait_for):
    # Followers write the leader's segment bytes as they are: every replica ends with the same segment
    # files, byte for byte, the schema change starting a new segment on each at the same offset.
    handle, _ = three_nodes
    v1 = pa.schema([("id", pa.int32()), ("name", pa.string())])
    v2 = pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64())])
    admin = rs.Admin()
    admin.create_topic("verbatim", partitions=1, replication_factor=3, schema=v1,
                       config={"min.insync.replicas": 3})
    with rs.Producer(acks="all") as producer:
        for i in range(3):
            producer.send_batch("verbatim", pa.table({"id": pa.array([i], pa.int32()), "name": [f"n{i}"]})).result(
                timeout=30)
    admin.alter_topic_schema("verbatim", v2)
    with rs.Producer(acks="all") as producer:
        producer.send_batch("verbatim", pa.table({"id": [3], "name": ["n3"], "score": [0.5]}, schema=v2)).result(
            timeout=30)
    state = ray.get(handle.controller.get_partition_state.remote("verbatim", 0))
    replicas = [ray.get_actor(replica_actor_name(CLUSTER, "verbatim", 0, b), namespace=ACTOR_NAMESPACE)
                for b in state.replicas]
    wait_for(lambda: [ray.get(r.describe.remote()).log_end_offset for r in replicas] == [4, 4, 4],
             message="every replica at the log end")
    files = {b: [(f.name, f.read_bytes()) for f in sorted(
        (Path(handle.brokers()[b].log_dir) / partition_dir_name("verbatim", 0)).glob("*.arrows"))]
        for b in state.replicas}
    leader_files = files[state.leader]
    assert len(leader_files) >= 2, "the schema change starts a new segment"
    assert all(f == leader_files for f in files.values())
    rows = consume("verbatim", 0, 4)
    assert [r.offset for r in rows] == [0, 1, 2, 3]


def test_stopped_follower_leaves_isr_and_rejoins_after_catching_up(three_nodes, wait_for):
    handle, _ = three_nodes
    admin = rs.Admin()
    admin.create_topic("isr", partitions=1, replication_factor=3, config={"min.insync.replicas": 2})
    state = ray.get(handle.controller.get_partition_state.remote("isr", 0))
    follower = next(b for b in state.replicas if b != state.leader)
    actor = ray.get_actor(replica_actor_name(CLUSTER, "isr", 0, follower), namespace=ACTOR_NAMESPACE)
    with rs.Producer(acks="all") as producer:
        producer.send("isr", value=b"first").result(timeout=30)
        ray.kill(actor, no_restart=True)
        wait_for(lambda: follower not in ray.get(handle.controller.get_partition_state.remote("isr", 0)).isr,
                 timeout_s=30, message="the stopped follower to leave the ISR")
        # acks=all still succeeds with 2 of 3 in sync (min.insync.replicas=2)
        for i in range(20):
            producer.send("isr", value=b"%d" % i)
        producer.flush()
    ray.get(handle.controller.start.remote())  # the controller re-creates missing replicas
    wait_for(lambda: follower in ray.get(handle.controller.get_partition_state.remote("isr", 0)).isr,
             timeout_s=60, message="the follower to catch up and rejoin the ISR")
    actor = ray.get_actor(replica_actor_name(CLUSTER, "isr", 0, follower), namespace=ACTOR_NAMESPACE)
    assert ray.get(actor.describe.remote()).log_end_offset == 21


def test_high_watermark_gates_consumers_while_isr_is_short(three_nodes, wait_for):
    handle, _ = three_nodes
    rs.Admin().create_topic("gate", partitions=1, replication_factor=2, config={"min.insync.replicas": 1})
    state = ray.get(handle.controller.get_partition_state.remote("gate", 0))
    follower = next(b for b in state.replicas if b != state.leader)
    actor = ray.get_actor(replica_actor_name(CLUSTER, "gate", 0, follower), namespace=ACTOR_NAMESPACE)
    with rs.Producer(acks=1) as producer:
        producer.send("gate", value=b"a").result(timeout=30)
        wait_for(lambda: len(consume("gate", 0, 1, timeout_s=2)) == 1, message="first record visible")
        ray.kill(actor, no_restart=True)
        producer.send("gate", value=b"b").result(timeout=30)  # acked by the leader alone
        leader = ray.get_actor(replica_actor_name(CLUSTER, "gate", 0, state.leader), namespace=ACTOR_NAMESPACE)
        # The controller fences the dead follower out of the ISR within a heartbeat or two, so "b" becomes
        # visible soon; until then a consumer must not see it. The high watermark only grows, so every
        # record a poll returned must lie below the high watermark read right after that poll.
        with rs.Consumer(auto_offset_reset="earliest") as consumer:
            consumer.assign([rs.TopicPartition("gate", 0)])
            seen = []
            deadline = time.monotonic() + 30
            while len(seen) < 2 and time.monotonic() < deadline:
                got = consumer.poll(timeout=0.2)
                hw = ray.get(leader.describe.remote()).high_watermark
                assert all(r.offset < hw for r in got), (got, hw)
                seen.extend(got)
        wait_for(lambda: follower not in ray.get(handle.controller.get_partition_state.remote("gate", 0)).isr,
                 timeout_s=30, message="ISR shrink")
    assert [r.value for r in consume("gate", 0, 2)] == [b"a", b"b"]


def test_controller_is_pinned_and_survives_restart(three_nodes, wait_for):
    controller = ray.get_actor(controller_actor_name(CLUSTER), namespace=ACTOR_NAMESPACE)
    topics = ray.get(controller.list_topics.remote())
    old_pid = ray.get(controller.__ray_call__.remote(lambda _self: os.getpid()))
    ray.kill(controller, no_restart=False)
    # ray.kill is asynchronous: the old process may still answer for a moment, so wait for the new one
    # (else its death lands in the next test's calls, which Ray then retries on the restarted controller).
    wait_for(lambda: ray.get(controller.__ray_call__.remote(lambda _self: os.getpid()), timeout=5) != old_pid,
             timeout_s=60, message="the controller's new incarnation")
    wait_for(lambda: ray.get(controller.list_topics.remote(), timeout=5) == topics, timeout_s=60,
             message="controller restart")


def test_create_topic_resent_to_a_restarted_controller_finds_its_own_topic(three_nodes, wait_for):
    """The controller dies after recording a new topic, while it still creates the replicas: Ray resends
    the call to the new incarnation, which must answer with that topic (not TopicAlreadyExistsError) and
    finish its replicas."""
    controller = ray.get_actor(controller_actor_name(CLUSTER), namespace=ACTOR_NAMESPACE)
    old_pid = ray.get(controller.__ray_call__.remote(lambda _self: os.getpid()))
    outcome: list = []
    creating = threading.Thread(target=lambda: outcome.append(_attempt(
        lambda: rs.Admin().create_topic("resent", partitions=12, replication_factor=3))))
    creating.start()
    wait_for(lambda: "resent" in ray.get(controller.list_topics.remote(), timeout=5), timeout_s=60,
             interval_s=0.01, message="the topic recorded")
    ray.kill(controller, no_restart=False)
    wait_for(lambda: ray.get(controller.__ray_call__.remote(lambda _self: os.getpid()), timeout=5) != old_pid,
             timeout_s=60, message="the controller's new incarnation")
    creating.join(120)
    assert outcome == [None]
    described = rs.Admin().describe_topic("resent")
    assert len(described.partitions) == 12
    wait_for(lambda: all(p.leader is not None and len(p.isr) == 3
                         for p in rs.Admin().describe_topic("resent").partitions), timeout_s=60,
             message="every partition led, with its three replicas in sync")
    with pytest.raises(rs.errors.TopicAlreadyExistsError):  # another call (a new id) still may not create it
        rs.Admin().create_topic("resent", partitions=1, replication_factor=1)


def _attempt(call):
    """None if ``call`` succeeds, else the exception it raised."""
    try:
        call()
    except BaseException as exc:  # reported to the test thread
        return exc
    return None


def test_acks_all_fails_when_isr_is_below_min_insync(three_nodes, wait_for):
    from raystream import errors

    handle, _ = three_nodes
    rs.Admin().create_topic("strict", partitions=1, replication_factor=3, config={"min.insync.replicas": 3})
    state = ray.get(handle.controller.get_partition_state.remote("strict", 0))
    follower = next(b for b in state.replicas if b != state.leader)
    with rs.Producer(acks="all", retries=0, delivery_timeout_ms=20_000, request_timeout_ms=10_000) as producer:
        producer.send("strict", value=b"ok").result(timeout=30)
        ray.kill(ray.get_actor(replica_actor_name(CLUSTER, "strict", 0, follower), namespace=ACTOR_NAMESPACE),
                 no_restart=True)
        wait_for(lambda: follower not in ray.get(handle.controller.get_partition_state.remote("strict", 0)).isr,
                 timeout_s=30, message="ISR shrink below min.insync.replicas")
        with pytest.raises((errors.NotEnoughReplicasError, errors.RequestTimeoutError)) as info:
            producer.send("strict", value=b"must not be acknowledged").result(timeout=30)
        assert isinstance(info.value, errors.NotEnoughReplicasError) or "NotEnoughReplicas" in str(info.value)
    ray.get(handle.controller.start.remote())  # leave the cluster whole for the next test
