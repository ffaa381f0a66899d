"""Kafka clients in raystream's consumer groups through the gateway: kafka-python, confluent-kafka, aiokafka
and a raystream Consumer share one group (the coordinator assigns with the protocol they have in common), and a
group of Kafka clients with their own assignor gets the leader's assignment, as in Kafka."""

from __future__ import annotations

import asyncio
import threading
import time

import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Consumer as ConfluentConsumer
from kafka import KafkaConsumer
from kafka.coordinator.assignors.abstract import (
    AbstractPartitionAssignor,
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)

import raystream as rs

pytestmark = pytest.mark.integration
PARTITIONS = 6


def _produce(topic: str, count: int) -> set[bytes]:
    rs.Admin().create_topic(topic, partitions=PARTITIONS, replication_factor=1)
    values = [b"v%d" % i for i in range(count)]
    with rs.Producer(acks="all") as producer:
        for p in range(PARTITIONS):
            producer.send_batch(topic, pa.table({"value": values[p::PARTITIONS]}), partition=p).result(30)
    return set(values)




class _Polling:
    """A Kafka consumer polled on a thread of its own (as an application would), recording what it reads
    and its assignment after each poll (Kafka consumers are not thread-safe: only that thread calls them)."""

    def __init__(self, poll, assignment, close, commit, position) -> None:
        self.values: list[bytes] = []
        self.errors: list[BaseException] = []
        self.owned: frozenset[tuple[str, int]] = frozenset()
        self.positions: dict[tuple[str, int], int] = {}  # of the owned partitions, after the last poll
        self._position = position
        self._poll, self._assignment, self._close, self._commit = poll, assignment, close, commit
        self.commit_wanted, self.committed = threading.Event(), threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.values.extend(self._poll())
                assigned = list(self._assignment())
                self.positions = {(tp.topic, tp.partition): self._position(tp) for tp in assigned}
                self.owned = frozenset(self.positions)
                if self.commit_wanted.is_set() and not self.committed.is_set():
                    self._commit()  # what this member has read, synchronously
                    self.committed.set()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._close()


def _kafka_python(gateway, group: str, topic: str, **options) -> _Polling:
    consumer = KafkaConsumer(topic, bootstrap_servers=gateway.bootstrap, group_id=group, client_id="kafka-python",
                             auto_offset_reset="earliest", session_timeout_ms=10_000, heartbeat_interval_ms=500,
                             enable_auto_commit=False, **options)
    return _Polling(lambda: [m.value for ms in consumer.poll(timeout_ms=200).values() for m in ms],
                    consumer.assignment, consumer.close, consumer.commit, consumer.position)


def _librdkafka(gateway, group: str, topic: str) -> _Polling:
    consumer = ConfluentConsumer({"bootstrap.servers": gateway.bootstrap, "group.id": group,
                                  "client.id": "librdkafka", "auto.offset.reset": "earliest",
                                  "session.timeout.ms": 10_000, "heartbeat.interval.ms": 500,
                                  "enable.auto.commit": False})
    consumer.subscribe([topic])

    def poll() -> list[bytes]:
        message = consumer.poll(0.2)
        if message is None:
            return []
        if message.error() is not None:
            raise RuntimeError(str(message.error()))
        return [message.value()]

    return _Polling(poll, consumer.assignment, consumer.close, lambda: consumer.commit(asynchronous=False),
                    lambda tp: consumer.position([tp])[0].offset)


class _AsyncPolling(_Polling):
    """aiokafka's consumer, run on an event loop in a thread of its own."""

    def __init__(self, gateway, group: str, topic: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.consumer = self.loop.run_until_complete(self._start(gateway, group, topic))
        super().__init__(self._poll_once, self.consumer.assignment,
                         lambda: self.loop.run_until_complete(self.consumer.stop()),
                         lambda: self.loop.run_until_complete(self.consumer.commit()),
                         lambda tp: self.loop.run_until_complete(self.consumer.position(tp)))

    @staticmethod
    async def _start(gateway, group: str, topic: str) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=gateway.bootstrap, group_id=group,
                                    client_id="aiokafka", auto_offset_reset="earliest",
                                    session_timeout_ms=10_000, heartbeat_interval_ms=500,
                                    enable_auto_commit=False)
        await consumer.start()
        return consumer

    def _poll_once(self) -> list[bytes]:
        batches = self.loop.run_until_complete(self.consumer.getmany(timeout_ms=200))
        return [m.value for ms in batches.values() for m in ms]

    def stop(self) -> None:
        super().stop()
        self.loop.close()


