"""Broker registration in the controller, without Ray: fake broker agents claim real broker directories.

Several "nodes" share one data directory here, as several Ray nodes on one machine (or on NFS) do: each
must become its own broker with its own log directory, and create_topic must see every one of them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest

from raystream.actors.controller import Controller
from raystream.core.metadata import ClusterMetadata
from raystream.storage.broker_dirs import claim_broker_directory


class FakeAgent:
    """What raystream.actors.broker.BrokerAgent does, minus Ray: the first register claims a directory."""

    def __init__(self, root: Path, node_id: str, hang: bool = False) -> None:
        self.root, self.node_id, self.hang = root, node_id, hang
        self.claimed = None
        self.proposals: list[int] = []
        self.register = self  # agent.register.remote(id)

    def remote(self, proposed_id: int):
        self.proposals.append(proposed_id)
        return self._register(proposed_id)

    async def _register(self, proposed_id: int):
        if self.hang:
            await asyncio.sleep(3600)
        if self.claimed is None:
            self.claimed = claim_broker_directory(self.root / "c", "c", proposed_id, owner=self.node_id)
        return self.claimed.broker_id, str(self.root), str(self.claimed.log_dir)


@pytest.fixture
def controller(tmp_path, monkeypatch):
    controller = Controller("c", str(tmp_path / "controller"))
    controller.agents = {}

    async def no_replicas(*args, **kwargs):
        return None

    monkeypatch.setattr(controller.replicas, "ensure_replicas", no_replicas)
    monkeypatch.setattr(controller.brokers, "agent", lambda node_id: controller.agents[node_id])
    yield controller
    controller._close_logs()
    for agent in controller.agents.values():
        if agent.claimed is not None:
            agent.claimed.release()


def nodes(*ids: str) -> list[dict]:
    return [{"NodeID": i, "Alive": True} for i in ids]


def add_agents(controller, root: Path, *ids: str, hang: bool = False) -> None:
    for i in ids:
        controller.agents[i] = FakeAgent(root, i, hang=hang)


def test_nodes_sharing_one_data_dir_are_distinct_brokers_and_create_topic_sees_all(controller, tmp_path,
                                                                                  monkeypatch):
    shared = tmp_path / "shared"
    add_agents(controller, shared, "a", "b", "c", "d")
    alive = nodes("a")
    monkeypatch.setattr("ray.nodes", lambda: alive)

    async def scenario():
        await controller.brokers.register_nodes(only_new=False, on_change=controller.monitor.brokers_changed)
        assert sorted(controller.metadata.brokers) == [0]
        alive.extend(nodes("b", "c"))  # joined since: create_topic registers them before placing
        topic = await controller.create_topic("t", partitions=2, replication_factor=3)
        assert {len(set(p.replicas)) for p in topic.partitions} == {3}
        alive.extend(nodes("d"))
        await controller.create_partitions("t", 4)

    asyncio.run(scenario())
    brokers = controller.metadata.brokers
    assert sorted(brokers) == [0, 1, 2, 3]
    assert sorted(b.node_id for b in brokers.values()) == ["a", "b", "c", "d"]
    assert len({b.log_dir for b in brokers.values()}) == 4
    assert all(b.data_dir == str(shared) and Path(b.log_dir).parent == shared / "c" for b in brokers.values())
    assert {b for p in controller.metadata.topics["t"].partitions.values() for b in p.replicas} == {0, 1, 2, 3}


def test_create_topic_probes_no_node_when_every_node_is_a_broker(controller, tmp_path, monkeypatch):
    add_agents(controller, tmp_path / "shared", "a", "b")
    monkeypatch.setattr("ray.nodes", lambda: nodes("a", "b"))

    async def scenario():
        await controller.brokers.register_nodes(only_new=False, on_change=controller.monitor.brokers_changed)
        before = {i: list(a.proposals) for i, a in controller.agents.items()}
        await controller.create_topic("t", partitions=1, replication_factor=2)
        assert {i: a.proposals for i, a in controller.agents.items()} == before

    asyncio.run(scenario())


def test_a_node_that_does_not_answer_is_left_out_and_its_proposed_id_is_never_reused(controller, tmp_path,
                                                                                    monkeypatch):
    root = tmp_path / "shared"
    add_agents(controller, root, "a")
    add_agents(controller, root, "slow", hang=True)
    monkeypatch.setattr("ray.nodes", lambda: nodes("a", "slow"))
    controller.brokers.broker_config = type(controller.broker_config).from_dict({"broker.registration.timeout.ms": 200})

    async def scenario():
        await controller.brokers.register_nodes(only_new=False, on_change=controller.monitor.brokers_changed)
        topic = await controller.create_topic("t", partitions=1, replication_factor=1)  # waits 0.2 s, goes on
        assert topic.partitions[0].replicas == (0,)
        slow = controller.agents["slow"]
        slow.hang = False
        add_agents(controller, root, "new")
        monkeypatch.setattr("ray.nodes", lambda: nodes("a", "slow", "new"))
        await controller.brokers.register_nodes(only_new=True, on_change=controller.monitor.brokers_changed)
        return slow.proposals

    proposals = asyncio.run(scenario())
    brokers = controller.metadata.brokers
    by_node = {info.node_id: b for b, info in brokers.items()}
    assert by_node["a"] == 0
    # an agent that did not answer may still claim a directory with the id it was proposed (1 at start,
    # 2 before create_topic), so neither is proposed again
    assert proposals == [1, 2, 3]
    assert by_node == {"a": 0, "slow": 3, "new": 4}


def test_registration_semantics(controller):
    c = controller
    c.brokers.apply_registration(nodes("a", "b"), [(0, "/d", "/d/c/broker-0"), (1, "/d", "/d/c/broker-1")])
    assert {b: (i.node_id, i.alive) for b, i in c.metadata.brokers.items()} == {0: ("a", True), 1: ("b", True)}
    # a partial probe leaves brokers of other nodes as they are; a timeout keeps a known broker alive
    c.brokers.apply_registration(nodes("b"), [TimeoutError()], full=False)
    assert all(i.alive for i in c.metadata.brokers.values())
    # two nodes answer with one broker id (a copied data dir): the node it is recorded on keeps it
    c.brokers.apply_registration(nodes("x", "a"), [(0, "/e", "/e/c/broker-0"), (0, "/d", "/d/c/broker-0")], full=False)
    assert (c.metadata.brokers[0].node_id, c.metadata.brokers[0].log_dir) == ("a", "/d/c/broker-0")
    # a full probe: brokers on nodes no longer alive are dead
    c.brokers.apply_registration(nodes("a"), [(0, "/d", "/d/c/broker-0")])
    assert {b: i.alive for b, i in c.metadata.brokers.items()} == {0: True, 1: False}


def test_broker_records_before_broker_directories_mean_the_cluster_root(tmp_path):
    metadata = ClusterMetadata("c")
    metadata.apply({"t": "broker", "id": 0, "node": "n", "data_dir": "/d"})  # an old record
    metadata.apply(ClusterMetadata.broker_record(1, "m", "/d", "/d/c/broker-1"))
    assert (metadata.brokers[0].data_dir, metadata.brokers[0].log_dir) == ("/d", "/d/c")
    assert metadata.brokers[1].log_dir == "/d/c/broker-1"
    # and the controller replays such a log
    log = tmp_path / "c" / "__controller" / "metadata.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(msgpack.packb({"t": "broker", "id": 4, "node": "n", "data_dir": str(tmp_path)}))
    controller = Controller("c", str(tmp_path))
    try:
        assert controller.metadata.brokers[4].log_dir == str(tmp_path / "c")
    finally:
        controller._close_logs()


def test_a_just_created_replica_counts_as_live_while_it_starts(controller):
    """Starting a replica's process can take longer than a session (Ray starts workers a few at a time)."""
    c = controller
    c.brokers.apply_registration(nodes("a"), [(0, "/d", "/d/c/broker-0")])
    c.store.record(ClusterMetadata.topic_record("t", {}, None, None, {0: (0,)}))
    state = c.metadata.topics["t"].partitions[0]
    key = ("t", 0, 0)
    c.liveness.created(key)
    created = c.liveness.last_heard[key]
    session = c.broker_config.replica_session_timeout_ms / 1000
    assert c.liveness.live_replicas(state, created + 3 * session) == {0}  # never answered: still starting
    startup = c.broker_config.replica_startup_timeout_ms / 1000
    assert c.liveness.live_replicas(state, created + startup + 1) == set()  # never came up

    async def answer(key, timeout_s):
        return ("leader", 0)

    c.monitor._heartbeat = answer
    asyncio.run(c.monitor._heartbeat_into(key, 1.0))  # its first answer ends the grace: a session from then on
    assert c.liveness.live_replicas(state, c.liveness.last_heard[key] + session / 2) == {0}
    assert c.liveness.live_replicas(state, c.liveness.last_heard[key] + 2 * session) == set()
