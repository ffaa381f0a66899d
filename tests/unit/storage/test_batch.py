"""The stored batch format: headers, IPC messages with a whole-message checksum, plain-Arrow readability."""

from __future__ import annotations

import dataclasses

import msgpack
import pyarrow as pa
import pytest
from storage_helpers import BIG, records, stored

from raystream.errors import CorruptRecordError
from raystream.record import (
    ATTR_CONTROL,
    ATTR_LOG_APPEND_TIME,
    ATTR_TRANSACTIONAL,
    NO_SEQUENCE,
    RECORD_SCHEMA,
    SYSTEM_COLUMNS,
    stored_schema,
    user_schema_of,
)
from raystream.storage.batch import (
    CRC_KEY,
    HEADER_KEY,
    BatchEncoder,
    BatchHeader,
    StoredBatch,
    checksum_of,
    decode,
    parse_frame,
    read_prefix,
)

STORED_SCHEMA = stored_schema(RECORD_SCHEMA)


def _message(batch: StoredBatch) -> bytes:
    encoded = BatchEncoder(batch.data.schema).encode(batch)
    parts = encoded[0] if isinstance(encoded, tuple) else encoded  # (parts, frame) or parts
    return b"".join(p if isinstance(p, bytes) else p.to_pybytes() for p in parts)


@pytest.fixture(scope="module")
def small_message() -> tuple[StoredBatch, bytes]:
    """A small two-record message with a header entry, every header field set."""
    batch = stored(40, 2, timestamps=[7, 5], leader_epoch=3, producer_id=11, producer_epoch=2,
                   base_sequence=9, attributes=ATTR_TRANSACTIONAL, schema_id=4)
    batch = StoredBatch(batch.header, batch.data.set_column(
        4, "headers", pa.array([[{"key": "h", "value": b"x"}], []], RECORD_SCHEMA.field("headers").type)))
    return batch, _message(batch)


# -- header -------------------------------------------------------------------------------------------------
def test_header_pack_unpack_roundtrip_keeps_every_field():
    header = BatchHeader(base_offset=2**40, last_offset_delta=9, record_count=10, first_timestamp=-5,
                         max_timestamp=2**50, leader_epoch=7, producer_id=123456789, producer_epoch=3,
                         base_sequence=100, attributes=ATTR_TRANSACTIONAL | ATTR_CONTROL, schema_id=2)
    assert BatchHeader.unpack(header.pack()) == header
    assert BatchHeader.unpack(BatchHeader(0, 0, 1, 0, 0, 0).pack()) == BatchHeader(0, 0, 1, 0, 0, 0)


def test_header_derived_properties():
    header = BatchHeader(base_offset=100, last_offset_delta=4, record_count=5, first_timestamp=1,
                         max_timestamp=2, leader_epoch=0, base_sequence=10, attributes=ATTR_TRANSACTIONAL)
    assert header.last_offset == 104
    assert header.next_offset == 105
    assert header.last_sequence == 14
    assert header.is_transactional and not header.is_control
    control = dataclasses.replace(header, attributes=ATTR_CONTROL, base_sequence=-1)
    assert control.is_control and not control.is_transactional
    assert control.last_sequence == NO_SEQUENCE
    # A compacted batch keeps its offset range even when records left it.
    compacted = dataclasses.replace(header, record_count=1)
    assert compacted.last_offset == 104 and compacted.next_offset == 105
    assert not BatchHeader(0, 0, 1, 0, 0, 0, attributes=ATTR_LOG_APPEND_TIME).is_transactional


@pytest.mark.parametrize("payload", [msgpack.packb([99, 0, 0, 1, 0, 0, 0]), msgpack.packb({"a": 1}),
                                     msgpack.packb([]), msgpack.packb(5)])
def test_header_unpack_rejects_unknown_format(payload):
    with pytest.raises(CorruptRecordError):
        BatchHeader.unpack(payload)


def test_stored_schema_puts_system_columns_first_and_user_schema_of_strips_them():
    user = pa.schema([("a", pa.int32()), ("b", pa.string())], metadata={b"m": b"1"})
    full = stored_schema(user)
    assert full.names[:2] == list(SYSTEM_COLUMNS)
    assert full.field("_offset").type == pa.int64() and not full.field("_offset").nullable
    assert full.field("_timestamp").type == pa.int64() and not full.field("_timestamp").nullable
    assert full.names[2:] == ["a", "b"]
    assert user_schema_of(full).equals(user, check_metadata=True)


# -- encode / decode --------------------------------------------------------------------------------------------
def test_encode_decode_roundtrip(small_message):
    batch, message = small_message
    decoded = decode(pa.py_buffer(message), STORED_SCHEMA, verify=True)
    assert decoded.header == batch.header
    assert decoded.data.equals(batch.data)
    assert decoded.data.column("headers").to_pylist() == [[{"key": "h", "value": b"x"}], []]


