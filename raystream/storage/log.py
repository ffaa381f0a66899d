"""A partition's log: an ordered set of segments in one directory (Kafka's LocalLog + the storage half of
UnifiedLog).

Directory layout::

    raystream-log.meta            format marker (a directory without it is not a log)
    .lock                         flock'ed by the owner: a second owner fails loudly
    .clean_shutdown               present only between a clean close and the next open
    checkpoint                    recovery point, log start offset, high watermark (atomic msgpack)
    leader-epoch-checkpoint       the leader-epoch cache
    <base>.arrows / .index / .timeindex   segments
    <offset>.snapshot             idempotent-producer state as of <offset> (written by the owning replica
                                  through raystream.storage.producer_snapshot; the log only deletes them
                                  with the directory)

Offsets are record numbers; ranges are half-open. ``log_end_offset`` is the next offset to assign;
``recovery_point`` is the offset below which everything is fsynced.

Concurrency contract: every public method takes the log's lock, so any number of threads may call them;
the actor's event loop normally is the only caller. Compaction (``raystream.storage.cleaner``) holds the
lock only to plan and to swap segments, so reads and appends go on while it rewrites data. Batches
returned by reads are zero-copy views of the segment files: copy or serialise them before the log is
truncated (see :mod:`raystream.storage.segment`).
"""

from __future__ import annotations

import bisect
import dataclasses
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.clock import now_ms
from raystream.config import TopicConfig
from raystream.errors import (
    ClosedError,
    CorruptRecordError,
    InvalidLogDirectoryError,
    InvalidRecordError,
    LogDirectoryLockedError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
)
from raystream.record import (
    ATTR_COMMIT_MARKER,
    ATTR_CONTROL,
    ATTR_LOG_APPEND_TIME,
    ATTR_TRANSACTIONAL,
    OFFSET_COLUMN,
    RECORD_SCHEMA,
    TIMESTAMP_COLUMN,
    check_user_schema,
    stored_schema,
    user_schema_of,
)
from raystream.storage import statistics
from raystream.storage.batch import BatchEncoder, BatchHeader, StoredBatch
from raystream.storage.epoch_cache import LeaderEpochCache
from raystream.storage.files import fsync_dir, read_state, write_state
from raystream.storage.records import check_batch_schema
from raystream.storage.schema_evolution import compatibility_problems, evolve
from raystream.storage.segment import DATA_SUFFIX, LogSegment

log = logging.getLogger(__name__)

META_FILE = "raystream-log.meta"
LOCK_FILE = ".lock"
CLEAN_SHUTDOWN_FILE = ".clean_shutdown"
CHECKPOINT_FILE = "checkpoint"
EPOCH_FILE = "leader-epoch-checkpoint"
LOG_FORMAT = 1
#: As Kafka's log.flush.offset.checkpoint.interval.ms: how often a flush also persists the recovery point.
CHECKPOINT_INTERVAL_MS = 60_000


@dataclasses.dataclass
class FilteredRead:
    """What :meth:`Log.read_filtered` returns: the batches, where the next read starts, and how many
    batches the filter's statistics check skipped without decoding them."""

    batches: list[pa.RecordBatch]
    next_offset: int
    batches_skipped: int = 0


@dataclasses.dataclass(frozen=True)
class AppendInfo:
    base_offset: int
    last_offset: int
    max_timestamp: int
    log_append_time: int
    record_count: int
    header: BatchHeader  # the stored batch's header, exactly as recovery and followers will see it


@dataclasses.dataclass(frozen=True)
class RecoveryReport:
    """What opening the log found. ``truncated_bytes`` / ``dropped_batches`` are what a crash cost."""

    clean_shutdown: bool
    recovered_from_offset: int
    log_end_offset: int
    truncated_bytes: int = 0
    dropped_batches: int = 0
    deleted_segments: int = 0
    error: str | None = None
    duration_s: float = 0.0



