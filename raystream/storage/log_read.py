"""Reading a log's segments: whole stored batches for replication, and records for consumers — projected,
filtered (batches whose statistics exclude the filter are skipped undecoded), evolved to the current
schema and sliced to the requested offsets (the read half of Kafka's ``LocalLog``).

Pure functions over a :class:`~raystream.storage.log_segments.LogSegments`; the caller
(:class:`~raystream.storage.log.Log`) holds its lock for the duration of a call. Batches returned are
zero-copy views of the segment files: copy or serialise them before the log is truncated.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.errors import OffsetOutOfRangeError
from raystream.record import OFFSET_COLUMN, user_schema_of
from raystream.storage import statistics
from raystream.storage.batch import BatchHeader, RawBatches, StoredBatch
from raystream.storage.log_segments import LogSegments
from raystream.storage.schema_evolution import compatibility_problems, evolve
from raystream.storage.segment import LogSegment


@dataclasses.dataclass
class FilteredRead:
    """What :meth:`Log.read_filtered` returns: the batches, where the next read starts, and how many
    batches the filter's statistics check skipped without decoding them."""

    batches: list[pa.RecordBatch]
    next_offset: int
    batches_skipped: int = 0


@dataclasses.dataclass(frozen=True)
class ReadRange:
    """The offsets a read covers and the log's bounds it is checked against."""

    name: str  # the log directory's name, for error messages
    log_start_offset: int
    log_end_offset: int
    start_offset: int
    max_bytes: int
    max_offset: int | None = None

    def check(self) -> None:
        """Raise TypeError / OffsetOutOfRangeError / ValueError for a read the log cannot serve."""
        start = self.start_offset
        if not isinstance(start, int) or isinstance(start, bool):
            raise TypeError(f"offset must be an int, got {type(start).__name__}")
        if start < self.log_start_offset or start > self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {start} out of range for {self.name}: "
                f"log_start_offset={self.log_start_offset}, log_end_offset={self.log_end_offset}",
                offset=start, log_start_offset=self.log_start_offset, log_end_offset=self.log_end_offset)
        max_bytes = self.max_bytes
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")

    def end_of(self, header: BatchHeader) -> int:
        """Where the next read starts once the batch of ``header`` is done (compaction may have removed its
        last rows; the batch still covers its whole offset range)."""
        return header.next_offset if self.max_offset is None else min(header.next_offset, self.max_offset)


def read_batches(segments: LogSegments, where: ReadRange, verify: bool = False) -> list[StoredBatch]:
    """Whole stored batches (headers included) from the one holding the start offset: the replication
    read. At least one batch is returned when any exists, even above ``max_bytes`` (as Kafka)."""
    where.check()
    out: list[StoredBatch] = []
    total = 0
    for segment in segments.from_offset(where.start_offset):
        for _, batch in segment.batches(where.start_offset, verify=verify):
            if where.max_offset is not None and batch.header.base_offset >= where.max_offset:
                return out
            size = batch.data.get_total_buffer_size()
            if out and total + size > where.max_bytes:
                return out
            out.append(batch)
            total += size
    return out


def read_raw(segments: LogSegments, where: ReadRange) -> list[RawBatches]:
    """The batches :func:`read_batches` returns, as one slice of each segment's file they lie in (the
    messages are consecutive there). ``max_bytes`` counts message bytes; at least one batch when any."""
    where.check()
    out: list[RawBatches] = []
    total = 0
    for segment in segments.from_offset(where.start_offset):
        first: pa.Buffer | None = None
        length = 0
        full = False
        for _, frame, header, rest in segment.frames_from(where.start_offset):
            if where.max_offset is not None and header.base_offset >= where.max_offset:
                full = True
                break
            if (out or first is not None) and total + frame.total_length > where.max_bytes:
                full = True
                break
            if first is None:
                first = rest  # the file from this message to its end
            length += frame.total_length
            total += frame.total_length
        if first is not None:
            out.append(RawBatches(segment.schema, first.slice(0, length)))
        if full:
            break
    return out


def read_filtered(segments: LogSegments, where: ReadRange, columns: list[str] | None = None,
                  row_filter: Any = None,
                  exclude: Callable[[BatchHeader], bool] | None = None) -> FilteredRead:
    """Records in ``[start_offset, max_offset)`` (as :meth:`Log.read`) with a row filter (a
    ``pyarrow.compute.Expression`` over the stored columns, which may name columns outside ``columns``):
    batches whose statistics exclude it are skipped without being decoded, the rest are filtered, then
    projected. ``max_bytes`` counts the batches read before filtering (skipped ones count nothing). The
    result's ``next_offset`` is where the next read starts: past every batch scanned, kept or not.
    ``exclude(header)`` true drops a whole batch unread (how a read_committed fetch leaves out aborted
    transactions)."""
    where.check()
    target = segments.active.schema  # batches of older (compatible) schemas are read as this
    if columns is not None:
        columns = check_columns(columns, target.names)
    result = FilteredRead([], where.start_offset)
    if where.max_offset is not None and where.max_offset <= where.start_offset:
        return result  # e.g. a fetch above a new leader's (lagging) high watermark
    total = 0
    read_columns = columns if row_filter is None else None
    for segment, _, frame, header, rest in _scan(segments, where, row_filter, target, result):
        end = where.end_of(header)
        if exclude is not None and exclude(header):
            result.next_offset = end
            continue
        data = _decode(segment, frame, rest, header, where, target)
        if data.num_rows == 0:
            result.next_offset = end
            continue
        if read_columns is not None:
            data = data.select(read_columns)
        size = data.get_total_buffer_size()
        if total and total + size > where.max_bytes:
            break
        total += size
        result.next_offset = end
        if row_filter is not None:
            data = _apply_filter(data, row_filter, where.name)
            if data.num_rows == 0:
                continue
            if columns is not None:
                data = data.select(columns)
        result.batches.append(data)
    return result


