"""The per-node Kafka gateway as a Ray actor on the shared local Ray (one node): started by its supervisor,
named after its node, its node's broker id as Kafka node id; confluent-kafka produces and consumes through
it; a gateway killed by Ray is restarted and announces itself again."""

from __future__ import annotations

import pytest
import ray
from confluent_helpers import consume_values, produce_values
from confluent_kafka.admin import AdminClient

import raystream as rs
from raystream.actors.gateway_actor import gateway_name, start_gateways, stop_gateways, supervisor_name
from raystream.gateway.settings import GatewaySettings
from raystream.protocol import ACTOR_NAMESPACE

pytestmark = pytest.mark.integration
SETTINGS = GatewaySettings(port=0, listen_host="127.0.0.1", registration_interval_ms=200,
                           registration_timeout_ms=2000, node_check_interval_ms=500, start_timeout_ms=60_000)


@pytest.fixture
def gateways(cluster):
    entries = start_gateways(cluster.cluster, SETTINGS)
    yield entries
    stop_gateways(cluster.cluster)


def test_confluent_kafka_produces_and_consumes_through_the_gateway_actor(cluster, gateways, topic_name):
    node = ray.get_runtime_context().get_node_id()
    broker = next(b for b, info in cluster.brokers().items() if info.node_id == node and info.alive)
    [entry] = gateways
    assert (entry.ray_node_id, entry.node_id, entry.host) == (node, broker, "127.0.0.1")
    ray.get_actor(gateway_name(cluster.cluster, node), namespace=ACTOR_NAMESPACE)  # named after its node
    bootstrap = f"{entry.host}:{entry.port}"
    rs.Admin().create_topic(topic_name, partitions=2, replication_factor=1)

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic_name, timeout=30)
    assert {b.id: (b.host, b.port) for b in meta.brokers.values()} == {broker: (entry.host, entry.port)}
    assert {p.leader for p in meta.topics[topic_name].partitions.values()} == {broker}

    produce_values(bootstrap, topic_name, [b"v%d" % i for i in range(50)], partitions=2, **{"enable.idempotence": True})
    assert sorted(consume_values(bootstrap, topic_name, 2, 50)) == sorted(b"v%d" % i for i in range(50))


def test_a_killed_gateway_is_restarted_and_serves_again(cluster, gateways, topic_name, wait_for):
    [entry] = gateways
    handle = ray.get_actor(gateway_name(cluster.cluster, entry.ray_node_id), namespace=ACTOR_NAMESPACE)
    before = ray.get(handle.status.remote(), timeout=30)["pid"]
    ray.kill(handle, no_restart=False)

    def serving_again():
        status = ray.get(handle.status.remote(), timeout=10)
        if status["pid"] == before or status["entry"] is None:
            return None
        again = status["entry"]
        AdminClient({"bootstrap.servers": f"{again.host}:{again.port}"}).list_topics(topic_name, timeout=5)
        return again

    again = wait_for(serving_again, timeout_s=90, message="the restarted gateway serves again")
    assert (again.node_id, again.ray_node_id) == (entry.node_id, entry.ray_node_id)
    supervisor = ray.get_actor(supervisor_name(cluster.cluster), namespace=ACTOR_NAMESPACE)
    wait_for(lambda: ray.get(supervisor.entries.remote(), timeout=10) == [again], timeout_s=30,
             message="the supervisor's directory holds the restarted gateway only")
