"""The controller's metadata as a state machine over records (Kafka's KRaft metadata records, simplified).

Every change is a record — a plain dict that msgpack can store — applied by :meth:`ClusterMetadata.apply`
and built by the ``*_record`` constructors below (the only place a record's shape is written down besides
``apply``). The controller appends each record to its metadata log (:mod:`raystream.storage.metadata_log`)
*before* applying it, and replays the log on restart, so the state after a restart equals the state before
the crash.

Record types::

    broker      {id, node, data_dir, log_dir}        a broker (stable id) now lives on a Ray node; its
                                                      partition logs are in ``log_dir`` (a record written
                                                      before broker directories has no ``log_dir``: the
                                                      logs are in ``<data_dir>/<cluster>``)
    topic       {name, config, schema, key_column, assignment: {partition: [broker ids]}}
    partitions  {name, assignment}                    partitions added to a topic
    partition   {topic, p, leader, epoch, isr, pe[, replicas]}
                                                      leader / ISR / replica set change (pe: partition epoch)
    config      {name, config}                        topic config replaced
    schema      {name, schema, schema_id}             an Arrow-native topic's schema evolved
    delete      {name}                                topic deleted
    producer_ids {next}                               producer ids below ``next`` are handed out (or reserved)
    replay_producer {id, pid, at}                     the replay producer ``id`` is producer id ``pid``
                                                      (recorded at ``at`` ms; forgotten a day later)

Pure and deterministic; not thread-safe (the controller actor serialises access).
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePath
from typing import Any

from raystream.core.producer_state import DEFAULT_PRODUCER_ID_EXPIRATION_MS
from raystream.protocol import BrokerInfo, PartitionState, TopicMetadata


@dataclasses.dataclass
class TopicState:
    name: str
    config: dict[str, Any]
    schema: bytes | None
    key_column: str | None
    partitions: dict[int, PartitionState]
    schema_id: int = 0  # bumped by every schema evolution
    #: The id of the create_topic call that made it: a retry of that call (Ray resends a call to a restarted
    #: controller) finds its own topic rather than TopicAlreadyExistsError.
    creation_id: str | None = None

    def to_metadata(self) -> TopicMetadata:
        parts = tuple(self.partitions[p] for p in sorted(self.partitions))
        return TopicMetadata(self.name, parts, dict(self.config), self.schema, self.key_column)


class ClusterMetadata:
    def __init__(self, cluster: str = "") -> None:
        #: The cluster's name: a broker record without a log dir (the layout before broker directories)
        #: means ``<data_dir>/<cluster>``.
        self.cluster = cluster
        self.brokers: dict[int, BrokerInfo] = {}
        self.topics: dict[str, TopicState] = {}
        #: Every idempotent-producer id below this was handed out or reserved: never hand it out again.
        self.next_producer_id = 0
        #: Replay producers (``Producer(replay_id=...)``): replay id -> (producer id, recorded at ms).
        self.replay_producers: dict[str, tuple[int, int]] = {}

    @property
    def next_broker_id(self) -> int:
        return max(self.brokers, default=-1) + 1

    def apply(self, record: dict[str, Any]) -> None:
        kind = record["t"]
        if kind == "broker":
            log_dir = record.get("log_dir") or str(PurePath(record["data_dir"]) / self.cluster)
            self.brokers[record["id"]] = BrokerInfo(record["id"], record["node"], record["data_dir"], log_dir)
        elif kind == "topic":
            topic = TopicState(record["name"], dict(record["config"]), record.get("schema"),
                               record.get("key_column"), {}, creation_id=record.get("creation_id"))
            self.topics[topic.name] = topic
            self._add_partitions(topic, record["assignment"])
        elif kind == "partitions":
            self._add_partitions(self.topics[record["name"]], record["assignment"])
        elif kind == "partition":
            topic = self.topics[record["topic"]]
            old = topic.partitions[record["p"]]
            topic.partitions[record["p"]] = dataclasses.replace(
                old, leader=record["leader"], leader_epoch=record["epoch"], isr=tuple(record["isr"]),
                partition_epoch=record["pe"], replicas=tuple(record.get("replicas", old.replicas)))
        elif kind == "config":
            self.topics[record["name"]].config = dict(record["config"])
        elif kind == "schema":
            topic = self.topics[record["name"]]
            topic.schema, topic.schema_id = record["schema"], record["schema_id"]
        elif kind == "delete":
            self.topics.pop(record["name"], None)
        elif kind == "producer_ids":
            self.next_producer_id = max(self.next_producer_id, int(record["next"]))
        elif kind == "replay_producer":
            at = int(record["at"])
            # Brokers forget an idle producer id after producer.id.expiration.ms (a day by default): a
            # replay id older than that could no longer deduplicate anything, so it is dropped too.
            horizon = at - DEFAULT_PRODUCER_ID_EXPIRATION_MS
            for stale in [k for k, (_, when) in self.replay_producers.items() if when < horizon]:
                del self.replay_producers[stale]
            self.replay_producers[record["id"]] = (int(record["pid"]), at)
        else:
            raise AssertionError(f"unknown metadata record type {kind!r}")

    @staticmethod
    def _add_partitions(topic: TopicState, assignment: dict[Any, list[int]]) -> None:
        for p, replicas in assignment.items():
            p = int(p)
            topic.partitions[p] = PartitionState(topic.name, p, tuple(replicas), replicas[0], 0,
                                                 tuple(replicas), 0)

    # -- record constructors (what the controller appends) ------------------------------------------------
    @staticmethod
    def broker_record(broker_id: int, node_id: str, data_dir: str, log_dir: str) -> dict[str, Any]:
        return {"t": "broker", "id": broker_id, "node": node_id, "data_dir": data_dir, "log_dir": log_dir}

    @staticmethod
    def topic_record(name: str, config: dict[str, Any], schema: bytes | None, key_column: str | None,
                     assignment: dict[int, tuple[int, ...]], creation_id: str | None = None) -> dict[str, Any]:
        return {"t": "topic", "name": name, "config": config, "schema": schema, "key_column": key_column,
                "assignment": {p: list(r) for p, r in assignment.items()}, "creation_id": creation_id}

    @staticmethod
    def partition_record(state: PartitionState, leader: int, epoch: int, isr: tuple[int, ...],
                         replicas: tuple[int, ...] | None = None) -> dict[str, Any]:
        record = {"t": "partition", "topic": state.topic, "p": state.partition, "leader": leader, "epoch": epoch,
                  "isr": list(isr), "pe": state.partition_epoch + 1}
        if replicas is not None:
            record["replicas"] = list(replicas)
        return record

    @staticmethod
    def partitions_record(name: str, assignment: dict[int, tuple[int, ...]]) -> dict[str, Any]:
        return {"t": "partitions", "name": name, "assignment": {p: list(r) for p, r in assignment.items()}}

    @staticmethod
    def config_record(name: str, config: dict[str, Any]) -> dict[str, Any]:
        return {"t": "config", "name": name, "config": config}

    @staticmethod
    def schema_record(name: str, schema: bytes, schema_id: int) -> dict[str, Any]:
        return {"t": "schema", "name": name, "schema": schema, "schema_id": schema_id}

    @staticmethod
    def delete_record(name: str) -> dict[str, Any]:
        return {"t": "delete", "name": name}

    @staticmethod
    def producer_ids_record(next_id: int) -> dict[str, Any]:
        return {"t": "producer_ids", "next": next_id}

    @staticmethod
    def replay_producer_record(replay_id: str, producer_id: int, at_ms: int) -> dict[str, Any]:
        return {"t": "replay_producer", "id": replay_id, "pid": producer_id, "at": at_ms}
