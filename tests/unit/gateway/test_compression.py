"""Compressed Kafka batches: every codec Kafka has (gzip, snappy raw and xerial-framed, lz4 frame, zstd),
checked against codecs nobody here wrote (kafka-python's, librdkafka's), bounded against decompression
bombs, and unreadable bodies answered with CORRUPT_MESSAGE over the wire."""

from __future__ import annotations

import datetime
import struct

import crc32c
import pytest
from confluent_kafka import Producer
from kafka import KafkaProducer
from kafka import codec as kafka_codec
from kafka.record.default_records import DefaultRecordBatch
from kio.schema.errors import ErrorCode
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from test_kafka_python import _call
from test_records import RECORDS, kafka_python_batch, stored_batch

from raystream.errors import CorruptRecordError
from raystream.gateway.records import (
    XERIAL_MAGIC,
    DecompressionLimitError,
    UnsupportedCompressionError,
    compress,
    decode_batches,
    encode_batch,
)
from raystream.protocol import TopicPartition

CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
#: Enough records (> 32 KiB) that kafka-python's xerial snappy writes several chunks.
MANY = RECORDS + [(b"key-%d" % i, b"value %d " % i * 40, [("n", b"%d" % i)], 1_700_000_002_000 + i)
                  for i in range(200)]


def rows(batch) -> list[tuple]:
    return [(r["key"], r["value"], [(h["key"], h["value"]) for h in r["headers"]], r["_timestamp"])
            for r in batch.records.to_pylist()]


def expected(records) -> list[tuple]:
    return [(k, v, list(h), ts) for k, v, h, ts in records]


def with_body(batch: bytes, codec: int, body: bytes) -> bytes:
    """``batch`` (a single uncompressed batch) with its records replaced by ``body``, marked as ``codec``
    and with a length and CRC that match, so only the codec can object."""
    head = bytearray(batch[:61])
    head[21:23] = ((struct.unpack_from(">h", head, 21)[0] & ~0x07) | codec).to_bytes(2, "big")
    head[8:12] = struct.pack(">i", 49 + len(body))
    head[17:21] = crc32c.crc32c(bytes(head[21:]) + body).to_bytes(4, "big")
    return bytes(head) + body


@pytest.mark.parametrize("name", ["none", *CODECS])
def test_every_codec_round_trips_and_kafka_python_reads_it(name):
    data = encode_batch(stored_batch(MANY, 100), leader_epoch=2, compression=name)
    (batch,) = decode_batches(data)
    assert rows(batch) == expected(MANY)
    assert batch.attributes & 0x07 == CODECS.get(name, 0)
    theirs = DefaultRecordBatch(bytearray(data))
    assert theirs.validate_crc() and theirs.compression_type == CODECS.get(name, 0)
    assert [(r.offset, r.value) for r in theirs] == [(100 + i, r[1]) for i, r in enumerate(MANY)]


@pytest.mark.parametrize("name", list(CODECS))
def test_decodes_what_kafka_python_compresses(name):
    data = kafka_python_batch(MANY, CODECS[name])
    if name == "snappy":  # kafka-python frames snappy as the Java client does (xerial), in 32 KiB chunks
        assert data[61:61 + len(XERIAL_MAGIC)] == XERIAL_MAGIC
    (batch,) = decode_batches(data)
    assert rows(batch) == expected(MANY)


def test_raw_and_xerial_snappy_both_read():
    plain = kafka_python_batch(MANY)
    records = plain[61:]
    raw = kafka_codec.snappy_encode(records, xerial_compatible=False)
    xerial = kafka_codec.snappy_encode(records, xerial_compatible=True, xerial_blocksize=4096)
    assert not raw.startswith(XERIAL_MAGIC) and xerial.startswith(XERIAL_MAGIC)
    for body in (raw, xerial):
        (batch,) = decode_batches(with_body(plain, 2, body))
        assert rows(batch) == expected(MANY)


