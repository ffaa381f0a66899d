"""The vectorised record decoder (raystream.gateway.record_decoder) against the per-record decoder it
replaced, kept here as the reference: on what kafka-python writes and what encode_batch writes, both give the
same records; on mutated bodies, both accept the same ones with the same records, or both refuse them."""

from __future__ import annotations

import struct

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatchBuilder

from raystream.client.accumulator import PRODUCE_SCHEMA
from raystream.errors import CorruptRecordError
from raystream.gateway.record_decoder import decode_records
from raystream.gateway.records import HEADER_BYTES, decode_batches, encode_batch
from raystream.record import HEADER_TYPE


# -- the reference: the per-record decoder of raystream.gateway.records before it was vectorised -----------------
def reference_decode(body: memoryview, count: int, base_timestamp: int) -> pa.RecordBatch:
    keys, values, headers, timestamps = [], [], [], []
    reader = _Reader(body)
    try:
        for _ in range(count):
            length = reader.varint()
            end = reader.position + length
            reader.position += 1
            timestamps.append(base_timestamp + reader.varint())
            reader.varint()
            keys.append(reader.bytes_or_none())
            values.append(reader.bytes_or_none())
            record_headers = []
            for _ in range(reader.varint()):
                key = reader.bytes_or_none()
                record_headers.append({"key": None if key is None else bytes(key).decode(),
                                       "value": reader.bytes_or_none()})
            headers.append(record_headers)
            if reader.position != end:
                raise CorruptRecordError("record length does not match its fields")
    except (IndexError, UnicodeDecodeError, struct.error) as exc:
        raise CorruptRecordError(f"undecodable record: {exc}") from None
    if reader.position != len(body):
        raise CorruptRecordError("record batch holds bytes after its last record")
    return pa.RecordBatch.from_arrays(
        [pa.array(keys, pa.binary()), pa.array(values, pa.binary()), pa.array(headers, HEADER_TYPE),
         pa.array(timestamps, pa.int64())], schema=PRODUCE_SCHEMA)


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data, self.position = data, 0

    def varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.position]
            self.position += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7
            if shift > 63:
                raise CorruptRecordError("varint longer than 10 bytes")

    def bytes_or_none(self) -> bytes | None:
        length = self.varint()
        if length < 0:
            return None
        start = self.position
        self.position += length
        if self.position > len(self.data):
            raise CorruptRecordError("field runs past the end of its record")
        return bytes(self.data[start:self.position])


# -- strategies ---------------------------------------------------------------------------------------------------
HEADERS = st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=12)), max_size=3)
# Long values are a short random head padded to 8,190-8,300 bytes: their lengths take 3 varint bytes while the
# example draws little entropy (random 8 KB values trip hypothesis' data_too_large health check at random).
LONG_VALUES = st.builds(lambda head, size: head.ljust(size, b"\x5a"), st.binary(max_size=16), st.integers(8_190, 8_300))
VALUES = st.none() | st.binary(max_size=300) | LONG_VALUES  # 1-, 2- and 3-byte lengths
RECORDS = st.lists(st.tuples(st.none() | st.binary(max_size=40), VALUES, HEADERS, st.integers(0, 2**45)),
                   min_size=1, max_size=30)


def kafka_python_batch(records, codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 24)
    for i, (key, value, headers, ts) in enumerate(records):
        builder.append(i, timestamp=ts, key=key, value=value, headers=headers)
    return bytes(builder.build())


def body_of(data: bytes) -> tuple[memoryview, int, int]:
    """An uncompressed batch's records body, record count and base timestamp."""
    (count,) = struct.unpack_from(">i", data, HEADER_BYTES - 4)
    (base_timestamp,) = struct.unpack_from(">q", data, 27)
    return memoryview(data)[HEADER_BYTES:], count, base_timestamp


def outcome(decode, body, count, base_timestamp, **options):
    try:
        return decode(body, count, base_timestamp, **options)
    except CorruptRecordError:
        return "corrupt"


#: Each path of decode_records: record by record (few records), and vectorised (any number).
PATHS = [{"few": 2**31}, {"few": 0}]


@settings(max_examples=200, deadline=None)
@given(RECORDS, st.sampled_from([0, 1]))
def test_what_kafka_python_writes_decodes_as_the_per_record_decoder_did(records, codec):
    data = kafka_python_batch(records, codec)
    (batch,) = decode_batches(data)
    plain = kafka_python_batch(records)
    assert batch.records.equals(reference_decode(*body_of(plain)))
    for options in PATHS:
        assert decode_records(*body_of(plain), **options).equals(batch.records)
    assert [(r["key"], r["value"], [(h["key"], h["value"]) for h in r["headers"]], r["_timestamp"])
            for r in batch.records.to_pylist()] == [(k, v, list(h), ts) for k, v, h, ts in records]


