"""A multi-node Ray cluster set up the plain way (issue 12): every node a broker, at once.

``Cluster(initialize_head=True, head_node_args={"num_cpus": 1})`` and three ``add_node(num_cpus=1)``: no
custom resources, no per-node ``RAYSTREAM_DATA_DIR``, no waiting beyond ``add_node``. All nodes share one
data directory (as several nodes on one machine, or on NFS/EFS, do), so each must claim its own broker
directory (raystream.storage.broker_dirs) and be its own broker; ``create_topic(replication_factor=3)``
right after ``rs.init`` must see all of them, and a node added later must become a broker by itself.
Then a smoke test of failover on that cluster: an ``acks=all`` load, the leader's node removed, every
acknowledged record read back exactly once (``queue_checker``); the removed broker comes back when a new
node claims its directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner
from queue_checker import QueueWorkload, check, read_everything

import raystream as rs
from raystream.cli import main
from raystream.core.names import partition_dir_name
from raystream.protocol import ACTOR_NAMESPACE, replica_actor_name

pytestmark = pytest.mark.fault
CLUSTER = "plain"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """``(cluster, handle, data_dir)``: the plain 4-node cluster with raystream on it."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a previous module's Ray must not leak into this one
        ray.shutdown()
    data_dir = str(tmp_path_factory.mktemp("plain-data"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        handle = rs.init(address="auto", data_dir=data_dir, cluster=CLUSTER)
        yield cluster, handle, data_dir
        rs.shutdown(stop_cluster=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


def alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def pstate(handle, topic, p):
    return ray.get(handle.controller.get_partition_state.remote(topic, p), timeout=30)


def replica_log_dir(topic: str, p: int, broker: int) -> str:
    actor = ray.get_actor(replica_actor_name(CLUSTER, topic, p, broker), namespace=ACTOR_NAMESPACE)
    return ray.get(actor.describe.remote(), timeout=30).log_dir


def test_every_node_is_a_broker_with_its_own_log_directory(plain, wait_for):
    cluster, handle, data_dir = plain
    rs.Admin().create_topic("spread", partitions=4, replication_factor=3)  # right after rs.init
    topic = ray.get(handle.controller.get_metadata.remote(["spread"]), timeout=30)["spread"]
    brokers = handle.brokers()
    assert len(brokers) == 4 and all(info.alive for info in brokers.values())
    assert {info.node_id for info in brokers.values()} == alive_nodes()
    assert all(info.data_dir == data_dir for info in brokers.values())
    assert len({info.log_dir for info in brokers.values()}) == 4
    for state in topic.partitions:
        assert len(set(state.replicas)) == 3
        dirs = [replica_log_dir("spread", state.partition, b) for b in state.replicas]
        assert dirs == [str(Path(brokers[b].log_dir) / partition_dir_name("spread", state.partition))
                        for b in state.replicas]
        assert len(set(dirs)) == 3 and all(Path(d).is_dir() for d in dirs)

    status = CliRunner().invoke(main, ["--cluster", CLUSTER, "--data-dir", data_dir, "status", "--json"],
                                catch_exceptions=False)
    assert status.exit_code == 0, status.output
    listed = json.loads(status.stdout)
    alive = [n for n in listed["nodes"] if n["alive"]]
    assert len(alive) == 4 and all(n["broker"] is not None for n in alive)
    assert sorted(n["broker"] for n in alive) == sorted(brokers)
    assert all(b["alive"] and b["log_dir"] for b in listed["brokers"])

    node = cluster.add_node(num_cpus=1)  # a late joiner becomes a broker without anyone asking
    late = wait_for(lambda: next((b for b, info in handle.brokers().items()
                                  if info.node_id == node.node_id and info.alive), None) is not None
                    and handle.brokers(), timeout_s=60, message="the new node to be a broker")
    assert len(late) == 5 and len({info.log_dir for info in late.values()}) == 5
    assert {info.node_id for info in late.values()} == alive_nodes()


def test_leader_node_removed_under_acks_all_load_loses_nothing(plain, wait_for):
    cluster, handle, _ = plain
    driver_node = ray.get_runtime_context().get_node_id()  # the controller lives here too: never remove it
    rs.Admin().create_topic("smoke", partitions=2, replication_factor=3, config={"min.insync.replicas": 2})
    brokers = handle.brokers()
    p = next(p for p in range(2) if brokers[pstate(handle, "smoke", p).leader].node_id != driver_node)
    with QueueWorkload("smoke", 2) as w:
        h = w.history
        wait_for(lambda: h.acked_since(h.t0) >= 100, timeout_s=60, message="initial acks")
        leader = pstate(handle, "smoke", p).leader
        node_id = brokers[leader].node_id
        node = next(n for n in cluster.list_all_nodes() if n.node_id == node_id)
        h.event(f"remove the node of broker {leader} (leader of smoke-{p})")
        killed = time.monotonic()
        cluster.remove_node(node, allow_graceful=False)
        new = wait_for(lambda: (s := pstate(handle, "smoke", p)).leader not in (-1, leader) and s,
                       timeout_s=60, message="a new leader")
        h.event(f"leader {leader} -> {new.leader} (epoch {new.leader_epoch}, isr {new.isr})")
        wait_for(lambda: sum(1 for pp, _, t in list(h.acked.values()) if pp == p and t > killed) >= 50,
                 timeout_s=60, message="acks=all on the new leader")
        w.stop()
    assert not w.errors, w.errors
    check(h, read_everything("smoke", 2))

    # A new node finds the removed broker's directory unlocked on the shared data dir: the broker returns
    # there with its log, and its replicas rejoin the ISR.
    back = cluster.add_node(num_cpus=1)
    wait_for(lambda: (info := handle.brokers()[leader]).alive and info.node_id == back.node_id, timeout_s=60,
             message=f"broker {leader} back on the new node")
    wait_for(lambda: all(len(pstate(handle, "smoke", q).isr) == 3 for q in range(2)), timeout_s=60,
             message="every ISR back to 3")
