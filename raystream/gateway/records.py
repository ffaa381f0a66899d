"""Kafka's RecordBatch (magic v2) <-> raystream records, losslessly for what a record carries.

A Kafka ``records`` field is a sequence of batches: a 61-byte header (base offset, length, leader epoch,
magic, CRC-32C over the rest, attributes, last offset delta, base and max timestamp, producer id, epoch,
base sequence, record count) then the records, each a varint-framed (attributes, timestamp delta, offset
delta, key, value, headers). Decoding checks magic and CRC and gives each batch's records as the Arrow
table the replicas append (``key``, ``value``, ``headers``, ``_timestamp`` in ms); encoding turns the
Arrow batches a fetch returns back into Kafka batches, one per stored batch.

Why not kio's record codec: it rounds timestamps to whole seconds and reads no compressed batches, and a
Kafka bridge must keep every millisecond.

Compression (the low three bits of the attributes): every codec Kafka has is read and written, through
pyarrow's codecs, none written here. gzip, lz4 (the LZ4 frame format, with the header checksum Kafka has
written correctly since magic v1) and zstd are decompressed as streams; snappy is either raw snappy (what
librdkafka writes: a varint of the uncompressed size, then the data) or the xerial framing the Java client
writes (``\\x82SNAPPY\\x00``, a 4-byte version and compatible version, then chunks of a 4-byte big-endian
length and a raw snappy block). Decompression stops at ``max_decompressed_bytes`` (over all the batches of
one call), so a small request cannot expand into an unbounded one (a decompression bomb). A body the codec
cannot read raises :class:`~raystream.errors.CorruptRecordError` (Kafka's CORRUPT_MESSAGE); one that
expands past the bound, :class:`DecompressionLimitError`.

Pure functions; thread-safe (no shared state; pyarrow's kernels and codecs release the GIL).
"""

from __future__ import annotations

import dataclasses
import struct

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
COMPRESSION_CODECS = {name: codec for codec, name in COMPRESSION_NAMES.items()}
#: The default bound on what one decode_batches call may decompress to: Kafka's socket.request.max.bytes,
#: the most an uncompressed request could carry.
MAX_DECOMPRESSED_BYTES = 104_857_600
#: The xerial snappy framing (Java client): magic, then a 4-byte version and a 4-byte compatible version.
XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER_BYTES = len(XERIAL_MAGIC) + 8
_CHUNK_BYTES = 1 << 20  # what a stream decompressor is asked for at a time


class UnsupportedCompressionError(InvalidRecordError):
    """A batch compressed with a codec the gateway does not read (Kafka's UNSUPPORTED_COMPRESSION_TYPE)."""


class DecompressionLimitError(InvalidRecordError):
    """A compressed batch expands past ``max_decompressed_bytes`` (a decompression bomb, or a bound too
    small for the data)."""


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


def decode_batches(data: bytes, max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES) -> list[KafkaBatch]:
    """Every batch in a Kafka ``records`` field (CorruptRecordError for a torn or altered one, or one whose
    compressed body is unreadable; DecompressionLimitError when the compressed batches together expand past
    ``max_decompressed_bytes``)."""
    view = memoryview(data)
    out, position, budget = [], 0, max_decompressed_bytes
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
        if codec:
            body = memoryview(decompress(codec, body, budget))
            budget -= len(body)
        records = _decode_records(body, count, base_ts)
        out.append(KafkaBatch(base_offset, leader_epoch, attributes, last_delta, base_ts, max_ts, pid, epoch,
                              base_seq, records))
        position = end
    return out


