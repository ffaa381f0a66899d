"""Stored record batches: the on-disk form of one batch and its header.

A segment file is an Arrow IPC *stream*: one schema message, then one record-batch message per batch
(no end-of-stream marker, so the file can grow; pyarrow's stream reader reads it as it is). A stored
batch's columns are the system columns ``_offset`` and ``_timestamp`` (int64, one value per row) followed
by the user's columns. What Kafka keeps in its RecordBatch header travels in the IPC message's
``custom_metadata`` (key ``raystream.batch``, a msgpack array), so the log can be rebuilt from the data
files alone and any Arrow tool can read them; so do the batch's column statistics (key ``raystream.stats``,
see :mod:`raystream.storage.statistics`), which let a filtered read skip a batch without decoding it.

The checksum (CRC-32C, key ``raystream.crc``, 8 hex digits) covers the *whole* message — framing,
flatbuffer metadata (with the checksum's own 8 bytes read as ``b"~crc32c~"``) and body — so a flipped byte
anywhere, including in the buffer layout, is caught. Writing needs a single serialisation: the message is
serialised with the placeholder, checksummed, and the 8 digits are patched in place.

Pure functions and value objects; thread-safe.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

import crc32c
import msgpack
import pyarrow as pa
from flatbuffers import encode
from flatbuffers import number_types as fb_types
from flatbuffers import table as fb_table

from raystream.errors import CorruptRecordError
from raystream.record import (
    ATTR_COMMIT_MARKER,
    ATTR_CONTROL,
    ATTR_TRANSACTIONAL,
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    NO_SEQUENCE,
)
from raystream.storage import statistics
from raystream.storage.statistics import STATS_KEY

HEADER_KEY = b"raystream.batch"
CRC_KEY = b"raystream.crc"
CRC_PLACEHOLDER = b"~crc32c~"  # what the checksum digits are read as while checksumming
FORMAT_VERSION = 1

#: Bytes of IPC framing before the flatbuffer metadata: continuation marker + int32 metadata length.
FRAME_PREFIX_BYTES = 8
_CONTINUATION = 0xFFFFFFFF
_RECORD_BATCH_HEADER_TYPE = 3  # org.apache.arrow.flatbuf.MessageHeader.RecordBatch


@dataclasses.dataclass(frozen=True)
class BatchHeader:
    """What Kafka's RecordBatch header carries. ``last_offset_delta`` survives compaction even when
    records are removed, so a batch keeps covering its original offset range."""

    base_offset: int
    last_offset_delta: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    leader_epoch: int
    producer_id: int = NO_PRODUCER_ID
    producer_epoch: int = NO_PRODUCER_EPOCH
    base_sequence: int = NO_SEQUENCE
    attributes: int = 0
    schema_id: int = 0

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)

    @property
    def is_commit_marker(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL and self.attributes & ATTR_COMMIT_MARKER)

    @property
    def last_sequence(self) -> int:
        if self.base_sequence < 0:
            return NO_SEQUENCE
        return self.base_sequence + self.last_offset_delta

    def pack(self) -> bytes:
        # Explicit fields: dataclasses.astuple deep-copies and costs more than the msgpack itself.
        return msgpack.packb((FORMAT_VERSION, self.base_offset, self.last_offset_delta, self.record_count,
                              self.first_timestamp, self.max_timestamp, self.leader_epoch, self.producer_id,
                              self.producer_epoch, self.base_sequence, self.attributes, self.schema_id))

    @classmethod
    def unpack(cls, data: bytes) -> BatchHeader:
        try:
            fields = msgpack.unpackb(data)
        except Exception as exc:  # msgpack raises several types for garbage; all mean a corrupt header
            raise CorruptRecordError(f"undecodable batch header: {exc}") from None
        if (not isinstance(fields, list) or len(fields) != _HEADER_FIELDS + 1 or fields[0] != FORMAT_VERSION
                or not all(type(f) is int for f in fields)):
            raise CorruptRecordError(f"unknown batch header format {fields!r:.80}")
        return cls(*fields[1:])


_HEADER_FIELDS = len(dataclasses.fields(BatchHeader))


@dataclasses.dataclass(frozen=True)
class StoredBatch:
    """A batch as the log keeps it: header plus an Arrow batch whose first columns are the system columns
    (unless a read projected them away)."""

    header: BatchHeader
    data: pa.RecordBatch

    @property
    def base_offset(self) -> int:
        return self.header.base_offset

    @property
    def last_offset(self) -> int:
        return self.header.last_offset


@dataclasses.dataclass(frozen=True)
class RawBatches:
    """Consecutive stored batches of one segment as the segment holds them: ``data`` is a slice of the file
    (whole IPC messages: framing, metadata with header, statistics and checksum, body) and ``schema`` the
    segment's schema. What a leader ships to its followers: no decode on the leader, no re-encode on the
    follower, which checks each message (:func:`raw_batches`) and writes its bytes verbatim."""

    schema: pa.Schema
    data: pa.Buffer


@dataclasses.dataclass(frozen=True)
class RawBatch:
    """One checked message of a :class:`RawBatches` (made only by :func:`raw_batches`)."""

    header: BatchHeader
    frame: Frame
    message: pa.Buffer
    schema: pa.Schema


def raw_batches(group: RawBatches) -> Iterator[RawBatch]:
    """The messages of ``group`` in order, each parsed and its checksum verified here, where the bytes
    enter the process (CorruptRecordError for a torn, malformed or altered message: nothing after it is
    yielded)."""
    data, position = group.data, 0
    while position < data.size:
        rest = data.slice(position)
        frame = parse_frame(rest)
        if frame.total_length > rest.size:
            raise CorruptRecordError(f"torn message at byte {position} of a replicated range")
        message = rest.slice(0, frame.total_length)
        actual = checksum_of(message, frame)
        if frame.crc_hex != b"%08x" % actual:
            raise CorruptRecordError(f"checksum mismatch in a replicated batch: stored "
                                     f"{frame.crc_hex.decode(errors='replace')}, computed {actual:08x}")
        yield RawBatch(BatchHeader.unpack(frame.header_bytes), frame, message, group.schema)
        position += frame.total_length


# -- encoding ----------------------------------------------------------------------------------------------
class BatchEncoder:
    """Serialises stored batches of one schema to IPC messages. Not thread-safe (cheap: make one per owner)."""

    #: Room for the flatbuffer metadata and padding on top of the body size pyarrow predicts.
    _SLACK_BYTES = 64 * 1024

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.schema_message = schema.serialize()
        self._scratch: pa.Buffer | None = None

    def encode(self, batch: StoredBatch) -> tuple[list, Frame]:
        """Return the complete IPC message (framing, metadata, body) with its checksum filled in, as two
        parts — patched metadata (bytes) and body (pa.Buffer) — so a writer can ``writev`` them: the body,
        nearly all the bytes, is never copied again. The body is a view of a scratch buffer this encoder
        reuses: it is valid until the next ``encode`` call (write it before encoding the next batch)."""
        header_bytes = batch.header.pack()
        stats_bytes = statistics.compute(batch.data)
        metadata = {HEADER_KEY: header_bytes, STATS_KEY: stats_bytes, CRC_KEY: CRC_PLACEHOLDER}
        needed = pa.ipc.get_record_batch_size(batch.data) + self.schema_message.size + self._SLACK_BYTES
        if self._scratch is None or self._scratch.size < needed:
            self._scratch = pa.allocate_buffer(needed)  # reused: no allocation or regrowth per batch
        sink = pa.FixedSizeBufferWriter(self._scratch)
        with pa.ipc.new_stream(sink, self.schema) as writer:
            writer.write_batch(batch.data, custom_metadata=metadata)
        end = sink.tell()
        # The stream is schema message + our message + 8-byte end-of-stream marker.
        message = self._scratch.slice(self.schema_message.size, end - self.schema_message.size - 8)
        metadata_end = FRAME_PREFIX_BYTES + read_prefix(message)
        patched = bytearray(memoryview(message)[:metadata_end])
        # Find the placeholder directly (a full flatbuffer parse costs more than the rest of the encode);
        # fall back to parsing should the placeholder bytes also occur elsewhere in the metadata.
        crc_start = patched.find(CRC_PLACEHOLDER)
        if crc_start < 0 or patched.find(CRC_PLACEHOLDER, crc_start + 1) >= 0:
            crc_start = parse_frame(message).crc_start
        checksum = crc32c.crc32c(message)
        patched[crc_start:crc_start + 8] = b"%08x" % checksum
        frame = Frame(metadata_end, message.size - metadata_end, header_bytes, b"%08x" % checksum, crc_start,
                      stats_bytes)
        return [bytes(patched), message.slice(metadata_end)], frame


# -- decoding ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Frame:
    """Where the parts of one IPC message lie, relative to the message start."""

    metadata_end: int  # framing + flatbuffer metadata (padded)
    body_length: int
    header_bytes: bytes
    crc_hex: bytes
    crc_start: int
    stats_bytes: bytes = b""  # msgpack column statistics; empty for batches written before they existed

    @property
    def total_length(self) -> int:
        return self.metadata_end + self.body_length


_PREFIX = struct.Struct("<Ii")


def read_prefix(data) -> int:
    """Metadata length from the 8 framing bytes; raises CorruptRecordError on a bad marker."""
    if len(data) < FRAME_PREFIX_BYTES:
        raise CorruptRecordError("truncated message framing")
    marker, metadata_length = _PREFIX.unpack_from(data, 0)
    if marker != _CONTINUATION or metadata_length <= 0 or metadata_length % 8:
        raise CorruptRecordError(f"bad message framing (marker={marker:#x}, metadata_length={metadata_length})")
    return metadata_length


def parse_frame(message) -> Frame:
    """Parse the framing and the flatbuffer metadata at the start of ``message`` (any buffer).

    Only the metadata part must be present, so a caller can parse before it knows the body is complete.
    """
    metadata_length = read_prefix(message)
    metadata_end = FRAME_PREFIX_BYTES + metadata_length
    if len(message) < metadata_end:
        raise CorruptRecordError("truncated message metadata")
    meta = memoryview(message)[FRAME_PREFIX_BYTES:metadata_end].tobytes()
    try:
        root = encode.Get(fb_types.UOffsetTFlags.packer_type, meta, 0)
        tab = fb_table.Table(meta, root)
        header_type = tab.Get(fb_types.Uint8Flags, tab.Offset(6) + tab.Pos) if tab.Offset(6) else 0
        body_length = tab.Get(fb_types.Int64Flags, tab.Offset(10) + tab.Pos) if tab.Offset(10) else 0
        custom = _custom_metadata(tab)
    except Exception as exc:  # the flatbuffers runtime raises IndexError, struct.error, TypeError, ...
        raise CorruptRecordError(f"unreadable message metadata: {exc}") from None
    if header_type != _RECORD_BATCH_HEADER_TYPE:
        raise CorruptRecordError(f"message is not a record batch (header type {header_type})")
    if body_length < 0 or body_length % 8:
        raise CorruptRecordError(f"bad body length {body_length}")
    if HEADER_KEY not in custom or CRC_KEY not in custom:
        raise CorruptRecordError("record batch without raystream header")
    header_bytes, _ = custom[HEADER_KEY]
    crc_hex, crc_start = custom[CRC_KEY]
    if len(crc_hex) != 8:
        raise CorruptRecordError("bad checksum field")
    stats_bytes = custom.get(STATS_KEY, (b"", 0))[0]
    return Frame(metadata_end, body_length, header_bytes, crc_hex, FRAME_PREFIX_BYTES + crc_start, stats_bytes)


def _custom_metadata(tab: fb_table.Table) -> dict[bytes, tuple[bytes, int]]:
    """Message.custom_metadata (field 4) as {key: (value, value position in the metadata)}."""
    out: dict[bytes, tuple[bytes, int]] = {}
    offset = tab.Offset(12)
    if not offset:
        return out
    vector = tab.Vector(offset)
    for i in range(tab.VectorLen(offset)):
        kv = fb_table.Table(tab.Bytes, tab.Indirect(vector + 4 * i))
        key_off, value_off = kv.Offset(4), kv.Offset(6)
        if not key_off or not value_off:
            continue
        key = kv.String(key_off + kv.Pos)
        value_pos = value_off + kv.Pos
        value_pos += encode.Get(fb_types.UOffsetTFlags.packer_type, tab.Bytes, value_pos)
        length = encode.Get(fb_types.UOffsetTFlags.packer_type, tab.Bytes, value_pos)
        start = value_pos + 4
        out[key] = (bytes(tab.Bytes[start:start + length]), start)
    return out


def checksum_of(message: pa.Buffer, frame: Frame) -> int:
    """CRC-32C of the message with the checksum digits read as the placeholder."""
    prefix = bytearray(memoryview(message)[:frame.metadata_end])
    prefix[frame.crc_start:frame.crc_start + 8] = CRC_PLACEHOLDER
    return crc32c.crc32c(message.slice(frame.metadata_end, frame.body_length), crc32c.crc32c(prefix))


def decode(message: pa.Buffer, schema: pa.Schema, frame: Frame | None = None,
           verify: bool = False) -> StoredBatch:
    """Decode one complete message (zero-copy: the batch's buffers point into ``message``)."""
    frame = frame or parse_frame(message)
    if message.size < frame.total_length:
        raise CorruptRecordError("truncated message body")
    if verify:
        actual = checksum_of(message, frame)
        if frame.crc_hex != b"%08x" % actual:  # compare the digits exactly: int() forgives case and spaces
            raise CorruptRecordError(f"checksum mismatch: stored {frame.crc_hex.decode(errors='replace')}, "
                                     f"computed {actual:08x}")
    header = BatchHeader.unpack(frame.header_bytes)
    try:
        data = pa.ipc.read_record_batch(pa.ipc.read_message(message.slice(0, frame.total_length)), schema)
    except (pa.ArrowInvalid, pa.ArrowIOError, pa.ArrowTypeError) as exc:
        raise CorruptRecordError(f"undecodable batch at offset {header.base_offset}: {exc}") from None
    if data.num_rows != header.record_count:
        raise CorruptRecordError(f"batch at offset {header.base_offset} has {data.num_rows} rows, "
                                 f"header says {header.record_count}")
    return StoredBatch(header, data)