@pytest.mark.parametrize("name", list(CODECS))
def test_an_unreadable_compressed_body_is_a_corrupt_record(name):
    plain = kafka_python_batch(MANY)
    good = compress(name, plain[61:])
    bodies = [b"\x00not compressed at all\xff" * 3, good[:len(good) // 2], good[:8], b""]
    if name == "snappy":
        bodies += [XERIAL_MAGIC + b"\0\0\0\1", XERIAL_MAGIC + b"\0\0\0\1\0\0\0\1\0\0\x10\0abc",
                   XERIAL_MAGIC + b"\0\0\0\1\0\0\0\1\0\0\0\2\x05"]
    for body in bodies:
        with pytest.raises(CorruptRecordError):
            decode_batches(with_body(plain, CODECS[name], body))


@pytest.mark.parametrize("name", list(CODECS))
def test_decompression_stops_at_the_bound(name):
    plain = kafka_python_batch([(None, b"\0" * 3_000_000, [], 1)])  # 3 MB of zeros: a few KB compressed
    bomb = with_body(plain, CODECS[name], compress(name, plain[61:]))
    assert len(bomb) < 300_000
    with pytest.raises(DecompressionLimitError, match="expands past 1000000 bytes"):
        decode_batches(bomb, max_decompressed_bytes=1_000_000)
    assert decode_batches(bomb, max_decompressed_bytes=4_000_000)[0].records.num_rows == 1
    with pytest.raises(DecompressionLimitError):  # the bound covers the batches of one call together
        decode_batches(bomb + bomb, max_decompressed_bytes=4_000_000)


def test_codecs_are_named_or_numbered_when_encoding_and_unknown_ones_refused():
    assert decode_batches(encode_batch(stored_batch(RECORDS, 0), compression=4))[0].attributes & 0x07 == 4
    for unknown in ("brotli", 7):
        with pytest.raises(UnsupportedCompressionError):
            encode_batch(stored_batch(RECORDS, 0), compression=unknown)


# -- through the gateway -----------------------------------------------------------------------------------
def stored(fake, topic: str = "clicks") -> list[tuple]:
    table = fake.records(TopicPartition(topic, 0))
    return [(r["key"], r["value"], [(h["key"], h["value"]) for h in r["headers"]], r["_timestamp"])
            for r in table.to_pylist()]


def sent(n: int) -> list[tuple]:
    return [(b"k%d" % i, b"value %d " % i * 30, [("n", b"%d" % i)], 1_700_000_000_000 + i) for i in range(n)]


@pytest.mark.parametrize("name", ["snappy", "lz4", "zstd", "gzip"])
def test_librdkafka_produces_compressed_batches_that_arrive_intact(fake, gateway, name):
    fake.add_topic("clicks", partitions=1)
    producer = Producer({"bootstrap.servers": gateway.bootstrap, "linger.ms": 20, "compression.type": name})
    errors = []
    for key, value, headers, ts in sent(300):
        producer.produce("clicks", key=key, value=value, partition=0, headers=headers, timestamp=ts,
                         on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0
    assert errors == [None] * 300
    assert stored(fake) == sent(300)


@pytest.mark.parametrize("name", ["gzip", "snappy", "lz4", "zstd"])
def test_kafka_python_produces_compressed_batches_that_arrive_intact(fake, gateway, name):
    if not getattr(kafka_codec, f"has_{name}")():
        pytest.skip(f"kafka-python has no {name} library here")
    fake.add_topic("clicks", partitions=1)
    producer = KafkaProducer(bootstrap_servers=gateway.bootstrap, compression_type=name, linger_ms=20)
    futures = [producer.send("clicks", key=k, value=v, headers=h, partition=0, timestamp_ms=ts)
               for k, v, h, ts in sent(300)]
    producer.flush(30)
    assert [f.get(10).offset for f in futures] == list(range(300))
    producer.close()
    assert stored(fake) == sent(300)


def test_a_corrupt_compressed_batch_gets_corrupt_message_and_nothing_is_written(fake, gateway):
    fake.add_topic("clicks", partitions=1)
    plain = kafka_python_batch(RECORDS)
    for name, number in CODECS.items():
        corrupt = with_body(plain, number, compress(name, plain[61:])[:-4])  # truncated, CRC still right
        request = ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=5),
                                 topic_data=(TopicProduceData(name="clicks", partition_data=(
                                     PartitionProduceData(index=0, records=corrupt),)),))
        (answer,) = _call(gateway, request, 9).responses[0].partition_responses
        assert answer.error_code == ErrorCode.corrupt_message, name
    assert fake.count("produce") == 0 and stored(fake) == []
    ok = ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=5),
                        topic_data=(TopicProduceData(name="clicks", partition_data=(
                            PartitionProduceData(index=0, records=kafka_python_batch(RECORDS, 4)),)),))
    assert _call(gateway, ok, 9).responses[0].partition_responses[0].error_code == ErrorCode.none
    assert stored(fake) == expected(RECORDS)

