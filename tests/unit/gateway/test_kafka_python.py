"""kafka-python (a Kafka client nobody here wrote) against the gateway, in front of the in-process fake
cluster: metadata, produce (acks 0/1/all, gzip), fetch, list offsets, and bad input on the wire."""

from __future__ import annotations

import socket
import struct

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTopicPartition

from raystream.protocol import TopicPartition

TP = KafkaTopicPartition("clicks", 0)


def producer(gateway, **options):
    return KafkaProducer(bootstrap_servers=gateway.bootstrap, **options)


def consume_all(gateway, n, tp=TP):
    consumer = KafkaConsumer(bootstrap_servers=gateway.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000, enable_auto_commit=False)
    consumer.assign([tp])
    out = []
    for message in consumer:
        out.append(message)
        if len(out) >= n:
            break
    consumer.close()
    return out


def test_metadata_lists_topics_and_partitions(fake, gateway):
    fake.add_topic("clicks", partitions=3)
    fake.add_topic("views", partitions=1)
    admin = KafkaAdminClient(bootstrap_servers=gateway.bootstrap)
    assert sorted(admin.list_topics()) == ["clicks", "views"]
    (described,) = admin.describe_topics(["clicks"])
    assert [p["partition_index"] for p in described["partitions"]] == [0, 1, 2]
    assert all(p["leader_id"] == 0 for p in described["partitions"])
    admin.close()


@pytest.mark.parametrize("acks,compression", [(1, None), ("all", None), ("all", "gzip"), (0, None)])
def test_produced_records_keep_keys_values_headers_and_timestamps(fake, gateway, acks, compression):
    fake.add_topic("clicks", partitions=1)
    with_headers = [("trace", b"abc"), ("empty", b"")]
    p = producer(gateway, acks=acks, compression_type=compression, linger_ms=5)
    futures = [p.send("clicks", key=b"k%d" % i if i % 2 else None, value=b"v%d" % i * 20, headers=with_headers,
                      partition=0, timestamp_ms=1_700_000_000_000 + i) for i in range(50)]
    p.flush(10)
    if acks != 0:
        assert [f.get(5).offset for f in futures] == list(range(50))
    p.close()
    got = consume_all(gateway, 50)
    assert [(m.offset, m.key, m.value, m.headers, m.timestamp) for m in got] == [
        (i, b"k%d" % i if i % 2 else None, b"v%d" % i * 20, with_headers, 1_700_000_000_000 + i)
        for i in range(50)]
    stored = fake.records(TopicPartition("clicks", 0))  # what raystream's own consumers read
    assert stored.column("value").to_pylist()[:2] == [b"v0" * 20, b"v1" * 20]


def test_list_offsets_earliest_latest_and_by_time(fake, gateway):
    fake.add_topic("clicks", partitions=1)
    p = producer(gateway, acks=1)
    for i in range(10):
        p.send("clicks", value=b"x", partition=0, timestamp_ms=1_000 + 10 * i)
    p.flush(10)
    consumer = KafkaConsumer(bootstrap_servers=gateway.bootstrap)
    assert consumer.beginning_offsets([TP]) == {TP: 0}
    assert consumer.end_offsets([TP]) == {TP: 10}
    assert consumer.offsets_for_times({TP: 1_035})[TP].offset == 4
    consumer.close()


def test_unknown_topic_gets_kafkas_error(fake, gateway):
    fake.add_topic("clicks", partitions=1)
    p = producer(gateway, acks=1, max_block_ms=2000)
    with pytest.raises(Exception, match="(?i)unknown|not available|timeout|Failed to update metadata"):
        p.send("nope", value=b"x").get(5)
    p.close()


def _closed_by_server(gateway, payload: bytes) -> bool:
    """Send ``payload`` on a new connection; True once the gateway closes it (within 5 s)."""
    with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=5) as s:
        s.sendall(payload)
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True


@pytest.mark.parametrize("payload", [
    struct.pack(">i", 200_000_000),                             # over socket.request.max.bytes
    struct.pack(">i", -5),                                      # negative size
    struct.pack(">i", 12) + struct.pack(">hhi", 999, 0, 1) + b"\0\xff\xff\0",  # unknown API key
    struct.pack(">i", 12) + struct.pack(">hhi", 3, 12, 1) + b"\xff" * 4,       # garbage Metadata body
], ids=["oversized", "negative", "unknown-api", "garbage-body"])
def test_bad_frames_close_the_connection_and_the_gateway_serves_on(fake, gateway, payload):
    fake.add_topic("clicks", partitions=1)
    assert _closed_by_server(gateway, payload)
    p = producer(gateway, acks=1)
    assert p.send("clicks", value=b"after", partition=0).get(5).offset == 0
    p.close()


