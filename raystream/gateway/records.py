"""Kafka's RecordBatch (magic v2) <-> raystream records, losslessly for what a record carries.

A Kafka ``records`` field is a sequence of batches: a 61-byte header (base offset, length, leader epoch,
magic, CRC-32C over the rest, attributes, last offset delta, base and max timestamp, producer id, epoch,
base sequence, record count) then the records, each a varint-framed (attributes, timestamp delta, offset
delta, key, value, headers). Decoding checks magic and CRC and gives each batch's records as the Arrow
table the replicas append (``key``, ``value``, ``headers``, ``_timestamp`` in ms); encoding turns the
Arrow batches a fetch returns back into Kafka batches, one per stored batch.

Why not kio's record codec: it rounds timestamps to whole seconds and reads no compressed batches, and a
Kafka bridge must keep every millisecond. Compression codecs: none and gzip (``zlib``) read and written;
the others are refused with UNSUPPORTED_COMPRESSION_TYPE for now (see :data:`COMPRESSION_NAMES`).

Pure functions; thread-safe.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

import crc32c
import pyarrow as pa

from raystream.client.accumulator import PRODUCE_SCHEMA
from raystream.errors import CorruptRecordError, InvalidRecordError
from raystream.record import HEADER_TYPE, OFFSET_COLUMN, TIMESTAMP_COLUMN

MAGIC = 2
#: Bytes before the CRC-covered part: base offset (8), batch length (4), leader epoch (4), magic (1), crc (4).
_PRE_CRC = struct.Struct(">qiibI")
#: The CRC-covered header: attributes, last offset delta, base/max timestamp, producer id/epoch, base
#: sequence, record count.
_POST_CRC = struct.Struct(">hiqqqhii")
HEADER_BYTES = _PRE_CRC.size + _POST_CRC.size  # 61
COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_LOG_APPEND = 0x08
TRANSACTIONAL = 0x10
CONTROL = 0x20
COMPRESSION_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class UnsupportedCompressionError(InvalidRecordError):
    """A batch compressed with a codec the gateway does not read (Kafka's UNSUPPORTED_COMPRESSION_TYPE)."""


@dataclasses.dataclass(frozen=True)
class KafkaBatch:
    """One decoded Kafka batch: its header fields and its records as a ``PRODUCE_SCHEMA`` table."""

    base_offset: int
    partition_leader_epoch: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records: pa.RecordBatch


def decode_batches(data: bytes) -> list[KafkaBatch]:
    """Every batch in a Kafka ``records`` field (CorruptRecordError for a torn or altered one)."""
    view = memoryview(data)
    out, position = [], 0
    while position < len(view):
        if len(view) - position < HEADER_BYTES:
            raise CorruptRecordError(f"truncated record batch header at byte {position}")
        base_offset, length, leader_epoch, magic, crc = _PRE_CRC.unpack_from(view, position)
        end = position + 12 + length
        if magic != MAGIC:
            raise CorruptRecordError(f"record batch magic {magic} (only magic 2 is read)")
        if length < HEADER_BYTES - 12 or end > len(view):
            raise CorruptRecordError(f"record batch length {length} at byte {position} overruns the data")
        if crc32c.crc32c(view[position + _PRE_CRC.size:end]) != crc:
            raise CorruptRecordError(f"record batch CRC mismatch at offset {base_offset}")
        (attributes, last_delta, base_ts, max_ts, pid, epoch, base_seq,
         count) = _POST_CRC.unpack_from(view, position + _PRE_CRC.size)
        body = view[position + HEADER_BYTES:end]
        codec = attributes & COMPRESSION_MASK
        if codec == 1:
            body = memoryview(_gunzip(body))
        elif codec:
            raise UnsupportedCompressionError(
                f"record batch compressed with {COMPRESSION_NAMES.get(codec, codec)}: the gateway reads "
                f"none and gzip", codec=codec)
        records = _decode_records(body, count, base_ts)
        out.append(KafkaBatch(base_offset, leader_epoch, attributes, last_delta, base_ts, max_ts, pid, epoch,
                              base_seq, records))
        position = end
    return out


def _gunzip(body: memoryview) -> bytes:
    try:
        return zlib.decompress(body, wbits=16 + zlib.MAX_WBITS)
    except zlib.error as exc:
        raise CorruptRecordError(f"undecodable gzip record batch: {exc}") from None


def _decode_records(body: memoryview, count: int, base_timestamp: int) -> pa.RecordBatch:
    keys, values, headers, timestamps = [], [], [], []
    reader = _Reader(body)
    try:
        for _ in range(count):
            length = reader.varint()
            end = reader.position + length
            reader.position += 1  # record attributes: unused by Kafka
            timestamps.append(base_timestamp + reader.varint())
            reader.varint()  # offset delta: raystream assigns consecutive offsets, as Kafka's leader does
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
    __slots__ = ("data", "position")

    def __init__(self, data: memoryview) -> None:
        self.data, self.position = data, 0

    def varint(self) -> int:
        """A zigzag varint (Kafka's signed varint / varlong)."""
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


# -- encoding (fetch responses) ------------------------------------------------------------------------------
def encode_batch(batch: pa.RecordBatch, leader_epoch: int = -1, gzip: bool = False) -> bytes:
    """One Kafka batch of a fetched Arrow batch (``_offset``, ``_timestamp``, ``key``, ``value``,
    ``headers`` columns); offsets and timestamps are kept exactly."""
    offsets = batch.column(OFFSET_COLUMN).to_pylist()
    timestamps = batch.column(TIMESTAMP_COLUMN).to_pylist()
    keys = batch.column("key").to_pylist() if "key" in batch.schema.names else [None] * len(offsets)
    values = batch.column("value").to_pylist() if "value" in batch.schema.names else [None] * len(offsets)
    headers = batch.column("headers").to_pylist() if "headers" in batch.schema.names else [None] * len(offsets)
    base_offset, base_ts = offsets[0], min(timestamps)
    body = bytearray()
    for offset, ts, key, value, record_headers in zip(offsets, timestamps, keys, values, headers, strict=True):
        record = bytearray(b"\0")  # attributes
        record += _varint(ts - base_ts) + _varint(offset - base_offset)
        record += _bytes_field(key) + _bytes_field(value)
        record += _varint(len(record_headers or ()))
        for header in record_headers or ():
            record += _bytes_field(None if header["key"] is None else header["key"].encode())
            record += _bytes_field(header["value"])
        body += _varint(len(record)) + record
    attributes = 0
    if gzip:
        body, attributes = bytearray(zlib.compress(bytes(body), wbits=16 + zlib.MAX_WBITS)), 1
    post = _POST_CRC.pack(attributes, offsets[-1] - base_offset, base_ts, max(timestamps), -1, -1, -1,
                          len(offsets)) + bytes(body)
    return _PRE_CRC.pack(base_offset, len(post) + 9, leader_epoch, MAGIC, crc32c.crc32c(post)) + post


def _varint(value: int) -> bytes:
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(value: bytes | None) -> bytes:
    return _varint(-1) if value is None else _varint(len(value)) + value
