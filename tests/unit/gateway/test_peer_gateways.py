"""Gateways that know each other (``peers``), as the per-node gateways of ``raystream start`` do, in front of
the in-process fake cluster (brokers 0, 1, 2; partition p led by broker p % 3): Metadata names every gateway
as a broker and each partition's leader as its leader's gateway, a broker without a gateway as the gateway
answering, and librdkafka produces each partition through its leader's gateway."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from confluent_helpers import consume_values, produce_values
from confluent_kafka.admin import AdminClient
from gateway_runner import RunningGateway
from kafka import KafkaAdminClient

from raystream.gateway import apis, group_apis
from raystream.gateway.framing import SOCKET_REQUEST_MAX_BYTES
from raystream.gateway.settings import SOCKET_REQUEST_MAX_BYTES as SETTINGS_DEFAULT
from raystream.protocol import TopicPartition as RaystreamTopicPartition


def peer_gateways(fake):
    """Gateways for brokers 0 and 1 (broker 2 has none), each knowing both addresses."""
    directory: dict[int, tuple[str, int]] = {}
    gateways = {node: RunningGateway(fake, node_id=node, peers=lambda: directory) for node in (0, 1)}
    directory.update({node: ("127.0.0.1", g.gateway.port) for node, g in gateways.items()})
    return gateways, directory


def test_metadata_names_each_partitions_leader_gateway_and_librdkafka_follows_it(fake):
    fake.add_topic("clicks", partitions=3)
    gateways, directory = peer_gateways(fake)
    try:
        for bootstrap in (gateways[1].bootstrap, gateways[0].bootstrap):  # the same answer from either
            meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics("clicks", timeout=10)
            assert {b.id: (b.host, b.port) for b in meta.brokers.values()} == directory
            parts = meta.topics["clicks"].partitions
            assert [parts[p].leader for p in range(2)] == [0, 1]
            assert parts[2].leader in (0, 1)  # broker 2 has no gateway: the one that answered names itself
            assert sorted(parts[0].replicas) == [0, 1] and sorted(parts[0].isrs) == [0, 1]
        admin = KafkaAdminClient(bootstrap_servers=gateways[1].bootstrap)
        cluster = admin.describe_cluster()
        admin.close()
        assert cluster["controller_id"] == 0 and {b["broker_id"] for b in cluster["brokers"]} == {0, 1}

        produce_values(gateways[1].bootstrap, "clicks", [b"v%d" % i for i in range(30)], partitions=3)
        for p in range(3):
            assert fake.values(RaystreamTopicPartition("clicks", p)) == [b"v%d" % i for i in range(p, 30, 3)]
        got = consume_values(gateways[0].bootstrap, "clicks", 3, 30, timeout_s=30)
        assert sorted(got) == sorted(b"v%d" % i for i in range(30))
    finally:
        for running in gateways.values():
            running.close()


def test_every_gateway_names_the_lowest_one_as_coordinator_and_itself_for_brokers_without_one(fake):
    fake.add_topic("clicks", partitions=3)
    gateways, directory = peer_gateways(fake)
    try:
        for node, running in gateways.items():
            request = SimpleNamespace(body=SimpleNamespace(topics=[SimpleNamespace(name="clicks")]))
            answer = asyncio.run(apis.metadata(request, running.gateway.context()))
            assert [b["node_id"] for b in answer["brokers"]] == [0, 1] and answer["controller_id"] == 0
            partitions = answer["topics"][0]["partitions"]
            assert [p["leader_id"] for p in partitions] == [0, 1, node]
            assert [p["replica_nodes"] for p in partitions] == [[0, 1]] * 3  # brokers 0, 1, 2 (as node)
            for key_type in (0, 1):  # a group, a transactional id
                request = SimpleNamespace(body=SimpleNamespace(key_type=key_type, key="k"))
                answer = asyncio.run(group_apis.find_coordinator(request, running.gateway.context()))
                assert (answer["node_id"], answer["host"], answer["port"]) == (0, *directory[0])
    finally:
        for running in gateways.values():
            running.close()


def test_the_settings_default_is_the_framings():
    assert SETTINGS_DEFAULT == SOCKET_REQUEST_MAX_BYTES
