"""Kafka RecordBatch v2 <-> raystream records, checked against kafka-python's own codec (an implementation
nobody here wrote) in both directions."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from raystream.errors import CorruptRecordError, InvalidRecordError
from raystream.gateway.records import UnsupportedCompressionError, decode_batches, encode_batch
from raystream.record import HEADER_TYPE

RECORDS = [(b"k0", b"v0", [("h", b"x")], 1_700_000_000_123), (None, b"v1", [], 1_700_000_000_001),
           (b"k2", None, [("a", b""), ("b", None)], 1_700_000_000_999)]


def kafka_python_batch(records, codec: int = 0, base_offset: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i, (key, value, headers, ts) in enumerate(records):
        builder.append(base_offset + i, timestamp=ts, key=key, value=value, headers=headers)
    return bytes(builder.build())


def stored_batch(records, base_offset: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([
        pa.array(range(base_offset, base_offset + len(records)), pa.int64()),
        pa.array([r[3] for r in records], pa.int64()),
        pa.array([r[0] for r in records], pa.binary()), pa.array([r[1] for r in records], pa.binary()),
        pa.array([[{"key": k, "value": v} for k, v in r[2]] for r in records], HEADER_TYPE)],
        names=["_offset", "_timestamp", "key", "value", "headers"])


@pytest.mark.parametrize("codec", [0, 1], ids=["none", "gzip"])
def test_decodes_what_kafka_python_writes_keeping_every_field(codec):
    records = RECORDS + [(b"k", b"x" * 100, [], 1_700_000_001_000 + i) for i in range(20)]  # worth compressing
    (batch,) = decode_batches(kafka_python_batch(records, codec))
    rows = batch.records.to_pylist()
    assert [(r["key"], r["value"], [(h["key"], h["value"]) for h in r["headers"]], r["_timestamp"]) for r in rows] \
        == [(k, v, list(h), ts) for k, v, h, ts in records]
    assert batch.attributes & 0x07 == codec


@pytest.mark.parametrize("gzip", [False, True])
def test_kafka_python_reads_what_the_gateway_writes(gzip):
    data = encode_batch(stored_batch(RECORDS, 40), leader_epoch=3, compression="gzip" if gzip else "none")
    batch = DefaultRecordBatch(bytearray(data))
    assert batch.validate_crc()
    assert (batch.base_offset, batch.leader_epoch, batch.compression_type) == (40, 3, 1 if gzip else 0)
    got = [(r.offset, r.key, r.value, list(r.headers), r.timestamp) for r in batch]
    assert got == [(40 + i, k, v, list(h), ts) for i, (k, v, h, ts) in enumerate(RECORDS)]


def test_offsets_with_gaps_survive_encoding():  # a compacted log hands out non-consecutive offsets
    batch = stored_batch(RECORDS, 0).set_column(0, "_offset", pa.array([5, 9, 12], pa.int64()))
    assert [r.offset for r in DefaultRecordBatch(bytearray(encode_batch(batch)))] == [5, 9, 12]


def test_several_batches_in_one_records_field():
    data = kafka_python_batch(RECORDS[:1]) + kafka_python_batch(RECORDS[1:], codec=1)
    assert [b.records.num_rows for b in decode_batches(data)] == [1, 2]


def test_altered_truncated_and_foreign_batches_are_refused():
    data = bytearray(kafka_python_batch(RECORDS))
    flipped = bytes(data[:-3]) + bytes([data[-3] ^ 1]) + bytes(data[-2:])
    with pytest.raises(CorruptRecordError, match="CRC"):
        decode_batches(flipped)
    with pytest.raises(CorruptRecordError):
        decode_batches(bytes(data[:-5]))
    old_magic = bytes(data[:16]) + b"\x01" + bytes(data[17:])
    with pytest.raises(CorruptRecordError, match="magic"):
        decode_batches(old_magic)
    lz4 = bytearray(data)
    lz4[22] = (lz4[22] & ~0x07) | 3  # attributes' low byte: codec lz4 (the CRC no longer matches either)
    with pytest.raises((UnsupportedCompressionError, CorruptRecordError)):
        decode_batches(bytes(lz4))


def test_an_unknown_codec_is_named_in_the_error():
    import crc32c
    data = bytearray(kafka_python_batch(RECORDS))
    data[22] = (data[22] & ~0x07) | 5  # Kafka has codecs 0 to 4
    data[17:21] = crc32c.crc32c(bytes(data[21:])).to_bytes(4, "big")
    with pytest.raises(UnsupportedCompressionError, match="codec 5"):
        decode_batches(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 200))
def test_arbitrary_bytes_raise_only_record_errors(noise, cut):
    # Fuzz: random bytes, and a real batch cut or spliced with random bytes.
    real = kafka_python_batch(RECORDS)
    for data in (noise, real[:cut] + noise, real + noise):
        try:
            decode_batches(data)
        except (CorruptRecordError, InvalidRecordError):
            pass


# Kafka header keys are non-null strings; values are nullable bytes.
HEADERS = st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=12)), max_size=3)
STORED_RECORDS = st.lists(st.tuples(st.none() | st.binary(max_size=40), st.none() | st.binary(max_size=300),
                                    st.none() | HEADERS, st.integers(0, 2**50)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(STORED_RECORDS, st.integers(0, 2**40), st.lists(st.integers(1, 2**20), min_size=40, max_size=40),
       st.integers(0, 3), st.sampled_from(["none", "gzip", "snappy", "lz4", "zstd"]))
def test_decoding_what_is_encoded_gives_the_records_back(records, base_offset, gaps, dropped, codec):
    # A stored batch (sliced, as a fetch may hand out a part of a segment's batch), its Kafka encoding, and
    # back: every key, value, header and timestamp, with kafka-python reading the same and the offsets.
    padded = records[:1] * dropped + records
    offsets = [base_offset + sum(gaps[:i]) for i in range(len(padded))]
    table = pa.RecordBatch.from_arrays([
        pa.array(offsets, pa.int64()), pa.array([r[3] for r in padded], pa.int64()),
        pa.array([r[0] for r in padded], pa.binary()), pa.array([r[1] for r in padded], pa.binary()),
        pa.array([None if r[2] is None else [{"key": k, "value": v} for k, v in r[2]] for r in padded],
                 HEADER_TYPE)], names=["_offset", "_timestamp", "key", "value", "headers"]).slice(dropped)
    data = encode_batch(table, leader_epoch=7, compression=codec)
    (batch,) = decode_batches(data)
    expected = [(k, v, [(hk, hv) for hk, hv in h or ()], ts) for k, v, h, ts in records]
    assert [(r["key"], r["value"], [(h["key"], h["value"]) for h in r["headers"]], r["_timestamp"])
            for r in batch.records.to_pylist()] == expected
    assert (batch.base_offset, batch.last_offset_delta, batch.partition_leader_epoch) == (
        offsets[dropped], offsets[-1] - offsets[dropped], 7)
    assert (batch.base_timestamp, batch.max_timestamp) == (min(r[3] for r in records), max(r[3] for r in records))
    theirs = DefaultRecordBatch(bytearray(data))
    assert theirs.validate_crc()
    assert [(r.offset, r.key, r.value, list(r.headers), r.timestamp) for r in theirs] == [
        (o, k, v, h, ts) for o, (k, v, h, ts) in zip(offsets[dropped:], expected, strict=True)]


def test_a_batch_without_key_or_headers_columns_encodes_null_keys_and_no_headers():
    table = pa.RecordBatch.from_arrays([pa.array([3, 4], pa.int64()), pa.array([10, 5], pa.int64()),
                                        pa.array([b"a", None], pa.binary())], names=["_offset", "_timestamp", "value"])
    (batch,) = decode_batches(encode_batch(table))
    assert batch.records.to_pylist() == [{"key": None, "value": b"a", "headers": [], "_timestamp": 10},
                                         {"key": None, "value": None, "headers": [], "_timestamp": 5}]
    with pytest.raises(ValueError, match="at least one record"):
        encode_batch(table.slice(0, 0))


def test_a_null_header_list_is_no_headers_even_where_it_spans_child_elements():
    # Arrow lets a null list slot cover child values; they are not that record's headers.
    children = pa.array([{"key": "a", "value": b"1"}, {"key": "b", "value": b"2"}, {"key": "c", "value": None}],
                        HEADER_TYPE.value_type)
    headers = pa.ListArray.from_arrays(pa.array([0, 1, 2, 3], pa.int32()), children,
                                       mask=pa.array([False, True, False]))
    table = pa.RecordBatch.from_arrays([pa.array([0, 1, 2], pa.int64()), pa.array([1, 1, 1], pa.int64()),
                                        pa.array([b"x", b"y", b"z"]), headers],
                                       names=["_offset", "_timestamp", "value", "headers"])
    (batch,) = decode_batches(encode_batch(table))
    assert [r["headers"] for r in batch.records.to_pylist()] == [
        [{"key": "a", "value": b"1"}], [], [{"key": "c", "value": None}]]
