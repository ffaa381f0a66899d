"""aiokafka (an asyncio Kafka client nobody here wrote) against the gateway, in front of the in-process fake
cluster: metadata, produce (acks 0/1/all, idempotent, gzip), consume with manual assignment (``assign``,
seeks, offset look-ups, a long poll woken by a later record) and group offsets committed for assigned
partitions.

Group membership (``subscribe``) needs the real group coordinator: tests/integration/test_gateway_groups.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import OffsetAndMetadata
from fake_transport import FakeTransport

from raystream.protocol import TopicPartition

WAIT_S = 20  # deadline for a consumer to read what it expects
HEADERS = (("trace", b"abc"), ("empty", b""))


class GroupOffsetsFake(FakeTransport):
    """The fake cluster plus the group coordinator's offset calls (``group_call``: commit_offsets,
    fetch_offsets, list_groups) for groups without members, which is all that consumers using ``assign``
    with a group id reach."""

    def __init__(self) -> None:
        super().__init__()
        self.committed: dict[str, dict[TopicPartition, tuple[int, str]]] = {}

    def group_call(self, method: str, *args, timeout_s: float | None = None):
        with self.lock:
            self.calls.append(("group_call", method, *args))
            if method == "commit_offsets":
                group_id, _member_id, _generation_id, offsets = args
                self.committed.setdefault(group_id, {}).update(offsets)
                return None
            if method == "fetch_offsets":
                group_id, partitions = args
                return {tp: committed for tp, committed in self.committed.get(group_id, {}).items()
                        if partitions is None or tp in partitions}
            if method == "list_groups":
                return sorted(self.committed)
            raise NotImplementedError(f"the fake has no group method {method!r}")


@pytest.fixture
def fake():  # the `gateway` fixture (conftest.py) serves this fake
    return GroupOffsetsFake()


def run(coroutine):
    return asyncio.run(coroutine)


async def started(client):
    await client.start()
    return client


async def consume(consumer, n: int) -> list:
    """Records from ``consumer`` (assigned already) until it has read ``n``; fails after WAIT_S."""
    got, deadline = [], time.monotonic() + WAIT_S
    while len(got) < n:
        assert time.monotonic() < deadline, f"read {len(got)} of {n} records in {WAIT_S}s"
        for records in (await consumer.getmany(timeout_ms=500, max_records=n - len(got))).values():
            got.extend(records)
    return got


def record(i: int) -> dict:
    return {"key": b"k%d" % i if i % 2 else None, "value": b"v%d" % i * 20, "headers": list(HEADERS),
            "timestamp_ms": 1_700_000_000_000 + i}


def test_metadata_lists_topics_and_partitions(fake, gateway):
    fake.add_topic("clicks", partitions=3)
    fake.add_topic("views", partitions=1)

    async def main():
        admin = AIOKafkaAdminClient(bootstrap_servers=gateway.bootstrap)
        await admin.start()
        try:
            return sorted(await admin.list_topics()), await admin.describe_topics(["clicks"])
        finally:
            await admin.close()

    names, (clicks,) = run(main())
    assert names == ["clicks", "views"]
    assert clicks["error_code"] == 0 and clicks["topic"] == "clicks"
    assert sorted((p["partition"], p["leader"]) for p in clicks["partitions"]) == [(0, 0), (1, 0), (2, 0)]


@pytest.mark.parametrize("options,acks", [
    ({"acks": 0}, 0),
    ({"acks": 1}, 1),
    ({"acks": "all"}, -1),
    ({"enable_idempotence": True}, -1),  # aiokafka: acks=all with an id from InitProducerId, sequences
    ({"acks": 1, "compression_type": "gzip"}, 1),
    ({"enable_idempotence": True, "compression_type": "gzip"}, -1),
], ids=["acks0", "acks1", "acks-all", "idempotent", "gzip", "idempotent-gzip"])
def test_produced_records_keep_keys_values_headers_and_timestamps(fake, gateway, options, acks):
    fake.add_topic("clicks", partitions=1)
    tp = KafkaTopicPartition("clicks", 0)

    async def main():
        producer = await started(AIOKafkaProducer(bootstrap_servers=gateway.bootstrap, linger_ms=5, **options))
        try:
            futures = [await producer.send("clicks", partition=0, **record(i)) for i in range(50)]
            sent = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=gateway.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([tp])
            return sent, await consume(consumer, 50)
        finally:
            await consumer.stop()

    sent, got = run(main())
    if acks == 0:
        assert sent == [None] * 50  # aiokafka resolves acks=0 sends without metadata
    else:
        assert [m.offset for m in sent] == list(range(50))
        assert {m.timestamp_type for m in sent} == {0}  # CreateTime: the gateway answered log_append_time -1
    assert [(m.offset, m.key, m.value, m.headers, m.timestamp, m.timestamp_type) for m in got] == [
        (i, record(i)["key"], record(i)["value"], HEADERS, record(i)["timestamp_ms"], 0) for i in range(50)]
    stored = fake.records(TopicPartition("clicks", 0))  # what raystream's own consumers read
    assert stored.column("key").to_pylist() == [record(i)["key"] for i in range(50)]
    assert stored.column("value").to_pylist() == [record(i)["value"] for i in range(50)]

    produced = [c for c in fake.calls if c[0] == "produce"]
    assert {c[4] for c in produced} == {acks}
    assert sum(c[3] for c in produced) == 50
    if options.get("enable_idempotence"):
        assert fake.count("init_producer_id") == 1
        assert {c[6] for c in produced} == {1000}  # the id raystream handed out (the fake's first)
        assert [c[8] for c in produced] == [sum(c[3] for c in produced[:i]) for i in range(len(produced))]
    else:
        assert fake.count("init_producer_id") == 0
        assert {c[6] for c in produced} == {-1}


def test_an_assigned_consumer_reads_each_partition_seeks_and_looks_up_offsets(fake, gateway):
    fake.add_topic("clicks", partitions=3)
    tps = [KafkaTopicPartition("clicks", p) for p in range(3)]

    async def main():
        producer = await started(AIOKafkaProducer(bootstrap_servers=gateway.bootstrap, acks="all"))
        try:
            batch = [await producer.send("clicks", value=b"p%d-%d" % (i % 3, i // 3), partition=i % 3,
                                         timestamp_ms=1_000 + 10 * i) for i in range(30)]
            await asyncio.gather(*batch)
        finally:
            await producer.stop()
        consumer = await started(AIOKafkaConsumer(bootstrap_servers=gateway.bootstrap, enable_auto_commit=False,
                                                  auto_offset_reset="earliest"))
        try:
            consumer.assign(tps)
            everything = await consume(consumer, 30)
            positions = [await consumer.position(tp) for tp in tps]
            consumer.seek(tps[1], 7)
            after_seek = await consume(consumer, 3)
            await consumer.seek_to_beginning(tps[2])
            from_beginning = await consume(consumer, 10)
            beginning = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
            by_time = await consumer.offsets_for_times({tps[0]: 1_035, tps[1]: 1_000_000})
            return everything, positions, after_seek, from_beginning, beginning, end, by_time
        finally:
            await consumer.stop()

    everything, positions, after_seek, from_beginning, beginning, end, by_time = run(main())
    for p in range(3):
        assert [(m.offset, m.value, m.timestamp) for m in everything if m.partition == p] == [
            (j, b"p%d-%d" % (p, j), 1_000 + 10 * (3 * j + p)) for j in range(10)]
    assert positions == [10, 10, 10]
    assert [(m.partition, m.offset, m.value) for m in after_seek] == [(1, j, b"p1-%d" % j) for j in (7, 8, 9)]
    assert [(m.partition, m.offset) for m in from_beginning] == [(2, j) for j in range(10)]
    assert beginning == dict.fromkeys(tps, 0)
    assert end == dict.fromkeys(tps, 10)
    assert by_time[tps[0]].offset == 2  # the first record of partition 0 at or after 1035 ms: 1060 ms, offset 2
    assert by_time[tps[1]] is None  # nothing that late


def test_a_consumer_waiting_at_the_end_gets_a_record_produced_later(fake, gateway):
    fake.add_topic("clicks", partitions=1)
    tp = KafkaTopicPartition("clicks", 0)

    async def main():
        consumer = await started(AIOKafkaConsumer(bootstrap_servers=gateway.bootstrap, enable_auto_commit=False,
                                                  auto_offset_reset="latest", fetch_max_wait_ms=5000))
        producer = await started(AIOKafkaProducer(bootstrap_servers=gateway.bootstrap))
        try:
            consumer.assign([tp])
            assert await consumer.position(tp) == 0  # "latest" of an empty partition
            waiting = asyncio.ensure_future(consume(consumer, 1))
            await producer.send_and_wait("clicks", b"late", partition=0)
            return await waiting
        finally:
            await producer.stop()
            await consumer.stop()

    assert [(m.offset, m.value) for m in run(main())] == [(0, b"late")]


def test_group_offsets_committed_for_assigned_partitions(fake, gateway):
    fake.add_topic("clicks", partitions=2)
    p0, p1 = KafkaTopicPartition("clicks", 0), KafkaTopicPartition("clicks", 1)

    def reader(group_id, **options):
        return started(AIOKafkaConsumer(bootstrap_servers=gateway.bootstrap, group_id=group_id,
                                        auto_offset_reset="earliest", **options))

    async def main():
        producer = await started(AIOKafkaProducer(bootstrap_servers=gateway.bootstrap))
        try:
            for i in range(10):
                await producer.send("clicks", b"r%d" % i, partition=0)
                await producer.send("clicks", b"s%d" % i, partition=1)
            await producer.flush()
        finally:
            await producer.stop()
        first = await reader("readers", enable_auto_commit=False)
        try:
            first.assign([p0, p1])
            assert await first.committed(p0) is None  # nothing committed yet
            await consume(first, 20)
            await first.commit({p0: 4, p1: OffsetAndMetadata(7, "half-way")})
            committed = (await first.committed(p0), await first.committed(p1))
        finally:
            await first.stop()
        second = await reader("readers", enable_auto_commit=False)  # resumes at the group's offsets
        try:
            second.assign([p0, p1])
            resumed = await consume(second, 9)
        finally:
            await second.stop()
        auto = await reader("auto", enable_auto_commit=True)  # commits what it consumed when it stops
        try:
            auto.assign([p0])
            await consume(auto, 10)
        finally:
            await auto.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=gateway.bootstrap)
        await admin.start()
        try:
            groups = await admin.list_consumer_groups()
        finally:
            await admin.close()
        return committed, resumed, groups

    committed, resumed, groups = run(main())
    assert committed == (4, 7)
    assert sorted((m.partition, m.value) for m in resumed) == sorted(
        [(0, b"r%d" % i) for i in range(4, 10)] + [(1, b"s%d" % i) for i in range(7, 10)])
    tp0, tp1 = TopicPartition("clicks", 0), TopicPartition("clicks", 1)
    assert fake.committed == {"readers": {tp0: (4, ""), tp1: (7, "half-way")}, "auto": {tp0: (10, "")}}
    # outside any generation (-1) and without a member id, as Kafka clients commit for assigned partitions
    commits = [c for c in fake.calls if c[:2] == ("group_call", "commit_offsets")]
    assert {(c[2], c[3], c[4]) for c in commits} == {("readers", "", -1), ("auto", "", -1)}
    assert sorted(g[0] for g in groups) == ["auto", "readers"]