def test_frame_describes_the_message(small_message):
    batch, message = small_message
    frame = parse_frame(pa.py_buffer(message))
    assert frame.total_length == len(message)
    assert frame.metadata_end % 8 == 0 and frame.body_length % 8 == 0
    assert BatchHeader.unpack(frame.header_bytes) == batch.header
    # The stored digits are the CRC-32C of the message with the digits read as the placeholder.
    assert message[frame.crc_start:frame.crc_start + 8] == frame.crc_hex
    assert int(frame.crc_hex, 16) == checksum_of(pa.py_buffer(message), frame)
    assert read_prefix(message) == frame.metadata_end - 8


def test_parse_frame_needs_only_the_metadata(small_message):
    _, message = small_message
    frame = parse_frame(pa.py_buffer(message))
    partial = parse_frame(pa.py_buffer(message[:frame.metadata_end]))
    assert partial == frame
    with pytest.raises(CorruptRecordError, match="truncated message body"):
        decode(pa.py_buffer(message[:frame.metadata_end + 8]), STORED_SCHEMA)


@pytest.mark.parametrize("cut", [0, 3, 7, 8, 20])
def test_truncated_framing_or_metadata_is_corrupt(small_message, cut):
    _, message = small_message
    with pytest.raises(CorruptRecordError):
        parse_frame(pa.py_buffer(message[:cut]))


def test_record_count_mismatch_is_corrupt():
    batch = stored(0, 3)
    lying = StoredBatch(dataclasses.replace(batch.header, record_count=2), batch.data)
    with pytest.raises(CorruptRecordError, match="rows"):
        decode(pa.py_buffer(_message(lying)), STORED_SCHEMA, verify=True)


def test_encoder_output_is_identical_for_identical_batches(small_message):
    batch, message = small_message
    assert _message(batch) == message


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF], ids=hex)
def test_checksum_detects_a_changed_byte_at_every_position(small_message, mask):
    """Framing, flatbuffer metadata (incl. custom metadata and the checksum digits), body: any changed
    byte makes a verified decode raise CorruptRecordError — never another exception, never success."""
    _, message = small_message
    undetected, wrong_error = [], []
    for i in range(len(message)):
        damaged = bytearray(message)
        damaged[i] ^= mask
        try:
            decode(pa.py_buffer(bytes(damaged)), STORED_SCHEMA, verify=True)
        except CorruptRecordError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point is to catch every other kind
            wrong_error.append((i, type(exc).__name__))
        else:
            undetected.append(i)
    assert undetected == [], f"flips not detected at positions {undetected} of {len(message)}"
    assert wrong_error == [], f"flips raised non-CorruptRecordError: {wrong_error}"


def test_checksum_digits_must_match_exactly(small_message):
    """The stored checksum is 8 lowercase hex digits; a changed digit byte that still parses to the same
    number (upper case, leading blank or '+') is still a damaged message."""
    _, message = small_message
    frame = parse_frame(pa.py_buffer(message))
    variants = [frame.crc_hex.upper(), b" " + frame.crc_hex[1:] if frame.crc_hex[:1] == b"0" else None,
                b"+" + frame.crc_hex[1:] if frame.crc_hex[:1] == b"0" else None]
    variants = [v for v in variants if v is not None and v != frame.crc_hex]
    if not variants:
        pytest.skip("this checksum has only the digits 1-9")
    for variant in variants:
        damaged = bytearray(message)
        damaged[frame.crc_start:frame.crc_start + 8] = variant
        with pytest.raises(CorruptRecordError):
            decode(pa.py_buffer(bytes(damaged)), STORED_SCHEMA, verify=True)


def test_unverified_decode_is_zero_copy(small_message):
    _, message = small_message
    buffer = pa.py_buffer(message)
    decoded = decode(buffer, STORED_SCHEMA)
    value_data = decoded.data.column("value").buffers()[2]
    assert buffer.address <= value_data.address < buffer.address + buffer.size


# -- plain Arrow readability ------------------------------------------------------------------------------------
def test_segment_file_is_a_plain_arrow_ipc_stream(make_log):
    log = make_log()
    infos = [log.append(records(3, start=0), leader_epoch=1, now=100),
             log.append(records(2, start=3, timestamps=[5, 9]), leader_epoch=2, now=200)]
    path = log.active_segment.path
    reader = pa.ipc.open_stream(str(path))
    assert reader.schema.equals(STORED_SCHEMA)
    seen = []
    while True:
        try:
            batch, metadata = reader.read_next_batch_with_custom_metadata()
        except StopIteration:
            break
        header = BatchHeader.unpack(metadata[HEADER_KEY])
        assert len(metadata[CRC_KEY]) == 8 and int(metadata[CRC_KEY], 16) >= 0
        seen.append((header, batch))
    assert [h.base_offset for h, _ in seen] == [i.base_offset for i in infos]
    assert [h.leader_epoch for h, _ in seen] == [1, 2]
    assert [h.max_timestamp for h, _ in seen] == [100, 9]
    assert seen[1][1].to_pydict()["_offset"] == [3, 4]
    assert seen[1][1].to_pydict()["_timestamp"] == [5, 9]
    assert seen[0][1].to_pydict()["key"] == [b"k0", b"k1", b"k2"]
    table = pa.ipc.open_stream(str(path)).read_all()
    assert table.num_rows == 5
    assert table.column("_offset").to_pylist() == list(range(5))
    assert log.read(0, BIG)[0].equals(seen[0][1])
