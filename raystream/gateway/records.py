"""Kafka's RecordBatch (magic v2) <-> raystream records, losslessly for what a record carries.

A Kafka ``records`` field is a sequence of batches: a 61-byte header (base offset, length, leader epoch,
magic, CRC-32C over the rest, attributes, last offset delta, base and max timestamp, producer id, epoch,
base sequence, record count) then the records, each a varint-framed (attributes, timestamp delta, offset
delta, key, value, headers). Decoding checks magic and CRC and gives each batch's records as the Arrow
table the replicas append (``key``, ``value``, ``headers``, ``_timestamp`` in ms); encoding turns the
Arrow batches a fetch returns back into Kafka batches, one per stored batch.

Decoding is vectorised too (the produce hot path, :mod:`raystream.gateway.record_decoder`): only the chain of
record lengths is walked in Python, one varint per record; the other fields are read with numpy over all
the records of a batch at once.

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

Encoding is vectorised (the consume hot path): the per-record varints are computed with numpy over whole
columns and the records are concatenated row-wise by Arrow's ``binary_join_element_wise`` kernel, so no
Python code runs per record.

Pure functions; thread-safe (no shared state; pyarrow's kernels and codecs release the GIL).
"""

from __future__ import annotations

import dataclasses
import struct

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import CorruptRecordError, InvalidRecordError
from raystream.gateway.record_decoder import decode_records
from raystream.record import OFFSET_COLUMN, TIMESTAMP_COLUMN

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
        records = decode_records(body, count, base_ts)
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


# -- encoding (fetch responses) ------------------------------------------------------------------------------
def encode_batch(batch: pa.RecordBatch, leader_epoch: int = -1, compression: int | str = "none") -> bytes:
    """One Kafka batch of a fetched Arrow batch (``_offset``, ``_timestamp``, ``key``, ``value``,
    ``headers`` columns; any of the last three may be absent), compressed with ``compression`` (a Kafka
    codec name or number); offsets and timestamps are kept exactly."""
    if batch.num_rows == 0:
        raise ValueError("a Kafka record batch holds at least one record")
    offsets = batch.column(OFFSET_COLUMN).to_numpy().astype(np.int64, copy=False)
    timestamps = batch.column(TIMESTAMP_COLUMN).to_numpy().astype(np.int64, copy=False)
    base_offset, base_ts = int(offsets[0]), int(timestamps.min())
    body = _encode_records(batch, offsets - base_offset, timestamps - base_ts)
    codec = COMPRESSION_CODECS.get(compression, compression) if isinstance(compression, str) else compression
    if codec:
        body = compress(codec, body)
    post = _POST_CRC.pack(codec, int(offsets[-1]) - base_offset, base_ts, int(timestamps.max()), -1, -1, -1,
                          batch.num_rows)
    crc = crc32c.crc32c(body, crc32c.crc32c(post))
    return b"".join((_PRE_CRC.pack(base_offset, len(post) + len(body) + 9, leader_epoch, MAGIC, crc), post, body))


def _encode_records(batch: pa.RecordBatch, offset_deltas: np.ndarray, timestamp_deltas: np.ndarray) -> memoryview:
    """The records of a batch, concatenated: for each row, varint length, attributes (0), varint timestamp
    delta, varint offset delta, key (varint length, -1 for null, then bytes), value (likewise), headers."""
    n = batch.num_rows
    key, value = _binary_column(batch, "key"), _binary_column(batch, "value")
    key_lengths, value_lengths = _lengths(key), _lengths(value)
    headers = _encode_headers(batch.column("headers") if "headers" in batch.schema.names else None, n)
    front = _varint_rows(np.zeros(n, np.int64), timestamp_deltas, offset_deltas, key_lengths)  # attributes 0
    value_length = _varint_rows(value_lengths)
    record_lengths = (_sizes(front) + np.maximum(key_lengths, 0) + _sizes(value_length)
                      + np.maximum(value_lengths, 0) + _sizes(headers))
    records = pc.binary_join_element_wise(_varint_rows(record_lengths), front, key, value_length, value, headers,
                                          _EMPTY, null_handling="replace")
    _, positions, data = records.buffers()
    positions = np.frombuffer(positions, np.int32)[records.offset:records.offset + n + 1]
    return memoryview(data)[int(positions[0]):int(positions[-1])]


_EMPTY = pa.scalar(b"", pa.binary())


def _binary_column(batch: pa.RecordBatch, name: str) -> pa.Array:
    if name not in batch.schema.names:
        return pa.nulls(batch.num_rows, pa.binary())
    column = batch.column(name)
    return column if column.type == pa.binary() else column.cast(pa.binary())


def _lengths(column: pa.Array) -> np.ndarray:
    """Each element's byte length, -1 for a null (Kafka's null bytes)."""
    return pc.binary_length(column).fill_null(-1).to_numpy().astype(np.int64)


def _sizes(column: pa.Array) -> np.ndarray:
    return pc.binary_length(column).to_numpy().astype(np.int64)


def _encode_headers(headers: pa.ListArray | None, n: int) -> pa.Array:
    """Each record's headers, encoded: a varint count, then each header's key and value."""
    counts = (np.zeros(n, np.int64) if headers is None else
              pc.list_value_length(headers).fill_null(0).to_numpy().astype(np.int64))
    if not counts.any():
        return _varint_rows(counts)
    header_key, header_value = headers.values.flatten()
    header_key = header_key.cast(pa.binary())
    each = pc.binary_join_element_wise(_varint_rows(_lengths(header_key)), header_key,
                                       _varint_rows(_lengths(header_value)), header_value, _EMPTY,
                                       null_handling="replace")
    per_record = pc.binary_join(pa.ListArray.from_arrays(headers.offsets, each), _EMPTY)
    if headers.null_count:  # a null list may still span child elements: they are not its headers
        per_record = pc.if_else(headers.is_valid(), per_record, _EMPTY)
    return pc.binary_join_element_wise(_varint_rows(counts), per_record, _EMPTY, null_handling="replace")


def _varint_rows(*columns: np.ndarray) -> pa.Array:
    """A binary array whose element i is the zigzag varints (Kafka's varint / varlong) of each column's
    value i, in turn. Built as a byte matrix, one row a record and a few columns a varint, and a mask of
    the bytes in use, so no Python code runs per value."""
    n = len(columns[0])
    zigzags = [((c << 1) ^ (c >> 63)).view(np.uint64) for c in columns]
    widths = [max(1, (int(z.max()).bit_length() + 6) // 7) if n else 1 for z in zigzags]
    matrix = np.zeros((n, sum(widths)), np.uint8)
    in_use = np.ones((n, sum(widths)), bool)
    sizes = np.full(n, len(columns), np.int32)
    column = 0
    for zigzag, width in zip(zigzags, widths, strict=True):
        rest = zigzag.astype(np.uint32) if width <= 4 else zigzag  # narrower arithmetic where it fits
        for j in range(column, column + width):
            if j > column:
                more = in_use[:, j] = rest != 0
                sizes += more
            matrix[:, j] = rest & 0x7F
            rest = rest >> 7
            matrix[:, j] |= (rest != 0).view(np.uint8) << 7  # the continuation bit
        column += width
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(matrix[in_use])])