def _decode(segment: LogSegment, frame: Any, rest: pa.Buffer, header: BatchHeader, where: ReadRange,
            target: pa.Schema) -> pa.RecordBatch:
    """One batch's records, in the ``target`` schema when its own evolves to it, sliced to the range."""
    data = segment.decode_at(frame, rest).data
    if data.num_rows and data.schema is not target and not data.schema.equals(target) \
            and _evolvable(data.schema, target):
        data = evolve(data, target)
    if data.num_rows and (header.base_offset < where.start_offset
                          or (where.max_offset is not None and header.last_offset >= where.max_offset)):
        data = _slice_offsets(data, where.start_offset, where.max_offset)
    return data


def _scan(segments: LogSegments, where: ReadRange, row_filter: Any, target: pa.Schema,
          result: FilteredRead) -> Iterator[tuple[LogSegment, int, Any, BatchHeader, pa.Buffer]]:
    """The batches a read must decode, in order: those holding offsets in ``[start_offset, max_offset)``
    less, when there is a filter, those whose statistics exclude it (counted in ``result``, which moves
    its ``next_offset`` past them). Guarantees are checked in chunks, so a read that stops early at
    ``max_bytes`` wastes at most one chunk of checks."""
    def candidates():
        for segment in segments.from_offset(where.start_offset):
            for position, frame, header, rest in segment.frames_from(where.start_offset):
                if where.max_offset is not None and header.base_offset >= where.max_offset:
                    return
                yield segment, position, frame, header, rest

    if row_filter is None:
        yield from candidates()
        return
    pending = candidates()
    while chunk := list(itertools.islice(pending, statistics.PRUNE_CHUNK_BATCHES)):
        guarantees = [segment.guarantee(position, frame, header, target)
                      for segment, position, frame, header, _ in chunk]
        for item, keep in zip(chunk, statistics.may_match(row_filter, guarantees, target), strict=True):
            if keep:
                yield item
                continue
            result.batches_skipped += 1
            result.next_offset = where.end_of(item[3])


def _schema_key(schema: pa.Schema) -> tuple:
    return tuple((f.name, str(f.type), f.nullable) for f in schema)


#: (stored schema's fields, active schema's fields) -> may batches of the first be read as the second?
#: Shared by every log of the process (the answer depends on the schemas alone); cleared when it grows.
_EVOLVABLE: dict[tuple, bool] = {}
_EVOLVABLE_MAX = 1024


def _evolvable(schema: pa.Schema, target: pa.Schema) -> bool:
    """Can batches of ``schema`` be read in ``target``, the active schema? (A storage-level change_schema
    may be incompatible; those batches are returned as written.) Cached per pair of schemas."""
    key = (_schema_key(schema), _schema_key(target))
    found = _EVOLVABLE.get(key)
    if found is None:
        if len(_EVOLVABLE) >= _EVOLVABLE_MAX:
            _EVOLVABLE.clear()
        found = _EVOLVABLE[key] = not compatibility_problems(user_schema_of(schema), user_schema_of(target))
    return found


def check_offset_arg(offset: int) -> None:
    """Raise TypeError / ValueError unless ``offset`` is an int >= 0."""
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")


def check_columns(columns: list[str], names: list[str]) -> list[str]:
    """``columns`` as a list, checked against the stored column ``names``."""
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise TypeError("columns must be a list of column names")
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; the log has {names}")
    return list(columns)


def headers_from(segments: LogSegments, position: int) -> tuple[list[BatchHeader], int] | None:
    """One step of :meth:`Log.iter_headers`: the headers (last offset >= ``position``) of the segment that
    holds the next offset at or after ``position``, found *by offset*, and where the next step starts; None
    past the end."""
    segment = next((s for s in segments.from_offset(position) if s.next_offset > position), None)
    if segment is None:
        return None
    headers = [h for _, h in segment.headers() if h.last_offset >= position]
    return headers, max(position, segment.next_offset)


def offset_for_timestamp(segments: LogSegments, timestamp: int, log_start_offset: int) -> int | None:
    """The earliest offset at or above the log start whose timestamp is >= ``timestamp``, None if none."""
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise TypeError(f"timestamp must be an int (ms), got {type(timestamp).__name__}")
    for segment in segments:
        if segment.max_timestamp < timestamp or segment.next_offset <= log_start_offset:
            continue
        found = segment.find_offset_by_timestamp(timestamp, log_start_offset)
        if found is not None:
            return found
    return None


def _apply_filter(data: pa.RecordBatch, row_filter: Any, where: str) -> pa.RecordBatch:
    try:
        return data.filter(row_filter)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
        raise ValueError(f"filter {row_filter} cannot be applied to {where}: {exc}") from None


def _slice_offsets(data: pa.RecordBatch, start_offset: int, max_offset: int | None) -> pa.RecordBatch:
    """Rows of ``data`` with ``start_offset <= _offset < max_offset`` (offsets are sorted; zero-copy)."""
    offsets = data.column(OFFSET_COLUMN).to_numpy()
    lo = int(np.searchsorted(offsets, start_offset, side="left"))
    hi = int(np.searchsorted(offsets, max_offset, side="left")) if max_offset is not None else len(offsets)
    return data.slice(lo, max(hi - lo, 0))