def test_kafka_clients_and_a_raystream_consumer_share_one_group(gateway, topic_name, wait_for):
    produced = _produce(topic_name, 120)
    group = f"mixed-{topic_name}"
    members = [_kafka_python(gateway, group, topic_name), _librdkafka(gateway, group, topic_name),
               _AsyncPolling(gateway, group, topic_name)]
    ours_values: list[bytes] = []
    try:
        with rs.Consumer(group_id=group, client_id="raystream", auto_offset_reset="earliest",
                         session_timeout_ms=10_000, partition_assignment_strategy=["range", "roundrobin"],
                         enable_auto_commit=False) as ours:
            ours.subscribe([topic_name])

            def settled() -> bool:
                ours_values.extend(r.value for r in ours.poll(timeout=0.2))
                ours_positions = {(tp.topic, tp.partition): ours.position(tp) for tp in ours.assignment()}
                everyone = [m.positions for m in members] + [ours_positions]
                every = [tp for positions in everyone for tp in positions]
                # Each member owns something, the partitions are split, and each is at the end of its own.
                return (all(everyone) and len(every) == PARTITIONS and len(set(every)) == PARTITIONS
                        and all(o == 120 // PARTITIONS for positions in everyone for o in positions.values())
                        and produced <= set(ours_values) | {v for m in members for v in m.values})

            wait_for(settled, timeout_s=90, message="four kinds of member split the partitions and read it all")
            assert [m.errors for m in members] == [[], [], []]
            described = rs.Admin().describe_group(group)
            assert described.state == "Stable"
            assert sorted(m["client_id"] for m in described.members) == [
                "aiokafka", "kafka-python", "librdkafka", "raystream"]
            # roundrobin, the one assignor the four have in common (aiokafka's only default).
            assert sorted(len(m["assignment"]) for m in described.members) == [1, 1, 2, 2]
            for member in members:  # each commits what it read, on its own thread
                member.commit_wanted.set()
            ours.commit()
            wait_for(lambda: all(m.committed.is_set() for m in members), timeout_s=30, message="commits")
            assert rs.Admin().describe_group(group).offsets == {
                rs.TopicPartition(topic_name, p): 120 // PARTITIONS for p in range(PARTITIONS)}
    finally:
        for member in members:
            member.stop()


class _AllToFirstAssignor(AbstractPartitionAssignor):
    """A client-side assignor raystream does not know: every partition to the member whose id sorts first."""

    name = "all-to-first"
    version = 0

    @classmethod
    def assign(cls, cluster, members):
        ids = sorted(m.member_id for m in members)
        topics = sorted({t for m in members for t in m.metadata.topics})
        everything = [(t, sorted(cluster.partitions_for_topic(t))) for t in topics]
        return {member_id: ConsumerProtocolAssignment(cls.version, everything if member_id == ids[0] else [], b"")
                for member_id in ids}

    @classmethod
    def metadata(cls, topics):
        return ConsumerProtocolSubscription(cls.version, list(topics), b"")

    @classmethod
    def on_assignment(cls, assignment, generation):
        pass


def test_a_kafka_leader_assigns_with_its_own_assignor(gateway, topic_name, wait_for):
    produced = _produce(topic_name, 60)
    group = f"custom-{topic_name}"
    members = [_kafka_python(gateway, group, topic_name, partition_assignment_strategy=[_AllToFirstAssignor])
               for _ in range(2)]
    try:
        def settled() -> bool:
            owned = sorted((m.owned for m in members), key=len)
            return (owned[0] == set() and len(owned[1]) == PARTITIONS
                    and produced <= {v for m in members for v in m.values})

        wait_for(settled, timeout_s=90, message="the leader's assignment: everything to one member")
        described = rs.Admin().describe_group(group)
        assert described.state == "Stable" and len(described.members) == 2
        assert sorted(len(m["assignment"]) for m in described.members) == [0, PARTITIONS]
        with rs.Consumer(group_id=group, session_timeout_ms=10_000) as ours:  # it knows no such assignor
            ours.subscribe([topic_name])
            deadline = time.monotonic() + 30
            with pytest.raises(rs.errors.InconsistentGroupProtocolError):
                while time.monotonic() < deadline:
                    ours.poll(timeout=0.2)
    finally:
        for member in members:
            member.stop()