@settings(max_examples=150, deadline=None)
@given(RECORDS, st.integers(0, 2**40))
def test_what_encode_batch_writes_decodes_as_the_per_record_decoder_did(records, base_offset):
    table = pa.RecordBatch.from_arrays([
        pa.array(range(base_offset, base_offset + len(records)), pa.int64()),
        pa.array([r[3] for r in records], pa.int64()),
        pa.array([r[0] for r in records], pa.binary()), pa.array([r[1] for r in records], pa.binary()),
        pa.array([[{"key": k, "value": v} for k, v in r[2]] for r in records], HEADER_TYPE)],
        names=["_offset", "_timestamp", "key", "value", "headers"])
    body, count, base_timestamp = body_of(encode_batch(table))
    for options in PATHS:
        assert decode_records(body, count, base_timestamp, **options).equals(
            reference_decode(body, count, base_timestamp))


@settings(max_examples=400, deadline=None)
@given(RECORDS, st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 64), st.integers(-2, 2))
def test_mutated_bodies_are_accepted_or_refused_as_the_per_record_decoder_did(records, flips, cut, miscount):
    body, count, base_timestamp = body_of(kafka_python_batch(records))
    mutated = bytearray(body)
    for where, byte in flips:
        mutated[where % len(mutated)] = byte
    for candidate, n in ((bytes(mutated), count), (bytes(mutated[:len(mutated) - cut]), count),
                         (bytes(body), max(0, count + miscount))):
        try:
            expected = reference_decode(memoryview(candidate), n, base_timestamp)
        except CorruptRecordError:
            expected = "corrupt"
        except (OverflowError, pa.ArrowInvalid):  # the old decoder's overflow: now a corrupt record
            expected = "corrupt"
        for options in PATHS:
            got = outcome(decode_records, memoryview(candidate), n, base_timestamp, **options)
            assert got == expected if isinstance(expected, str) else (not isinstance(got, str)
                                                                      and got.equals(expected))


def test_long_varints_and_negative_lengths():
    # A 10-byte key length of -1 (null), a 3-byte record length, and a 10-byte varint past 64 bits.
    records = [(b"k", b"v" * 9_000, [("h", None)], 5)]
    body, count, base_timestamp = body_of(kafka_python_batch(records))
    record = b"\x00" + b"\x00" + b"\x00" + b"\x81" + b"\x80" * 8 + b"\x01" + b"\x02v" + b"\x00"
    framed = memoryview(bytes([len(record) * 2]) + record)
    # A key length past 64 bits: Python's integers read it (as the old decoder did), a negative one: null.
    wide = b"\x00\x00\x00" + b"\xff" * 9 + b"\x7f" + b"\x02v\x00"
    wide_framed = memoryview(bytes([len(wide) * 2]) + wide)
    for options in PATHS:
        assert decode_records(body, count, base_timestamp, **options).equals(
            reference_decode(body, count, base_timestamp))
        assert decode_records(framed, 1, 0, **options).to_pylist() == [
            {"key": None, "value": b"v", "headers": [], "_timestamp": 0}]
        assert decode_records(wide_framed, 1, 0, **options).equals(reference_decode(wide_framed, 1, 0))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 40), st.integers(0, 300), st.none() | st.binary(min_size=3, max_size=3),
       st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=2))
def test_equal_size_records_take_the_stride_path_and_decode_the_same(count, size, key, flips):
    # Same-size records (one length varint repeated at every stride): the bounds are checked, not assumed.
    records = [(key, bytes([i % 256]) * size, [], 1_000 + i) for i in range(count)]
    body, n, base_timestamp = body_of(kafka_python_batch(records))
    mutated = bytearray(body)
    for where, byte in flips:
        mutated[where % len(mutated)] = byte
    try:
        expected = reference_decode(memoryview(bytes(mutated)), n, base_timestamp)
    except (CorruptRecordError, OverflowError, pa.ArrowInvalid):
        expected = "corrupt"
    for options in PATHS:
        got = outcome(decode_records, memoryview(bytes(mutated)), n, base_timestamp, **options)
        assert got == expected if isinstance(expected, str) else (not isinstance(got, str) and got.equals(expected))


def test_a_batch_of_no_records_is_empty():
    assert decode_records(memoryview(b""), 0, 5).num_rows == 0
    assert outcome(decode_records, memoryview(b""), 1, 5) == "corrupt"
