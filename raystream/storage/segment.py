"""One log segment: an Arrow IPC stream file of stored batches plus its sparse offset and time indexes.

Files (``<base>`` is the 20-digit zero-padded base offset, so ``ls`` lists segments in offset order)::

    <base>.arrows      schema message, then one record-batch message per stored batch
    <base>.index       sparse offset index
    <base>.timeindex   sparse time index

Appends go to the end of the file with ``writev`` at the known size; reads map the file and hand out
zero-copy views. **Views stay valid until the segment is truncated or the process unmaps the file**: the
owner must serialise or copy them before it truncates (Linux keeps the pages of a deleted file alive, so
deleting a segment does not invalidate views; shrinking it does).

Not thread-safe: the owning :class:`~raystream.storage.log.Log` serialises every call.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from raystream.errors import CorruptRecordError
from raystream.storage import statistics
from raystream.storage.batch import (
    BatchEncoder,
    BatchHeader,
    Frame,
    StoredBatch,
    decode,
    parse_frame,
    read_prefix,
)
from raystream.storage.index import SparseIndex, offset_index, time_index

DATA_SUFFIX = ".arrows"
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"
#: Relative offsets are stored as uint32 in the index, so one segment spans at most this many offsets.
MAX_RELATIVE_OFFSET = 2**32 - 1
NO_TIMESTAMP = -1


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """What a scan of a segment found: ``valid_bytes`` ends at the last good batch."""

    valid_bytes: int
    batches: int
    error: str | None


class LogSegment:
    """A segment: its data file, its indexes and the summary the log needs (size, offsets, timestamps)."""

    def __init__(self, directory: Path, base_offset: int, schema: pa.Schema, index_interval_bytes: int) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.schema = schema
        self.index_interval_bytes = index_interval_bytes
        name = segment_name(base_offset)
        self.path = directory / (name + DATA_SUFFIX)
        self.offset_index: SparseIndex = offset_index(directory / (name + INDEX_SUFFIX))
        self.time_index: SparseIndex = time_index(directory / (name + TIME_INDEX_SUFFIX))
        self._encoder: BatchEncoder | None = None
        self._fd: int | None = None
        self._map: pa.Buffer | None = None
        self.size = 0
        self.data_start = 0
        self.next_offset = base_offset
        self.max_timestamp = NO_TIMESTAMP
        self.offset_of_max_timestamp = base_offset
        self.rolling_timestamp: int | None = None  # max timestamp of the first batch (Kafka's segment.ms base)
        self.batch_count = 0
        self._bytes_since_index_entry = 0
        # position -> (frame, header) of every batch seen (appended or scanned): parsing an IPC message's
        # flatbuffer metadata in Python costs ~35 us, far more than the zero-copy decode of the batch.
        self._frames: dict[int, tuple[Frame, BatchHeader]] = {}
        # position -> statistics guarantee over ``_guarantee_schema`` (see :meth:`guarantee`).
        self._guarantees: dict[int, object] = {}
        self._guarantee_schema: pa.Schema | None = None

    # -- life cycle ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, base_offset: int, schema: pa.Schema, index_interval_bytes: int,
               suffix: str = "") -> LogSegment:
        segment = cls(directory, base_offset, schema, index_interval_bytes)
        if suffix:
            segment.path = segment.path.with_name(segment.path.name + suffix)
        schema_message = schema.serialize()
        segment._fd = os.open(segment.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(segment._fd, schema_message)
        segment.size = segment.data_start = schema_message.size
        return segment

    @classmethod
    def open(cls, path: Path, index_interval_bytes: int) -> LogSegment:
        """Open an existing data file (any suffix); the schema is read from the file itself."""
        base_offset = int(path.name.split(".")[0])
        with open(path, "rb") as f:
            head = f.read(8)
            try:
                metadata_length = read_prefix(head)
                schema = pa.ipc.read_schema(pa.py_buffer(head + f.read(metadata_length)))
            except (CorruptRecordError, pa.ArrowException) as exc:
                raise CorruptRecordError(f"segment {path.name} has no readable schema: {exc}") from None
        segment = cls(path.parent, base_offset, schema, index_interval_bytes)
        segment.path = path
        segment.data_start = 8 + metadata_length
        segment.size = path.stat().st_size
        segment._fd = os.open(path, os.O_RDWR)
        return segment

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._map = None

    def delete(self, data_only: bool = False) -> None:
        """Remove the files (``data_only``: just the data file — a cleaned segment not yet swapped in
        shares its index file names with the live segment it would replace)."""
        self.close()
        paths = (self.path,) if data_only else (self.path, self.offset_index.path, self.time_index.path)
        for path in paths:
            path.unlink(missing_ok=True)

    def rename_suffix(self, suffix: str) -> None:
        """Rename the data file to ``<base>.arrows<suffix>`` (``suffix=''`` restores the plain name)."""
        target = self.directory / (segment_name(self.base_offset) + DATA_SUFFIX + suffix)
        os.replace(self.path, target)
        self.path = target

    # -- append -------------------------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        return self.batch_count == 0

    def fits(self, header: BatchHeader) -> bool:
        return header.last_offset - self.base_offset <= MAX_RELATIVE_OFFSET

    def roll_reason(self, header: BatchHeader, schema: pa.Schema, size: int, segment_bytes: int,
                    segment_ms: int) -> str | None:
        """Why appending the batch of ``header`` and ``schema`` (``size`` bytes encoded) must start a new
        segment, None if it may go here (Kafka's ``LogSegment.shouldRoll``)."""
        if not self.schema.equals(schema):
            return "schema change"
        if self.is_empty:
            return None
        if self.size + size > segment_bytes:
            return "segment.bytes"
        if (self.rolling_timestamp is not None
                and header.max_timestamp - self.rolling_timestamp >= segment_ms):
            # As Kafka: time is measured in record timestamps, so replaying old data rolls as it did then.
            return "segment.ms"
        if not self.fits(header):
            return "relative offset overflow"
        return None

    def append(self, batch: StoredBatch, encoded: tuple[list, Frame] | None = None) -> int:
        """Write one stored batch at the end (``encoded``: its message, if the caller already encoded it
        to size it); returns the bytes written."""
        if encoded is None:
            if self._encoder is None:
                self._encoder = BatchEncoder(self.schema)
            encoded = self._encoder.encode(batch)
        return self.append_encoded(batch.header, encoded)

    def append_encoded(self, header: BatchHeader, encoded: tuple[list, Frame]) -> int:
        """Write one batch's complete message, given as parts (bytes or buffers) and its frame, at the end;
        returns the bytes written."""
        assert self._fd is not None, "append to a closed segment"
        assert header.base_offset >= self.next_offset, (header.base_offset, self.next_offset)
        parts, frame = encoded
        written = os.pwritev(self._fd, parts, self.size)
        expected = sum(len(p) if isinstance(p, bytes) else p.size for p in parts)
        if written != expected:  # a short write leaves a torn tail; recovery will cut it
            raise OSError(f"short write to {self.path.name}: {written} of {expected} bytes")
        self._note_batch(self.size, header)
        self._frames[self.size] = (frame, header)
        self.size += written
        self._bytes_since_index_entry += written
        return written

    def _note_batch(self, position: int, header: BatchHeader) -> None:
        """Update summary and indexes for a batch at ``position`` (on append and on rebuild)."""
        if self.batch_count == 0:
            self.rolling_timestamp = header.max_timestamp
        if header.max_timestamp > self.max_timestamp:
            self.max_timestamp = header.max_timestamp
            self.offset_of_max_timestamp = header.base_offset
        if self._bytes_since_index_entry >= self.index_interval_bytes or self.batch_count == 0:
            self.offset_index.append(header.base_offset - self.base_offset, position)
            self._append_time_entry()
            self._bytes_since_index_entry = 0
        self.next_offset = header.next_offset
        self.batch_count += 1

    def _append_time_entry(self) -> None:
        """Time index entry for the max timestamp so far (Kafka's semantics: (max so far, its offset))."""
        keys = self.time_index.keys
        if self.max_timestamp > (keys[-1] if keys else NO_TIMESTAMP):
            self.time_index.append(self.max_timestamp, self.offset_of_max_timestamp - self.base_offset)

    def flush(self, indexes: bool = True) -> None:
        """fsync the data; with ``indexes`` also write the index files. The active segment's indexes are
        written only when it is sealed or closed: after a crash recovery rebuilds them from the data
        anyway, so writing them on every flush would buy nothing."""
        if self._fd is not None:
            os.fsync(self._fd)
        if indexes:
            self._append_time_entry()  # so a reopened segment knows its true max timestamp
            self.offset_index.flush()
            self.time_index.flush()

    # -- read ---------------------------------------------------------------------------------------------
    def _mapped(self) -> pa.Buffer:
        """A zero-copy view of the whole file, remapped when the file grew since the last mapping."""
        if self._map is None or self._map.size < self.size:
            with pa.memory_map(str(self.path)) as mm:
                self._map = mm.read_buffer()
        return self._map

    def frames(self, position: int | None = None) -> Iterator[tuple[int, Frame, BatchHeader, pa.Buffer]]:
        """Yield (position, frame, header, remaining view) for each complete message from ``position``."""
        view = self._mapped()
        position = self.data_start if position is None else position
        end = min(self.size, view.size)
        while position < end:
            rest = view.slice(position, end - position)
            cached = self._frames.get(position)
            if cached is None:
                frame = parse_frame(rest)
                if frame.total_length > rest.size:
                    raise CorruptRecordError(f"torn batch at position {position} of {self.path.name}")
                cached = self._frames[position] = (frame, BatchHeader.unpack(frame.header_bytes))
            yield position, cached[0], cached[1], rest
            position += cached[0].total_length

    def batches(self, start_offset: int, verify: bool = False) -> Iterator[tuple[int, StoredBatch]]:
        """Yield (position, batch) for every stored batch whose last offset is >= ``start_offset``, starting
        from the offset index's floor entry (a short scan, never the whole segment)."""
        for pos, frame, _, rest in self.frames_from(start_offset):
            yield pos, decode(rest.slice(0, frame.total_length), self.schema, frame, verify=verify)

    def frames_from(self, start_offset: int) -> Iterator[tuple[int, Frame, BatchHeader, pa.Buffer]]:
        """:meth:`frames` of the batches whose last offset is >= ``start_offset`` (nothing decoded)."""
        entry = self.offset_index.floor(max(0, start_offset - self.base_offset))
        for item in self.frames(entry[1] if entry else self.data_start):
            if item[2].last_offset >= start_offset:
                yield item

    def decode_at(self, frame: Frame, rest: pa.Buffer) -> StoredBatch:
        """Decode the batch :meth:`frames` yielded as ``(frame, rest)`` (zero-copy)."""
        return decode(rest.slice(0, frame.total_length), self.schema, frame)

    def guarantee(self, position: int, frame: Frame, header: BatchHeader, target_schema: pa.Schema):
        """The statistics guarantee of the batch at ``position`` over ``target_schema`` (cached: building
        the expression costs more than simplifying a filter against it)."""
        if self._guarantee_schema is not target_schema and (self._guarantee_schema is None
                                                            or not target_schema.equals(self._guarantee_schema)):
            self._guarantees.clear()
            self._guarantee_schema = target_schema
        found = self._guarantees.get(position)
        if found is None:
            found = self._guarantees[position] = statistics.guarantee(frame.stats_bytes, header, self.schema,
                                                                      target_schema)
        return found

    def headers(self) -> Iterator[tuple[int, BatchHeader]]:
        for pos, _, header, _ in self.frames():
            yield pos, header

    def find_offset_by_timestamp(self, timestamp: int, start_offset: int) -> int | None:
        """The first offset >= ``start_offset`` whose timestamp is >= ``timestamp`` in this segment."""
        entry = self.time_index.floor(timestamp - 1)
        scan_from = max(start_offset, self.base_offset + entry[1] if entry else self.base_offset)
        for _, batch in self.batches(scan_from):
            if batch.header.max_timestamp < timestamp or batch.data.num_rows == 0:
                continue
            offsets = batch.data.column(0).to_numpy()
            timestamps = batch.data.column(1).to_numpy()
            hits = np.nonzero((timestamps >= timestamp) & (offsets >= start_offset))[0]
            if hits.size:
                return int(offsets[hits[0]])
        return None

    # -- recovery and truncation ----------------------------------------------------------------------------
    def _reset_summary(self) -> None:
        self.offset_index.clear()
        self.time_index.clear()
        self.next_offset = self.base_offset
        self.max_timestamp = NO_TIMESTAMP
        self.offset_of_max_timestamp = self.base_offset
        self.rolling_timestamp = None
        self.batch_count = 0
        self._bytes_since_index_entry = 0
        self._frames.clear()
        self._guarantees.clear()

    def rebuild(self, verify: bool) -> ScanResult:
        """Scan every batch, (optionally) verifying checksums and decodability; rebuild indexes and the
        summary from the intact prefix. Does not modify the file (see :meth:`truncate_bytes`)."""
        self._reset_summary()
        valid, count, error = self.data_start, 0, None
        previous_next = self.base_offset
        try:
            for position, frame, header, rest in self.frames():
                if verify:
                    decode(rest.slice(0, frame.total_length), self.schema, frame, verify=True)
                if header.base_offset < previous_next or header.last_offset_delta < 0:
                    raise CorruptRecordError(f"batch at position {position} has offset {header.base_offset} "
                                             f"below the previous batch's end {previous_next}")
                self._note_batch(position, header)
                self._bytes_since_index_entry += frame.total_length
                previous_next = header.next_offset
                valid, count = position + frame.total_length, count + 1
        except CorruptRecordError as exc:
            error = str(exc)
        return ScanResult(valid, count, error)

    def load_or_rebuild_indexes(self) -> None:
        """After a clean shutdown: trust the index files if they are consistent, else rebuild them."""
        if self.offset_index.load() and self.time_index.load() and self._summary_from_tail():
            return
        self.rebuild(verify=False)

    def _summary_from_tail(self) -> bool:
        """Recompute the summary from the last index entry onward (a short scan)."""
        if self.size == self.data_start:
            self._reset_summary()
            return True
        if not len(self.offset_index) or self.offset_index.values[-1] >= self.size:
            return False
        keys, values = list(self.offset_index.keys), list(self.offset_index.values)
        tkeys, tvalues = list(self.time_index.keys), list(self.time_index.values)
        if not tkeys:
            return False
        try:
            first = next(self.headers())[1]
            self.rolling_timestamp = first.max_timestamp
            # The time index must name a batch that really has its last timestamp (else rebuild).
            at = self.base_offset + tvalues[-1]
            holder = next((h for _, h in self._headers_from(at) if h.last_offset >= at), None)
            if holder is None or holder.max_timestamp != tkeys[-1] or holder.base_offset != at:
                return False
            self.max_timestamp = tkeys[-1] if tkeys else NO_TIMESTAMP
            self.offset_of_max_timestamp = self.base_offset + (tvalues[-1] if tvalues else 0)
            self.batch_count = 1
            for position, _, header, _ in self.frames(values[-1]):
                self.next_offset = header.next_offset
                self.batch_count += 1
                if header.max_timestamp > self.max_timestamp:
                    self.max_timestamp = header.max_timestamp
                    self.offset_of_max_timestamp = header.base_offset
                self._bytes_since_index_entry = self.size - position
        except (CorruptRecordError, StopIteration):
            return False
        self.offset_index.keys, self.offset_index.values = keys, values
        self.time_index.keys, self.time_index.values = tkeys, tvalues
        return True

    def truncate_bytes(self, size: int) -> int:
        """Cut the file to ``size`` bytes; returns how many bytes were dropped."""
        assert self._fd is not None
        dropped = self.size - size
        if dropped > 0:
            os.ftruncate(self._fd, size)
            self._map = None  # views of the dropped tail must not be handed out again
            self._frames = {p: f for p, f in self._frames.items() if p < size}
            self._guarantees.clear()
            self.size = size
        return max(dropped, 0)

    def truncate_to(self, offset: int) -> int:
        """Drop every batch whose last offset is >= ``offset`` (whole batches, as Kafka); returns bytes dropped."""
        cut = None
        for position, header in self._headers_from(offset):
            if header.last_offset >= offset:
                cut = position
                break
        if cut is None:
            return 0
        dropped = self.truncate_bytes(cut)
        self.rebuild(verify=False)
        return dropped

    def _headers_from(self, offset: int) -> Iterator[tuple[int, BatchHeader]]:
        entry = self.offset_index.floor(max(0, offset - self.base_offset))
        for position, _, header, _ in self.frames(entry[1] if entry else None):
            yield position, header

    def __repr__(self) -> str:
        return (f"LogSegment(base={self.base_offset}, next={self.next_offset}, size={self.size}, "
                f"batches={self.batch_count})")