class Log:
    """An append-only log of stored batches for one partition replica."""

    def __init__(self, directory: str | os.PathLike, config: TopicConfig | None = None,
                 schema: pa.Schema | None = None, key_column: str = "key", now: int | None = None) -> None:
        """Open (recovering if needed) or create the log in ``directory``.

        ``schema`` is the user schema for a *new* log (default: Kafka-style records); an existing log keeps
        the schema of its active segment (change it with :meth:`change_schema`). ``now`` (ms) is injected by
        tests; the default is the wall clock.
        """
        self.directory = Path(directory)
        self.config = config or TopicConfig()
        self.key_column = key_column
        self._lock = threading.RLock()
        self._closed = False
        self.truncation_generation = 0
        #: Called as ``on_roll(base_offset)`` each time an append (or :meth:`roll`) starts a new segment, with
        #: the lock held, after the segment exists and before the batch that caused the roll is written —
        #: the moment Kafka snapshots the producer state. Should be quick; an exception is logged, and the
        #: append goes on.
        self.on_roll: Callable[[int], None] | None = None
        self._lock_fd: int | None = None
        self.segments: list[LogSegment] = []
        self._bases: list[int] = []
        started = time.monotonic()
        self._prepare_directory()
        try:
            state = read_state(self.directory / CHECKPOINT_FILE, default={}) or {}
            self.log_start_offset = int(state.get("log_start_offset", 0))
            self.recovery_point = int(state.get("recovery_point", 0))
            self.high_watermark = int(state.get("high_watermark", 0))
            self.epoch_cache = LeaderEpochCache(self.directory / EPOCH_FILE)
            report = self._load(schema if schema is not None else RECORD_SCHEMA, now)
        except BaseException:
            self._release_lock()
            raise
        self.recovery_report = dataclasses.replace(report, duration_s=time.monotonic() - started)
        self._encoder: BatchEncoder | None = None
        self._unflushed_messages = 0
        self._last_flush_ms = self._last_checkpoint_ms = now if now is not None else now_ms()
        if report.error or report.truncated_bytes:
            log.warning("[%s] recovered after crash: %s", self.directory.name, self.recovery_report)

    # -- opening ----------------------------------------------------------------------------------------------
    def _prepare_directory(self) -> None:
        d = self.directory
        if d.exists() and not d.is_dir():
            raise InvalidLogDirectoryError(f"{d} is not a directory")
        if d.is_dir() and not (d / META_FILE).exists():
            foreign = [p.name for p in d.iterdir() if p.name != LOCK_FILE]
            if foreign:
                raise InvalidLogDirectoryError(
                    f"{d} is not a raystream log directory (no {META_FILE}; holds {sorted(foreign)[:5]})")
        d.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise LogDirectoryLockedError(f"log directory {d} is already open by another owner") from None
        meta = read_state(d / META_FILE)
        if meta is None:
            write_state(d / META_FILE, {"format": LOG_FORMAT})
        elif not isinstance(meta, dict) or meta.get("format") != LOG_FORMAT:
            self._release_lock()
            raise InvalidLogDirectoryError(f"{d}: unsupported log format {meta!r:.60}")

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _load(self, schema: pa.Schema, now: int | None) -> RecoveryReport:
        from raystream.storage.cleaner import recover_interrupted_changes

        d = self.directory
        for tmp in d.glob("*.tmp"):
            tmp.unlink()
        recover_interrupted_changes(d, self.config.index_interval_bytes)
        clean = (d / CLEAN_SHUTDOWN_FILE).exists()
        paths = sorted(d.glob("*" + DATA_SUFFIX))
        for path in paths:
            try:
                segment = LogSegment.open(path, self.config.index_interval_bytes)
            except CorruptRecordError:
                # Only a segment created just before a crash can lack a schema; nothing after it can exist.
                if path != paths[-1]:
                    raise
                log.warning("[%s] removing segment %s with a torn schema", d.name, path.name)
                path.unlink()
                continue
            self.segments.append(segment)
        self._bases = [s.base_offset for s in self.segments]
        report = self._recover_segments(clean)
        (d / CLEAN_SHUTDOWN_FILE).unlink(missing_ok=True)
        if not self.segments:
            check_user_schema(schema)
            self._add_segment(LogSegment.create(d, self.log_start_offset, stored_schema(schema),
                                                self.config.index_interval_bytes))
            fsync_dir(d)
        if self.log_end_offset < self.log_start_offset:
            # A crash cut below the log start: restart empty there rather than reuse offsets (as Kafka).
            self._truncate_fully_and_start_at(self.log_start_offset)
        leo = self.log_end_offset
        self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
        self.recovery_point = min(self.recovery_point, leo) if not clean else leo
        self.high_watermark = min(self.high_watermark, leo)
        self.epoch_cache.truncate_from_end(leo)
        self._write_checkpoint()
        return dataclasses.replace(report, log_end_offset=leo)

    def _recover_segments(self, clean: bool) -> RecoveryReport:
        """Trust segments below the recovery point (after a clean close: all); scan and verify the rest,
        cutting the log at the first torn or corrupt batch."""
        start = len(self.segments) if clean else self._segment_index_for(self.recovery_point)
        for segment in self.segments[:start]:
            segment.load_or_rebuild_indexes()
        recovered_from = self.segments[start].base_offset if start < len(self.segments) else self.recovery_point
        truncated = deleted = dropped = 0
        error = None
        for i in range(start, len(self.segments)):
            segment = self.segments[i]
            result = segment.rebuild(verify=True)
            if result.error is None and result.valid_bytes == segment.size:
                continue
            error = result.error or "torn tail"
            dropped += _count_frames_from(segment, result.valid_bytes)
            truncated += segment.truncate_bytes(result.valid_bytes)
            for later in self.segments[i + 1:]:
                truncated += later.size
                dropped += later.rebuild(verify=False).batches
                later.delete()
                deleted += 1
            del self.segments[i + 1:]
            break
        self._bases = [s.base_offset for s in self.segments]
        return RecoveryReport(clean, recovered_from, 0, truncated, dropped, deleted, error)

    def _segment_index_for(self, offset: int) -> int:
        """Index of the segment that holds ``offset`` (the floor segment), 0 if before all."""
        return max(0, bisect.bisect_right(self._bases, offset) - 1)

    def _add_segment(self, segment: LogSegment) -> None:
        self.segments.append(segment)
        self._bases.append(segment.base_offset)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def active_segment(self) -> LogSegment:
        return self.segments[-1]

    @property
    def log_end_offset(self) -> int:
        return self.segments[-1].next_offset

    @property
    def schema(self) -> pa.Schema:
        """The user schema of the active segment (system columns excluded)."""
        return user_schema_of(self.active_segment.schema)

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"log {self.directory} is closed")

    # -- append -------------------------------------------------------------------------------------------------
    def append(self, batch: pa.RecordBatch | pa.Table, *, leader_epoch: int = 0, now: int | None = None,
               producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
               attributes: int = 0, schema_id: int = 0) -> AppendInfo:
        """Append records as the leader: assign offsets (and timestamps where absent). One call, one batch.

        Raises SchemaMismatchError, RecordTooLargeError, InvalidRecordError before anything is written.
        """
        batch = _as_record_batch(batch)
        with self._lock:
            self._check_open()
            now = now_ms() if now is None else now
            user_schema = self.schema
            check_batch_schema(user_schema, batch, where=f"append to {self.directory.name}")
            if batch.num_rows == 0:
                raise InvalidRecordError("cannot append an empty batch")
            size = batch.nbytes
            if size > self.config.max_message_bytes:
                raise RecordTooLargeError(
                    f"batch of {size} bytes exceeds max.message.bytes={self.config.max_message_bytes}",
                    size=size, limit=self.config.max_message_bytes)
            if self.config.compact and self.key_column in batch.schema.names \
                    and batch.column(self.key_column).null_count:
                raise InvalidRecordError(
                    f"compacted topic requires a non-null {self.key_column!r} for every record")
            stored, header = self._stamp(batch, user_schema, now, leader_epoch, producer_id, producer_epoch,
                                         base_sequence, attributes, schema_id)
            self._append_stored(StoredBatch(header, stored), now)
            log_append_time = now if header.attributes & ATTR_LOG_APPEND_TIME else -1
            return AppendInfo(header.base_offset, header.last_offset, header.max_timestamp, log_append_time,
                              header.record_count, header)

    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool, *, leader_epoch: int = 0,
                      now: int | None = None) -> AppendInfo:
        """Append a transaction marker as the leader: a control batch of no rows that takes one offset
        (Kafka's COMMIT / ABORT control record) and ends ``producer_id``'s open transaction here."""
        with self._lock:
            self._check_open()
            now = now_ms() if now is None else now
            attributes = ATTR_CONTROL | ATTR_TRANSACTIONAL | (ATTR_COMMIT_MARKER if commit else 0)
            header = BatchHeader(self.log_end_offset, 0, 0, now, now, leader_epoch, producer_id, producer_epoch,
                                 -1, attributes)
            schema = self.active_segment.schema
            empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
            self._append_stored(StoredBatch(header, empty), now)
            return AppendInfo(header.base_offset, header.last_offset, now, -1, 0, header)

    def _stamp(self, batch: pa.RecordBatch, user_schema: pa.Schema, now: int, leader_epoch: int,
               producer_id: int, producer_epoch: int, base_sequence: int, attributes: int,
               schema_id: int) -> tuple[pa.RecordBatch, BatchHeader]:
        n = batch.num_rows
        base = self.log_end_offset
        offsets = pa.array(np.arange(base, base + n, dtype=np.int64))
        if self.config.message_timestamp_type == "LogAppendTime":
            attributes |= ATTR_LOG_APPEND_TIME
        if TIMESTAMP_COLUMN in batch.schema.names and not attributes & ATTR_LOG_APPEND_TIME:
            timestamps = batch.column(TIMESTAMP_COLUMN)
            if timestamps.null_count:
                timestamps = timestamps.fill_null(now)
            ts = timestamps.to_numpy()
            first_ts, max_ts = int(ts[0]), int(ts.max())
        else:
            timestamps = pa.array(np.full(n, now, dtype=np.int64))
            first_ts = max_ts = now
        columns = [offsets, timestamps] + [batch.column(name) for name in user_schema.names]
        stored = pa.RecordBatch.from_arrays(columns, schema=stored_schema(user_schema))
        header = BatchHeader(base, n - 1, n, first_ts, max_ts, leader_epoch, producer_id, producer_epoch,
                             base_sequence, attributes, schema_id)
        return stored, header

    def append_as_follower(self, batches: list[StoredBatch], now: int | None = None) -> int:
        """Append batches copied from the leader, keeping their offsets and headers. Returns the new LEO."""
        with self._lock:
            self._check_open()
            now = now_ms() if now is None else now
            for batch in batches:
                if not isinstance(batch, StoredBatch):
                    raise TypeError(f"expected StoredBatch, got {type(batch).__name__}")
                if batch.header.base_offset < self.log_end_offset:
                    raise InvalidRecordError(
                        f"replicated batch at offset {batch.header.base_offset} is below the log end offset "
                        f"{self.log_end_offset} of {self.directory.name}")
                self._append_stored(batch, now)
            return self.log_end_offset

    def _append_stored(self, batch: StoredBatch, now: int) -> None:
        encoder = self._encoder
        if encoder is None or not encoder.schema.equals(batch.data.schema):
            encoder = self._encoder = BatchEncoder(batch.data.schema)
        encoded = encoder.encode(batch)  # first, so the roll decision knows the exact size
        segment = self._maybe_roll(batch, encoded[1].total_length, now)
        segment.append(batch, encoded)
        self.epoch_cache.assign(batch.header.leader_epoch, batch.header.base_offset)
        self._unflushed_messages += batch.header.record_count
        if (self._unflushed_messages >= self.config.flush_messages
                or now - self._last_flush_ms >= self.config.flush_ms):
            self._flush(now)

    def _maybe_roll(self, batch: StoredBatch, size: int, now: int) -> LogSegment:
        segment = self.active_segment
        reason = None
        if not segment.schema.equals(batch.data.schema):
            reason = "schema change"
        elif segment.is_empty:
            return segment
        elif segment.size + size > self.config.segment_bytes:
            reason = "segment.bytes"
        elif (segment.rolling_timestamp is not None
              and batch.header.max_timestamp - segment.rolling_timestamp >= self.config.segment_ms):
            # As Kafka: time is measured in record timestamps, so replaying old data rolls as it did then.
            reason = "segment.ms"
        elif not segment.fits(batch.header):
            reason = "relative offset overflow"
        if reason is None:
            return segment
        return self._roll(batch.header.base_offset, batch.data.schema, reason)

    def _roll(self, base_offset: int, schema: pa.Schema, reason: str) -> LogSegment:
        old = self.active_segment
        old.flush()
        self.recovery_point = max(self.recovery_point, old.next_offset)
        if old.is_empty and old.base_offset == base_offset:
            old.delete()  # an empty segment at the same base would collide; replace it
            self.segments.pop()
            self._bases.pop()
        new = LogSegment.create(self.directory, base_offset, schema, self.config.index_interval_bytes)
        self._add_segment(new)
        fsync_dir(self.directory)
        self._write_checkpoint()
        log.debug("[%s] rolled segment at offset %d (%s)", self.directory.name, base_offset, reason)
        if self.on_roll is not None:
            try:
                self.on_roll(base_offset)
            except Exception:  # a listener's failure (e.g. a snapshot write) must not fail the append
                log.exception("[%s] on_roll listener failed at offset %d", self.directory.name, base_offset)
        return new

    def roll(self) -> None:
        """Start a new segment now (tests and operators; appends roll by themselves)."""
        with self._lock:
            self._check_open()
            if not self.active_segment.is_empty:
                self._roll(self.log_end_offset, self.active_segment.schema, "requested")

    def change_schema(self, schema: pa.Schema) -> None:
        """Make ``schema`` the schema of new appends; a schema change starts a new segment."""
        check_user_schema(schema)
        with self._lock:
            self._check_open()
            if not self.schema.equals(schema):
                self._roll(self.log_end_offset, stored_schema(schema), "schema change")

    # -- flush and close --------------------------------------------------------------------------------------
    def flush(self, now: int | None = None) -> None:
        """fsync everything appended so far and advance the recovery point."""
        with self._lock:
            self._check_open()
            self._flush(now_ms() if now is None else now)

    def _flush(self, now: int, checkpoint: bool = False) -> None:
        for segment in self.segments[self._segment_index_for(self.recovery_point):]:
            segment.flush(indexes=segment is not self.active_segment)
        self.recovery_point = self.log_end_offset
        self._unflushed_messages = 0
        self._last_flush_ms = now
        # The recovery point on disk may lag (recovery then re-verifies a little more, which is safe);
        # persisting it on every flush would double the fsyncs of a flush-per-batch workload.
        if checkpoint or now - self._last_checkpoint_ms >= CHECKPOINT_INTERVAL_MS:
            self._write_checkpoint()
            self._last_checkpoint_ms = now

    def _write_checkpoint(self) -> None:
        write_state(self.directory / CHECKPOINT_FILE, {
            "log_start_offset": self.log_start_offset,
            "recovery_point": self.recovery_point,
            "high_watermark": self.high_watermark,
        })

    def set_high_watermark(self, offset: int) -> None:
        """Record the partition's high watermark (kept with the checkpoint on the next flush)."""
        with self._lock:
            self._check_open()
            self.high_watermark = max(self.log_start_offset, min(offset, self.log_end_offset))

    def close(self) -> None:
        """Flush everything, mark a clean shutdown and release the directory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._flush(now_ms(), checkpoint=True)
            self.active_segment.flush(indexes=True)
            (self.directory / CLEAN_SHUTDOWN_FILE).touch()
            fsync_dir(self.directory)
            self._shut()

    def _shut(self) -> None:
        for segment in self.segments:
            segment.close()
        self._closed = True
        self._release_lock()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- read ---------------------------------------------------------------------------------------------------
    def _check_fetch_offset(self, start_offset: int) -> None:
        if not isinstance(start_offset, int) or isinstance(start_offset, bool):
            raise TypeError(f"offset must be an int, got {type(start_offset).__name__}")
        if start_offset < self.log_start_offset or start_offset > self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {start_offset} out of range for {self.directory.name}: "
                f"log_start_offset={self.log_start_offset}, log_end_offset={self.log_end_offset}",
                offset=start_offset, log_start_offset=self.log_start_offset,
                log_end_offset=self.log_end_offset)

    def read_batches(self, start_offset: int, max_bytes: int, max_offset: int | None = None,
                     verify: bool = False) -> list[StoredBatch]:
        """Whole stored batches (headers included) from the one holding ``start_offset``: the replication
        read. At least one batch is returned when any exists, even above ``max_bytes`` (as Kafka)."""
        with self._lock:
            self._check_open()
            self._check_fetch_offset(start_offset)
            _check_max_bytes(max_bytes)
            out: list[StoredBatch] = []
            total = 0
            for _, batch in self._iter_batches(start_offset, verify):
                if max_offset is not None and batch.header.base_offset >= max_offset:
                    break
                size = batch.data.get_total_buffer_size()
                if out and total + size > max_bytes:
                    break
                out.append(batch)
                total += size
            return out

    def read(self, start_offset: int, max_bytes: int, max_offset: int | None = None,
             columns: list[str] | None = None) -> list[pa.RecordBatch]:
        """Records in ``[start_offset, max_offset)`` as zero-copy Arrow batches, about ``max_bytes`` in all
        (at least one batch when any record is there). ``columns`` selects (and orders) the columns; only
        those are touched. ``max_offset`` is exclusive (the high watermark for consumers). Batches written
        under an older, compatible schema come back in the current schema (``schema_evolution.evolve``)."""
        return self.read_filtered(start_offset, max_bytes, max_offset, columns).batches

    def read_filtered(self, start_offset: int, max_bytes: int, max_offset: int | None = None,
                      columns: list[str] | None = None, row_filter: Any = None,
                      exclude: Callable[[BatchHeader], bool] | None = None) -> FilteredRead:
        """:meth:`read` with a row filter (a ``pyarrow.compute.Expression`` over the stored columns, which
        may name columns outside ``columns``): batches whose statistics exclude it are skipped without
        being decoded, the rest are filtered, then projected. ``max_bytes`` counts the batches read before
        filtering (skipped ones count nothing). The result's ``next_offset`` is where the next read starts:
        past every batch scanned, kept or not. ``exclude(header)`` true drops a whole batch unread (how a
        read_committed fetch leaves out aborted transactions)."""
        with self._lock:
            self._check_open()
            self._check_fetch_offset(start_offset)
            _check_max_bytes(max_bytes)
            if columns is not None:
                columns = self._check_columns(columns)
            result = FilteredRead([], start_offset)
            if max_offset is not None and max_offset <= start_offset:
                return result  # e.g. a fetch above a new leader's (lagging) high watermark
            total = 0
            target = self.active_segment.schema  # batches of older (compatible) schemas are read as this
            read_columns = columns if row_filter is None else None
            for segment, _, frame, header, rest in self._scan(start_offset, max_offset, row_filter, target,
                                                              result):
                # Where the next read starts once this batch is done (compaction may have removed its last
                # rows; the batch still covers its whole offset range).
                end = header.next_offset if max_offset is None else min(header.next_offset, max_offset)
                if exclude is not None and exclude(header):
                    result.next_offset = end
                    continue
                data = segment.decode_at(frame, rest).data
                if data.num_rows and data.schema is not target and not data.schema.equals(target) \
                        and self._evolvable(data.schema):
                    data = evolve(data, target)
                if data.num_rows and (header.base_offset < start_offset
                                      or (max_offset is not None and header.last_offset >= max_offset)):
                    data = _slice_offsets(data, start_offset, max_offset)
                if data.num_rows == 0:
                    result.next_offset = end
                    continue
                if read_columns is not None:
                    data = data.select(read_columns)
                size = data.get_total_buffer_size()
                if total and total + size > max_bytes:
                    break
                total += size
                result.next_offset = end
                if row_filter is not None:
                    data = _apply_filter(data, row_filter, self.directory.name)
                    if data.num_rows == 0:
                        continue
                    if columns is not None:
                        data = data.select(columns)
                result.batches.append(data)
            return result

    def _scan(self, start_offset: int, max_offset: int | None, row_filter: Any, target: pa.Schema,
              result: FilteredRead) -> Iterator[tuple[LogSegment, int, Any, BatchHeader, pa.Buffer]]:
        """The batches a read must decode, in order: those holding offsets in ``[start_offset, max_offset)``
        less, when there is a filter, those whose statistics exclude it (counted in ``result``, which moves
        its ``next_offset`` past them). Guarantees are checked in chunks, so a read that stops early at
        ``max_bytes`` wastes at most one chunk of checks."""
        def candidates():
            for segment in self.segments[self._segment_index_for(start_offset):]:
                for position, frame, header, rest in segment.frames_from(start_offset):
                    if max_offset is not None and header.base_offset >= max_offset:
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
                header = item[3]
                result.batches_skipped += 1
                result.next_offset = header.next_offset if max_offset is None else \
                    min(header.next_offset, max_offset)

    def _evolvable(self, schema: pa.Schema) -> bool:
        """Can batches of ``schema`` be read in the active schema? (A storage-level change_schema may be
        incompatible; those batches are returned as written.) Cached per schema."""
        key = (tuple((f.name, str(f.type), f.nullable) for f in schema),
               tuple((f.name, str(f.type), f.nullable) for f in self.schema))
        cache = self.__dict__.setdefault("_evolvable_cache", {})
        if key not in cache:
            cache[key] = not compatibility_problems(user_schema_of(schema), self.schema)
        return cache[key]

    def _check_columns(self, columns: list[str]) -> list[str]:
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise TypeError("columns must be a list of column names")
        names = self.active_segment.schema.names
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the log has {names}")
        return list(columns)

    def _iter_batches(self, start_offset: int, verify: bool = False) -> Iterator[tuple[int, StoredBatch]]:
        for segment in self.segments[self._segment_index_for(start_offset):]:
            yield from segment.batches(start_offset, verify=verify)

    def iter_headers(self, start_offset: int = 0) -> Iterator[BatchHeader]:
        """The header of every batch whose last offset is >= ``start_offset``, in log order, without
        decoding any data (how the idempotent-producer state is rebuilt from the log).

        Lazy, but never holds the lock between items: each step takes the lock, finds the segment holding
        the next offset *by offset* (so a compaction swap in between is seen as the new segment, not a
        closed one), collects that segment's headers and releases the lock. Segments deleted or truncated
        meanwhile are simply not seen. Raises ClosedError if the log closes during the iteration.
        """
        _check_offset_arg(start_offset)
        position = start_offset
        while True:
            with self._lock:
                self._check_open()
                index = self._segment_index_for(position)
                while index < len(self.segments) and self.segments[index].next_offset <= position:
                    index += 1
                if index >= len(self.segments):
                    return
                segment = self.segments[index]
                headers = [h for _, h in segment.headers() if h.last_offset >= position]
                position = max(position, segment.next_offset)
            yield from headers

    def offset_for_timestamp(self, timestamp: int) -> int | None:
        """The earliest offset whose timestamp is >= ``timestamp`` (Kafka's ListOffsets), None if none."""
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise TypeError(f"timestamp must be an int (ms), got {type(timestamp).__name__}")
        with self._lock:
            self._check_open()
            for segment in self.segments:
                if segment.max_timestamp < timestamp or segment.next_offset <= self.log_start_offset:
                    continue
                found = segment.find_offset_by_timestamp(timestamp, self.log_start_offset)
                if found is not None:
                    return found
            return None

    # -- truncation and deletion ------------------------------------------------------------------------------
    def truncate_to(self, offset: int) -> int:
        """Drop every batch with records at or above ``offset`` (a follower dropping a divergent suffix).
        Whole batches go, so the new log end offset may be below ``offset``. Returns the new LEO."""
        _check_offset_arg(offset)
        with self._lock:
            self._check_open()
            if offset >= self.log_end_offset:
                return self.log_end_offset
            if offset <= self.log_start_offset:
                return self._truncate_fully_and_start_at(offset)
            keep = self._segment_index_for(offset)
            for segment in self.segments[keep + 1:]:
                segment.delete()
            del self.segments[keep + 1:], self._bases[keep + 1:]
            self.segments[keep].truncate_to(offset)
            self._after_truncation()
            return self.log_end_offset

    def truncate_fully_and_start_at(self, offset: int) -> int:
        """Delete every segment and restart the log empty at ``offset`` (a follower out of range)."""
        _check_offset_arg(offset)
        with self._lock:
            self._check_open()
            return self._truncate_fully_and_start_at(offset)

    def _truncate_fully_and_start_at(self, offset: int) -> int:
        schema = self.active_segment.schema
        for segment in self.segments:
            segment.delete()
        self.segments, self._bases = [], []
        self._add_segment(LogSegment.create(self.directory, offset, schema, self.config.index_interval_bytes))
        fsync_dir(self.directory)
        self.log_start_offset = offset
        self.epoch_cache.clear()
        self._after_truncation()
        return offset

    def _after_truncation(self) -> None:
        self.truncation_generation += 1  # voids a compaction planned before (see cleaner.compact)
        leo = self.log_end_offset
        # Whole-batch truncation can cut below the log start (a compacted batch spanning it): as Kafka,
        # the log start never stays above the log end.
        self.log_start_offset = min(self.log_start_offset, leo)
        self.active_segment.flush()
        self.recovery_point = min(self.recovery_point, leo)
        self.high_watermark = min(self.high_watermark, leo)
        self.epoch_cache.truncate_from_end(leo)
        self._write_checkpoint()

    def delete_records_before(self, offset: int) -> int:
        """Advance the log start offset to ``offset`` (Kafka's DeleteRecords); whole segments below it are
        deleted. ``offset`` may not pass the log end offset (the replica also holds it to the high
        watermark). Returns the new log start offset."""
        _check_offset_arg(offset)
        with self._lock:
            self._check_open()
            if offset > self.log_end_offset:
                raise OffsetOutOfRangeError(
                    f"cannot delete records before {offset}: log_end_offset={self.log_end_offset}",
                    offset=offset, log_start_offset=self.log_start_offset, log_end_offset=self.log_end_offset)
            if offset <= self.log_start_offset:
                return self.log_start_offset
            self.log_start_offset = offset
            self._delete_segments(lambda s: s.next_offset <= offset)
            self.epoch_cache.truncate_from_start(offset)
            self._write_checkpoint()
            return self.log_start_offset

    def _delete_segments(self, predicate) -> int:
        """Delete the longest prefix of non-active segments matching ``predicate``; returns the count."""
        count = 0
        while len(self.segments) > 1 and predicate(self.segments[0]):
            # Rename first so a crash mid-delete leaves a file recovery knows to remove.
            segment = self.segments.pop(0)
            self._bases.pop(0)
            segment.delete()
            count += 1
        if count:
            self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
            fsync_dir(self.directory)
        return count

    def apply_retention(self, now: int | None = None, high_watermark: int | None = None) -> int:
        """Delete whole segments (never the active one, never above the high watermark) older than
        ``retention.ms`` by their max timestamp, or beyond ``retention.bytes``. Returns segments deleted."""
        with self._lock:
            self._check_open()
            if not self.config.delete:
                return 0
            now = now_ms() if now is None else now
            limit = self.log_end_offset if high_watermark is None else high_watermark
            deleted = 0
            retention_ms = self.config.retention_ms
            if retention_ms >= 0:
                deleted += self._delete_segments(
                    lambda s: s.max_timestamp < now - retention_ms and s.next_offset <= limit)
            if self.config.retention_bytes >= 0:
                excess = [self.size_bytes - self.config.retention_bytes]

                def over(segment: LogSegment) -> bool:
                    if excess[0] - segment.size >= 0 and segment.next_offset <= limit:
                        excess[0] -= segment.size
                        return True
                    return False

                deleted += self._delete_segments(over)
            if deleted:
                self.epoch_cache.truncate_from_start(self.log_start_offset)
                self._write_checkpoint()
            return deleted

    def delete(self) -> None:
        """Remove the whole log directory (topic deletion)."""
        with self._lock:
            if not self._closed:
                self._shut()
            for path in sorted(self.directory.iterdir()):
                path.unlink()
            self.directory.rmdir()

    def _simulate_crash(self) -> None:
        """Tests only: drop the handle as a killed process would, without flushing or marking clean."""
        with self._lock:
            self._shut()

    def __repr__(self) -> str:
        return (f"Log({self.directory.name}, start={self.log_start_offset}, end={self.log_end_offset}, "
                f"segments={len(self.segments)})")


def _as_record_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    if isinstance(batch, pa.RecordBatch):
        return batch
    if isinstance(batch, pa.Table):
        batches = batch.combine_chunks().to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=batch.schema)
    raise TypeError(f"expected a pyarrow RecordBatch or Table, got {type(batch).__name__}")


def _count_frames_from(segment: LogSegment, position: int) -> int:
    """How many batches start at or after ``position``: the bad one, plus any intact ones behind it (they
    go too: a log has no holes). Counts until the framing itself breaks."""
    count = 0
    try:
        for _ in segment.frames(position):
            count += 1
    except CorruptRecordError:
        count += 1
    return max(count, 1)


def _check_offset_arg(offset: int) -> None:
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")


def _check_max_bytes(max_bytes: int) -> None:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")


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
