"""Per-node Kafka gateways on a 3-node ``ray.cluster_utils.Cluster`` (head + 2 workers, each its own data
dir): Metadata through any gateway names every gateway as a broker and each partition's leader as the
gateway on the leader's node; librdkafka produces and consumes through them; after the node of a leader is
killed, Metadata names the new leader's gateway and the same producer carries on without losing a record."""

from __future__ import annotations

import pytest
import ray
from confluent_helpers import consume_values
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from fault_cluster import multi_node_ray

import raystream as rs
from raystream.actors.gateway_actor import start_gateways
from raystream.gateway.settings import GatewaySettings

pytestmark = pytest.mark.fault
CLUSTER = "gwn"
TOPIC = "orders"
PARTITIONS = 3
SETTINGS = GatewaySettings(port=0, listen_host="127.0.0.1", registration_interval_ms=200,
                           registration_timeout_ms=2000, node_check_interval_ms=500, start_timeout_ms=90_000)


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory):
    with multi_node_ray(tmp_path_factory, 3, "gwn-node") as (cluster, dirs):
        handle = rs.init(cluster=CLUSTER, data_dir=dirs[0])
        yield cluster, handle, dirs
        # A killed node's replicas cannot close their logs: stop must still stop the rest, not fail.
        rs.shutdown(stop_cluster=True)


def leaders(handle) -> dict[int, int]:
    """Partition -> leader broker id, as the controller has it."""
    return {p.partition: p.leader for p in ray.get(handle.controller.get_metadata.remote([TOPIC]))[TOPIC].partitions}


def kafka_view(bootstrap: str) -> tuple[dict[int, tuple[str, int]], dict[int, int]]:
    """(brokers by node id, partition -> leader node id) as librdkafka's Metadata through ``bootstrap``."""
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(TOPIC, timeout=30)
    return ({b.id: (b.host, b.port) for b in meta.brokers.values()},
            {p: part.leader for p, part in meta.topics[TOPIC].partitions.items()})


def produce(producer: Producer, values: list[bytes]) -> None:
    errors = []
    for i, value in enumerate(values):
        producer.produce(TOPIC, value=value, partition=i % PARTITIONS, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(120) == 0 and errors == [None] * len(values), errors


def test_clients_reach_each_leader_gateway_and_follow_a_new_leader(three_nodes, wait_for):
    cluster, handle, dirs = three_nodes
    rs.Admin().create_topic(TOPIC, partitions=PARTITIONS, replication_factor=2, config={"min.insync.replicas": 1})
    entries = start_gateways(CLUSTER, SETTINGS)
    gateways = {e.node_id: (e.host, e.port) for e in entries}
    brokers = handle.brokers()
    assert set(gateways) == set(brokers)  # one gateway per node, each with its node's broker id
    assert {e.ray_node_id for e in entries} == {info.node_id for info in brokers.values()}
    for host, port in gateways.values():  # every gateway gives the same answer: each leader's own gateway
        wait_for(lambda host=host, port=port: kafka_view(f"{host}:{port}") == (gateways, leaders(handle)),
                 timeout_s=30, message=f"gateway {host}:{port} names every gateway and each leader's gateway")

    head = next(b for b, info in brokers.items() if info.data_dir == dirs[0])
    bootstrap = "{}:{}".format(*gateways[head])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    produce(producer, [b"before-%d" % i for i in range(30)])

    victim_partition, victim = next((p, b) for p, b in sorted(leaders(handle).items()) if b != head)
    node = next(n for n in cluster.list_all_nodes()
                if not n.head and n._ray_params.env_vars["RAYSTREAM_DATA_DIR"] == brokers[victim].data_dir)
    cluster.remove_node(node, allow_graceful=False)

    def moved():
        now = leaders(handle)
        if now[victim_partition] in (victim, -1):
            return None
        brokers_seen, leaders_seen = kafka_view(bootstrap)
        return leaders_seen[victim_partition] == now[victim_partition] and now[victim_partition] in brokers_seen \
            and victim not in brokers_seen

    wait_for(moved, timeout_s=90, message=f"Metadata names partition {victim_partition}'s new leader's gateway")
    produce(producer, [b"after-%d" % i for i in range(30)])  # the same client carries on
    del producer
    got = consume_values(bootstrap, TOPIC, PARTITIONS, 60, timeout_s=90)
    assert sorted(got) == sorted([b"before-%d" % i for i in range(30)] + [b"after-%d" % i for i in range(30)])