def test_a_silent_half_frame_is_cut_off(fake, gateway):  # slow-loris: request.timeout.ms (2 s here)
    assert _closed_by_server(gateway, struct.pack(">i", 100) + b"\0\x03")


def test_kafka_pythons_default_idempotent_producer_gets_an_id_and_contiguous_offsets(fake, gateway):
    fake.add_topic("clicks", partitions=1)
    p = producer(gateway)  # kafka-python 3: acks=all and enable_idempotence=True by default
    futures = [p.send("clicks", value=b"%d" % i, partition=0) for i in range(30)]
    p.flush(10)
    assert [f.get(5).offset for f in futures] == list(range(30))
    p.close()
    assert len([c for c in fake.calls if c[0] == "init_producer_id"]) == 1
    # every batch carried the id raystream handed out (the fake's first is 1000), with consecutive sequences
    produced = [c for c in fake.calls if c[0] == "produce"]
    assert {c[6] for c in produced} == {1000}
    assert [c[8] for c in produced] == [sum(c[3] for c in produced[:i]) for i in range(len(produced))]


def _call(gateway, request, version: int, correlation_id: int = 1):
    """Send one kio request on a fresh connection and return the decoded response."""
    import io

    from kio.index import load_response_schema
    from kio.serial import entity_reader, entity_writer

    header_cls = type(request).__header_schema__
    buffer = io.BytesIO()
    entity_writer(header_cls)(buffer, header_cls(request_api_key=type(request).__api_key__,
                                                 request_api_version=version, correlation_id=correlation_id,
                                                 client_id="raw"))
    entity_writer(type(request))(buffer, request)
    frame = buffer.getvalue()
    with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=10) as s:
        s.sendall(struct.pack(">i", len(frame)) + frame)
        size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
        data = s.recv(size, socket.MSG_WAITALL)
    schema = load_response_schema(type(request).__api_key__, version)
    header, offset = entity_reader(schema.__header_schema__)(data, 0)
    assert header.correlation_id == correlation_id
    return entity_reader(schema)(data, offset)[0]


def test_a_retried_idempotent_batch_is_written_once(fake, gateway):
    import datetime

    from kafka.record.default_records import DefaultRecordBatchBuilder
    from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

    fake.add_topic("clicks", partitions=1)
    producer_id, producer_epoch = fake.init_producer_id()
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=producer_id,
                                        producer_epoch=producer_epoch, base_sequence=0, batch_size=1 << 20)
    for i in range(5):
        builder.append(i, timestamp=1_000 + i, key=None, value=b"once-%d" % i, headers=[])
    request = ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=10),
                             topic_data=(TopicProduceData(name="clicks", partition_data=(
                                 PartitionProduceData(index=0, records=bytes(builder.build())),)),))
    answers = [_call(gateway, request, 9).responses[0].partition_responses[0] for _ in range(2)]
    assert [(a.error_code, a.base_offset) for a in answers] == [(0, 0), (0, 0)]  # the retry: same offsets
    assert fake.values(TopicPartition("clicks", 0)) == [b"once-%d" % i for i in range(5)]


def test_admin_creates_grows_and_deletes_topics(fake, gateway):
    from kafka.admin import NewPartitions, NewTopic
    from kafka.errors import InvalidReplicationAssignmentError, TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=gateway.bootstrap)
    admin.create_topics([NewTopic("orders", num_partitions=2, replication_factor=1)])
    assert len(fake.topics["orders"].partitions) == 2
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics([NewTopic("orders", num_partitions=1, replication_factor=1)])
    with pytest.raises(InvalidReplicationAssignmentError):
        admin.create_topics([NewTopic("placed", num_partitions=1, replica_assignments={0: [0]})])
    admin.create_partitions({"orders": NewPartitions(total_count=4)})
    assert len(fake.topics["orders"].partitions) == 4
    p = producer(gateway)
    assert p.send("orders", value=b"x", partition=3).get(5).offset == 0  # the new partition is writable
    p.close()
    admin.delete_topics(["orders"])
    assert "orders" not in fake.topics and "placed" not in fake.topics
    admin.close()