# -- compression ---------------------------------------------------------------------------------------------
def decompress(codec: int, body: bytes | memoryview, max_bytes: int) -> bytes:
    """A batch body compressed with Kafka codec ``codec`` (1 gzip, 2 snappy, 3 lz4, 4 zstd), expanded to at
    most ``max_bytes`` (DecompressionLimitError past that; CorruptRecordError when unreadable)."""
    name = COMPRESSION_NAMES.get(codec)
    if name is None or name == "none":
        raise UnsupportedCompressionError(f"record batch compression codec {codec} (Kafka's are 1 to 4)",
                                          codec=codec)
    try:
        if name == "snappy":
            return _unsnappy(body, max_bytes)
        return _decompress_stream(name, body, max_bytes)
    except (pa.ArrowException, OSError, ValueError) as exc:  # what pyarrow's codecs raise on bad input
        raise CorruptRecordError(f"undecodable {name} record batch: {exc}", codec=codec) from None


def _decompress_stream(name: str, body: bytes | memoryview, max_bytes: int) -> bytes:
    """gzip, lz4 (frame) or zstd: a streaming decompressor, read a chunk at a time up to the bound."""
    stream = pa.CompressedInputStream(pa.BufferReader(pa.py_buffer(body)), name)
    chunks, total = [], 0
    while True:
        chunk = stream.read(min(_CHUNK_BYTES, max_bytes - total + 1))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise DecompressionLimitError(f"{name} record batch expands past {max_bytes} bytes",
                                          max_bytes=max_bytes)
        chunks.append(chunk)


def _unsnappy(body: bytes | memoryview, max_bytes: int) -> bytes:
    """Raw snappy, or the xerial framing: chunks of a 4-byte big-endian length and a raw snappy block."""
    view = memoryview(body)
    if bytes(view[:len(XERIAL_MAGIC)]) != XERIAL_MAGIC:
        return _unsnappy_raw(view, max_bytes)
    if len(view) < _XERIAL_HEADER_BYTES:
        raise CorruptRecordError("truncated xerial snappy header")
    chunks, position, total = [], _XERIAL_HEADER_BYTES, 0
    while position < len(view):
        if len(view) - position < 4:
            raise CorruptRecordError(f"truncated xerial snappy chunk length at byte {position}")
        (length,) = struct.unpack_from(">i", view, position)
        start, position = position + 4, position + 4 + length
        if length < 0 or position > len(view):
            raise CorruptRecordError(f"xerial snappy chunk of {length} bytes overruns the data")
        chunks.append(_unsnappy_raw(view[start:position], max_bytes - total))
        total += len(chunks[-1])
    return b"".join(chunks)


def _unsnappy_raw(block: memoryview, max_bytes: int) -> bytes:
    """One raw snappy block: its leading varint (unsigned) is the size it expands to, checked first."""
    size = shift = position = 0
    while True:
        if position >= len(block) or shift > 28:
            raise CorruptRecordError("truncated or overlong snappy length")
        byte = block[position]
        size |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            break
    if size > max_bytes:
        raise DecompressionLimitError(f"snappy record batch expands past {max_bytes} bytes (to {size})",
                                      max_bytes=max_bytes)
    return pa.decompress(block, decompressed_size=size, codec="snappy", asbytes=True)


def compress(codec: int | str, body: bytes | memoryview) -> bytes:
    """``body`` compressed as Kafka codec ``codec`` (a number or a name: gzip, snappy (raw, which every
    Kafka client reads), lz4 (frame, independent blocks) or zstd)."""
    name = COMPRESSION_NAMES.get(codec, codec) if isinstance(codec, int) else codec
    if name not in COMPRESSION_CODECS or name == "none":
        raise UnsupportedCompressionError(f"no Kafka compression codec {codec!r}", codec=codec)
    return pa.compress(body, codec=name, asbytes=True)


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
def encode_batch(batch: pa.RecordBatch, leader_epoch: int = -1, compression: int | str = "none") -> bytes:
    """One Kafka batch of a fetched Arrow batch (``_offset``, ``_timestamp``, ``key``, ``value``,
    ``headers`` columns), compressed with ``compression`` (a Kafka codec name or number); offsets and
    timestamps are kept exactly."""
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
    attributes = COMPRESSION_CODECS.get(compression, compression) if isinstance(compression, str) else compression
    if attributes:
        body = compress(attributes, bytes(body))
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
