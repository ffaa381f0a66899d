"""The records of one Kafka batch (its uncompressed body) as the Arrow table the replicas append, vectorised.

A body is ``count`` records back to back, each a zigzag varint length then attributes (1 byte), varint
timestamp delta, varint offset delta, key and value (a varint length, -1 or any negative for null, then the
bytes) and a varint header count followed by the headers. Only the chain of record lengths is walked in
Python (one varint per record, where the next record starts depends on it); every other field is read with
numpy for all the records at once: a varint at a vector of positions is a few masked gathers (one per byte
of the longest varint), and keys and values become Arrow binary-view arrays over the body, which Arrow
copies into binary arrays, without a Python object per record. Headers, rare on the hot path, are read per record, only for the records that have some.

Checked as the per-record decoder it replaced checked: each record's fields end exactly where its length
says, the last record ends at the end of the body, no varint is longer than 10 bytes, header keys are
UTF-8, timestamps fit int64 (where the per-record decoder failed with an overflow). Anything else is a
:class:`~raystream.errors.CorruptRecordError`. A batch of few records, or one with a field varint past 64
bits, is read record by record instead, with Python's integers.

Pure functions; thread-safe.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raystream.client.accumulator import PRODUCE_SCHEMA
from raystream.errors import CorruptRecordError
from raystream.record import HEADER_TYPE

_HEADER_FIELDS = HEADER_TYPE.value_type
_INLINE = np.arange(12)  # bytes a binary view holds inline
_INT64_MAX = 2**63 - 1
_PADDING = bytes(_INLINE.size)
#: From this many records in a batch on, the vectorised path is the faster one.
FEW_RECORDS = 64


def decode_records(body: bytes | memoryview, count: int, base_timestamp: int,
                   few: int = FEW_RECORDS) -> pa.RecordBatch:
    """The ``count`` records of a batch body as a ``PRODUCE_SCHEMA`` batch (``_timestamp``: base + delta).
    Fewer than ``few`` records (the vectorised path's fixed cost, ~0.2 ms, is more than a loop's), or a field
    varint past 64 bits (which only Python's integers read as the old decoder did): record by record."""
    data = b"".join((body, _PADDING))  # one copy, padded so that every value's first 12 bytes can be read
    if count < few:
        return _decode_each(data, count, base_timestamp, len(body))
    try:
        return _decode_vectorised(data, count, base_timestamp, len(body))
    except _Overflow:
        return _decode_each(data, count, base_timestamp, len(body))


def _decode_each(data: bytes, count: int, base_timestamp: int, size: int) -> pa.RecordBatch:
    """Record by record, in Python."""
    keys, values, headers, timestamps = [], [], [], []
    try:
        starts, ends = _record_bounds(data, count, size)
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            delta, position = _long_varint(data, start + 1)  # after the attributes byte
            timestamps.append(base_timestamp + ((delta >> 1) ^ -(delta & 1)))
            _, position = _long_varint(data, position)  # offset delta
            key, position = _field(data, position)
            value, position = _field(data, position)
            keys.append(key)
            values.append(value)
            record_headers: list[dict] = []
            header_count, position = _long_varint(data, position)
            for _ in range((header_count >> 1) ^ -(header_count & 1)):
                header_key, position = _field(data, position)
                header_value, position = _field(data, position)
                record_headers.append({"key": None if header_key is None else header_key.decode(),
                                       "value": header_value})
            headers.append(record_headers)
            if position != end:
                raise CorruptRecordError("record length does not match its fields")
        return pa.RecordBatch.from_arrays(
            [pa.array(keys, pa.binary()), pa.array(values, pa.binary()), pa.array(headers, HEADER_TYPE),
             pa.array(timestamps, pa.int64())], schema=PRODUCE_SCHEMA)
    except (IndexError, UnicodeDecodeError, OverflowError, pa.ArrowInvalid) as exc:
        raise CorruptRecordError(f"undecodable record: {exc}") from None


def _decode_vectorised(data: bytes, count: int, base_timestamp: int, size: int) -> pa.RecordBatch:
    padded = np.frombuffer(data, np.uint8)
    u = padded[:size]
    starts, ends = _equal_record_bounds(u, count) or _record_bounds(data, count, size)
    position = starts + 1  # the record's attributes byte: unused by Kafka
    timestamp_deltas, position = _varints(u, position)
    _, position = _varints(u, position)  # offset delta: raystream assigns consecutive offsets, as Kafka does
    key_lengths, position = _varints(u, position)
    key_starts, position = position, position + np.maximum(key_lengths, 0)
    value_lengths, position = _varints(u, position)
    value_starts, position = position, position + np.maximum(value_lengths, 0)
    header_counts, position = _varints(u, position)
    if count and (int(timestamp_deltas.max()) > _INT64_MAX - base_timestamp
                  or int(timestamp_deltas.min()) < -_INT64_MAX - 1 - base_timestamp):
        raise CorruptRecordError("record timestamp out of the int64 range")
    headers = _headers(data, header_counts, position, ends)  # reads never pass ``ends``: all <= len(body)
    with_headers = header_counts > 0
    if not np.array_equal(position[~with_headers], ends[~with_headers]):
        raise CorruptRecordError("record length does not match its fields")
    return pa.RecordBatch.from_arrays(
        [_binary(padded, key_starts, key_lengths), _binary(padded, value_starts, value_lengths), headers,
         pa.array(base_timestamp + timestamp_deltas, pa.int64())], schema=PRODUCE_SCHEMA)


class _Overflow(Exception):
    """A varint past 64 bits, which numpy's integers cannot hold."""


def _record_bounds(data: bytes, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each record's fields start (after its length varint) and where it ends; the records must fill
    the body exactly. The one loop over records: 1- and 2-byte lengths (records under 8 KiB) inline."""
    starts, ends = [0] * count, [0] * count
    position = i = 0
    try:
        for i in range(count):
            byte = data[position]
            if byte < 0x80:
                value, position = byte, position + 1
            elif data[position + 1] < 0x80:
                value, position = (byte & 0x7F) | (data[position + 1] << 7), position + 2
            else:
                value, position = _long_varint(data, position)
            length = (value >> 1) ^ -(value & 1)
            if length < 0:
                raise CorruptRecordError(f"record of negative length {length}")
            starts[i] = position
            position += length
            ends[i] = position
    except IndexError:
        raise CorruptRecordError(f"undecodable record: the body ends inside record {i} of {count}") from None
    if position != size:
        raise CorruptRecordError("record batch holds bytes after its last record" if position < size else
                                 "a record runs past the end of its batch")
    return np.array(starts, np.int64), np.array(ends, np.int64)


def _equal_record_bounds(u: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The bounds when every record has the same size (what many producers write): then the body is
    ``count`` equal strides, each starting with the same length varint bytes; checked, not assumed (None
    otherwise)."""
    if not count or len(u) % count:
        return None
    stride = len(u) // count
    width = 1
    while width <= min(stride, 10) and u[width - 1] & 0x80:
        width += 1
    if width > min(stride, 10):
        return None
    value = 0
    for j in range(width):
        value |= int(u[j] & 0x7F) << (7 * j)
    if (value >> 1) ^ -(value & 1) != stride - width:
        return None
    firsts = np.arange(count, dtype=np.int64) * stride
    if not all(np.array_equal(u[firsts + j], np.full(count, u[j])) for j in range(width)):
        return None
    return firsts + width, firsts + stride


def _long_varint(data: bytes, position: int) -> tuple[int, int]:
    """An unsigned varint of any length at ``position`` (at most 10 bytes), and the position after it."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise CorruptRecordError("varint longer than 10 bytes")


def _varints(u: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The zigzag varint starting at each position, and the position after it. A position at or past the end
    reads the last byte instead (the caller's end check then fails: positions only grow)."""
    last = len(u) - 1
    if last < 0:  # no records (the bounds refused any in an empty body)
        return np.zeros(len(positions), np.int64), positions
    byte = u[np.minimum(positions, last)].astype(np.uint64)
    value = byte & 0x7F
    lengths = np.ones(len(positions), np.int64)
    active = np.flatnonzero(byte & 0x80)
    shift = 7
    while active.size:
        if shift > 63:
            raise CorruptRecordError("varint longer than 10 bytes")
        byte = u[np.minimum(positions[active] + shift // 7, last)].astype(np.uint64)
        if shift == 63 and (byte & 0x7E).any():  # a 10th byte with bits past the 64th
            raise _Overflow
        value[active] |= (byte & 0x7F) << np.uint64(shift)
        lengths[active] += 1
        active = active[(byte & 0x80) != 0]
        shift += 7
    signed = (value >> np.uint64(1)).view(np.int64) ^ -(value & np.uint64(1)).view(np.int64)
    return signed, positions + lengths


def _binary(padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A binary array of the byte ranges ``[start, start + length)`` of the body (a negative length: null);
    ``padded`` is the body and 12 more bytes.

    Built as an Arrow binary-view array over ``u`` (16 bytes per element: the length, then the bytes inline
    when at most 12, else a 4-byte prefix, buffer 0 and the offset), which Arrow's cast copies into a plain
    binary array in C++."""
    n = len(starts)
    valid = lengths >= 0
    sizes = np.where(valid, lengths, 0).astype(np.int32)
    if n and int(starts[-1]) + int(sizes[-1]) > 2**31 - 1:
        raise CorruptRecordError("record batch body over 2 GiB")
    views = np.zeros((n, 16), np.uint8)
    views[:, 0:4] = sizes.view(np.uint8).reshape(n, 4)
    # The first 12 bytes of each value: a row gather from a sliding-window view of the (padded) body.
    head = np.lib.stride_tricks.sliding_window_view(padded, _INLINE.size)[starts]
    head[_INLINE[None, :] >= sizes[:, None]] = 0  # an inline value is zero-padded
    views[:, 4:16] = head
    long = sizes > _INLINE.size
    if long.any():
        where = np.zeros((int(long.sum()), 2), np.int32)  # buffer index 0, then the offset
        where[:, 1] = starts[long]
        views[long, 8:16] = where.view(np.uint8).reshape(-1, 8)
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    array = pa.Array.from_buffers(pa.binary_view(), n, [validity, pa.py_buffer(views), pa.py_buffer(padded)])
    return array.cast(pa.binary())


def _headers(data: bytes, counts: np.ndarray, positions: np.ndarray, ends: np.ndarray) -> pa.Array:
    """Each record's headers (a list of {key: str, value: bytes | None}); read per record, for the records
    whose header count is positive (a negative count reads as none, as it always did)."""
    n = len(counts)
    rows = np.flatnonzero(counts > 0)
    if not rows.size:
        empty = pa.StructArray.from_arrays([pa.array([], pa.string()), pa.array([], pa.binary())],
                                           fields=list(_HEADER_FIELDS))
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), empty, type=HEADER_TYPE)
    per_record: list[list[dict]] = [[] for _ in range(n)]
    try:
        for row in rows.tolist():
            position, record = int(positions[row]), per_record[row]
            for _ in range(int(counts[row])):
                key, position = _field(data, position)
                value, position = _field(data, position)
                record.append({"key": None if key is None else key.decode(), "value": value})
            if position != ends[row]:
                raise CorruptRecordError("record length does not match its fields")
    except (IndexError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"undecodable record header: {exc}") from None
    return pa.array(per_record, HEADER_TYPE)


def _field(data: bytes, position: int) -> tuple[bytes | None, int]:
    """A varint-length-prefixed field (a negative length: None) at ``position``, and the position after it."""
    value, position = _long_varint(data, position)
    length = (value >> 1) ^ -(value & 1)
    if length < 0:
        return None, position
    if position + length > len(data):
        raise CorruptRecordError("field runs past the end of its record")
    return data[position:position + length], position + length
