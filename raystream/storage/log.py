"""A partition's log: an ordered set of segments in one directory (Kafka's LocalLog + the storage half of
UnifiedLog). This module keeps the log's state and writes — appends and their stamping, roll, flush and
checkpoint, truncation and retention; the parts live beside it: the directory and its lock
(:mod:`~raystream.storage.log_directory`), the ordered segment map (:mod:`~raystream.storage.log_segments`),
recovery on open (:mod:`~raystream.storage.recovery`) and reads (:mod:`~raystream.storage.log_read`).

Offsets are record numbers; ranges are half-open. ``log_end_offset`` is the next offset to assign;
``recovery_point`` is the offset below which everything is fsynced.

Time is an argument: every call that needs "now" (ms) takes it (``now=``), so storage never reads a clock.

Concurrency contract: every public method takes the log's lock, so any number of threads may call them;
the actor's event loop normally is the only caller. Compaction (``raystream.storage.cleaner``) holds the
lock only to plan and to swap segments, so reads and appends go on while it rewrites data. Batches
returned by reads are zero-copy views of the segment files: copy or serialise them before the log is
truncated (see :mod:`raystream.storage.segment`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from raystream.config import TopicConfig
from raystream.errors import ClosedError, InvalidRecordError, OffsetOutOfRangeError
from raystream.record import (
    ATTR_COMMIT_MARKER,
    ATTR_CONTROL,
    ATTR_LOG_APPEND_TIME,
    ATTR_TRANSACTIONAL,
    RECORD_SCHEMA,
    check_user_schema,
    stored_schema,
    user_schema_of,
)
from raystream.storage import log_read
from raystream.storage.batch import BatchEncoder, BatchHeader, Frame, RawBatch, RawBatches, StoredBatch
from raystream.storage.epoch_cache import LeaderEpochCache
from raystream.storage.files import fsync_dir
from raystream.storage.log_directory import (
    CLEAN_SHUTDOWN_FILE,
    EPOCH_FILE,
    DirectoryLock,
    read_checkpoint,
    write_checkpoint,
)
from raystream.storage.log_read import FilteredRead, ReadRange, check_offset_arg
from raystream.storage.log_segments import LogSegments
from raystream.storage.log_validator import (
    AppendInfo,
    as_record_batch,
    assign_offsets_and_timestamps,
    validate_batch,
)
from raystream.storage.recovery import RecoveryReport, recover_segments
from raystream.storage.retention import segments_to_delete
from raystream.storage.segment import LogSegment

log = logging.getLogger(__name__)

#: As Kafka's log.flush.offset.checkpoint.interval.ms: how often a flush also persists the recovery point.
CHECKPOINT_INTERVAL_MS = 60_000


class Log:
    """An append-only log of stored batches for one partition replica."""

    def __init__(self, directory: str | os.PathLike, config: TopicConfig | None = None,
                 schema: pa.Schema | None = None, key_column: str = "key", *, now: int) -> None:
        """Open (recovering if needed) or create the log in ``directory``.

        ``schema`` is the user schema for a *new* log (default: Kafka-style records); an existing log keeps
        the schema of its active segment (change it with :meth:`change_schema`). ``now`` (ms) starts the
        flush and checkpoint intervals.
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
        #: The segments by base offset; the last is the active one.
        self.segments = LogSegments()
        self._directory_lock = DirectoryLock(self.directory)
        self._directory_lock.acquire()
        try:
            self.log_start_offset, self.recovery_point, self.high_watermark = read_checkpoint(self.directory)
            self.epoch_cache = LeaderEpochCache(self.directory / EPOCH_FILE)
            self.recovery_report = self._load(schema if schema is not None else RECORD_SCHEMA)
        except BaseException:
            self._directory_lock.release()
            raise
        self._encoder: BatchEncoder | None = None
        self._unflushed_messages = 0
        self._last_flush_ms = self._last_checkpoint_ms = now
        report = self.recovery_report
        if report.error or report.truncated_bytes:
            log.warning("[%s] recovered after crash: %s", self.directory.name, report)

    # -- opening ----------------------------------------------------------------------------------------------
    def _load(self, schema: pa.Schema) -> RecoveryReport:
        """Recover the segments (:mod:`~raystream.storage.recovery`), then bring the checkpointed offsets
        and the epoch cache in line with what survived."""
        d = self.directory
        clean = (d / CLEAN_SHUTDOWN_FILE).exists()
        self.segments, report = recover_segments(d, self.config.index_interval_bytes, clean,
                                                 self.recovery_point)
        (d / CLEAN_SHUTDOWN_FILE).unlink(missing_ok=True)
        if not self.segments:
            check_user_schema(schema)
            self.segments.add(LogSegment.create(d, self.log_start_offset, stored_schema(schema),
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

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def active_segment(self) -> LogSegment:
        return self.segments.active

    @property
    def log_end_offset(self) -> int:
        return self.segments.active.next_offset

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
    def append(self, batch: pa.RecordBatch | pa.Table, *, now: int, leader_epoch: int = 0,
               producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
               attributes: int = 0, schema_id: int = 0) -> AppendInfo:
        """Append records as the leader: assign offsets (and timestamps where absent: ``now``, ms). One
        call, one batch.

        Raises SchemaMismatchError, RecordTooLargeError, InvalidRecordError before anything is written.
        """
        batch = as_record_batch(batch)
        with self._lock:
            self._check_open()
            user_schema = self.schema
            validate_batch(batch, user_schema, self.config, self.key_column, self.directory.name)
            if self.config.message_timestamp_type == "LogAppendTime":
                attributes |= ATTR_LOG_APPEND_TIME
            base, n = self.log_end_offset, batch.num_rows
            stored, first_ts, max_ts = assign_offsets_and_timestamps(batch, user_schema, base, attributes, now)
            header = BatchHeader(base, n - 1, n, first_ts, max_ts, leader_epoch, producer_id, producer_epoch,
                                 base_sequence, attributes, schema_id)
            self._append_stored(StoredBatch(header, stored), now)
            log_append_time = now if header.attributes & ATTR_LOG_APPEND_TIME else -1
            return AppendInfo(header.base_offset, header.last_offset, header.max_timestamp, log_append_time,
                              header.record_count, header)

    def append_marker(self, producer_id: int, producer_epoch: int, commit: bool, *, now: int,
                      leader_epoch: int = 0) -> AppendInfo:
        """Append a transaction marker as the leader: a control batch of no rows that takes one offset
        (Kafka's COMMIT / ABORT control record) and ends ``producer_id``'s open transaction here."""
        with self._lock:
            self._check_open()
            attributes = ATTR_CONTROL | ATTR_TRANSACTIONAL | (ATTR_COMMIT_MARKER if commit else 0)
            header = BatchHeader(self.log_end_offset, 0, 0, now, now, leader_epoch, producer_id, producer_epoch,
                                 -1, attributes)
            schema = self.active_segment.schema
            empty = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)
            self._append_stored(StoredBatch(header, empty), now)
            return AppendInfo(header.base_offset, header.last_offset, now, -1, 0, header)

    def append_raw_as_follower(self, raw: RawBatch, *, now: int) -> int:
        """Append one batch copied from the leader as its exact message (checked by
        :func:`~raystream.storage.batch.raw_batches`), writing the bytes verbatim. Returns the new LEO."""
        with self._lock:
            self._check_open()
            if not isinstance(raw, RawBatch):
                raise TypeError(f"expected RawBatch, got {type(raw).__name__}")
            if raw.header.base_offset < self.log_end_offset:
                raise InvalidRecordError(f"replicated batch at offset {raw.header.base_offset} is below the log "
                                         f"end offset {self.log_end_offset} of {self.directory.name}")
            self._append_encoded(raw.header, raw.schema, ([raw.message], raw.frame), now)
            return self.log_end_offset

    def _append_stored(self, batch: StoredBatch, now: int) -> None:
        encoder = self._encoder
        if encoder is None or not encoder.schema.equals(batch.data.schema):
            encoder = self._encoder = BatchEncoder(batch.data.schema)
        encoded = encoder.encode(batch)  # first, so the roll decision knows the exact size
        self._append_encoded(batch.header, batch.data.schema, encoded, now)

    def _append_encoded(self, header: BatchHeader, schema: pa.Schema, encoded: tuple[list, Frame],
                        now: int) -> None:
        segment = self.active_segment
        reason = segment.roll_reason(header, schema, encoded[1].total_length, self.config.segment_bytes,
                                     self.config.segment_ms)
        if reason is not None:
            segment = self._roll(header.base_offset, schema, reason)
        segment.append_encoded(header, encoded)
        self.epoch_cache.assign(header.leader_epoch, header.base_offset)
        self._unflushed_messages += header.record_count
        if (self._unflushed_messages >= self.config.flush_messages
                or now - self._last_flush_ms >= self.config.flush_ms):
            self._flush(now)

    # -- roll ---------------------------------------------------------------------------------------------------
    def _roll(self, base_offset: int, schema: pa.Schema, reason: str) -> LogSegment:
        old = self.active_segment
        old.flush()
        self.recovery_point = max(self.recovery_point, old.next_offset)
        if old.is_empty and old.base_offset == base_offset:
            old.delete()  # an empty segment at the same base would collide; replace it
            self.segments.remove(old)
        new = LogSegment.create(self.directory, base_offset, schema, self.config.index_interval_bytes)
        self.segments.add(new)
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

    # -- flush, checkpoint and close ----------------------------------------------------------------------------
    def flush(self, *, now: int) -> None:
        """fsync everything appended so far and advance the recovery point; ``now`` (ms) restarts the flush
        interval and decides whether the checkpoint is due."""
        with self._lock:
            self._check_open()
            self._flush(now)

    def _flush(self, now: int) -> None:
        self._flush_segments()
        self._last_flush_ms = now
        # The recovery point on disk may lag (recovery then re-verifies a little more, which is safe);
        # persisting it on every flush would double the fsyncs of a flush-per-batch workload.
        if now - self._last_checkpoint_ms >= CHECKPOINT_INTERVAL_MS:
            self._write_checkpoint()
            self._last_checkpoint_ms = now

    def _flush_segments(self) -> None:
        for segment in self.segments.from_offset(self.recovery_point):
            segment.flush(indexes=segment is not self.active_segment)
        self.recovery_point = self.log_end_offset
        self._unflushed_messages = 0

    def _write_checkpoint(self) -> None:
        write_checkpoint(self.directory, self.log_start_offset, self.recovery_point, self.high_watermark)

    def set_high_watermark(self, offset: int) -> None:
        """Record the partition's high watermark (kept with the checkpoint on the next flush)."""
        with self._lock:
            self._check_open()
            self.high_watermark = max(self.log_start_offset, min(offset, self.log_end_offset))

    def close(self) -> None:
        """Flush everything, checkpoint, mark a clean shutdown and release the directory. Idempotent.
        (No ``now``: a closed log has no flush interval left to time.)"""
        with self._lock:
            if self._closed:
                return
            self._flush_segments()
            self._write_checkpoint()
            self.active_segment.flush(indexes=True)
            (self.directory / CLEAN_SHUTDOWN_FILE).touch()
            fsync_dir(self.directory)
            self._shut()

    def _shut(self) -> None:
        for segment in self.segments:
            segment.close()
        self._closed = True
        self._directory_lock.release()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- read (raystream.storage.log_read, under the lock) ------------------------------------------------------
    def _range(self, start_offset: int, max_bytes: int, max_offset: int | None) -> ReadRange:
        return ReadRange(self.directory.name, self.log_start_offset, self.log_end_offset, start_offset,
                         max_bytes, max_offset)

    def read_batches(self, start_offset: int, max_bytes: int, max_offset: int | None = None,
                     verify: bool = False) -> list[StoredBatch]:
        """Whole stored batches (headers included) from the one holding ``start_offset``: the replication
        read. At least one batch is returned when any exists, even above ``max_bytes`` (as Kafka)."""
        with self._lock:
            self._check_open()
            return log_read.read_batches(self.segments, self._range(start_offset, max_bytes, max_offset), verify)

    def read_raw(self, start_offset: int, max_bytes: int, max_offset: int | None = None) -> list[RawBatches]:
        """The replication read: :meth:`read_batches` as the segment files' bytes (one :class:`RawBatches`
        per segment; zero-copy views: serialise them before the log is truncated)."""
        with self._lock:
            self._check_open()
            return log_read.read_raw(self.segments, self._range(start_offset, max_bytes, max_offset))

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
        """:meth:`read` with a row filter and a batch ``exclude`` predicate
        (:func:`raystream.storage.log_read.read_filtered` states the contract)."""
        with self._lock:
            self._check_open()
            return log_read.read_filtered(self.segments, self._range(start_offset, max_bytes, max_offset),
                                          columns, row_filter, exclude)

    def iter_headers(self, start_offset: int = 0) -> Iterator[BatchHeader]:
        """The header of every batch whose last offset is >= ``start_offset``, in log order, without
        decoding any data (how the idempotent-producer state is rebuilt from the log).

        Lazy, but never holds the lock between items: each step takes the lock, finds the segment holding
        the next offset *by offset* (so a compaction swap in between is seen as the new segment, not a
        closed one), collects that segment's headers and releases the lock. Segments deleted or truncated
        meanwhile are simply not seen. Raises ClosedError if the log closes during the iteration.
        """
        check_offset_arg(start_offset)
        position = start_offset
        while True:
            with self._lock:
                self._check_open()
                step = log_read.headers_from(self.segments, position)
            if step is None:
                return
            headers, position = step
            yield from headers

    def offset_for_timestamp(self, timestamp: int) -> int | None:
        """The earliest offset whose timestamp is >= ``timestamp`` (Kafka's ListOffsets), None if none."""
        with self._lock:
            self._check_open()
            return log_read.offset_for_timestamp(self.segments, timestamp, self.log_start_offset)

    # -- truncation and deletion ------------------------------------------------------------------------------
    def truncate_to(self, offset: int) -> int:
        """Drop every batch with records at or above ``offset`` (a follower dropping a divergent suffix).
        Whole batches go, so the new log end offset may be below ``offset``. Returns the new LEO."""
        check_offset_arg(offset)
        with self._lock:
            self._check_open()
            if offset >= self.log_end_offset:
                return self.log_end_offset
            if offset <= self.log_start_offset:
                return self._truncate_fully_and_start_at(offset)
            keep = self.segments.floor_index(offset)
            for segment in self.segments.remove_after(keep):
                segment.delete()
            self.segments[keep].truncate_to(offset)
            self._after_truncation()
            return self.log_end_offset

    def truncate_fully_and_start_at(self, offset: int) -> int:
        """Delete every segment and restart the log empty at ``offset`` (a follower out of range)."""
        check_offset_arg(offset)
        with self._lock:
            self._check_open()
            return self._truncate_fully_and_start_at(offset)

    def _truncate_fully_and_start_at(self, offset: int) -> int:
        schema = self.active_segment.schema
        for segment in self.segments.clear():
            segment.delete()
        self.segments.add(LogSegment.create(self.directory, offset, schema, self.config.index_interval_bytes))
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
        check_offset_arg(offset)
        with self._lock:
            self._check_open()
            if offset > self.log_end_offset:
                raise OffsetOutOfRangeError(
                    f"cannot delete records before {offset}: log_end_offset={self.log_end_offset}",
                    offset=offset, log_start_offset=self.log_start_offset, log_end_offset=self.log_end_offset)
            if offset <= self.log_start_offset:
                return self.log_start_offset
            self.log_start_offset = offset
            self._delete_segments(sum(1 for _ in itertools.takewhile(lambda s: s.next_offset <= offset,
                                                                     self.segments)))
            self.epoch_cache.truncate_from_start(offset)
            self._write_checkpoint()
            return self.log_start_offset

    def _delete_segments(self, count: int) -> int:
        """Delete the first ``count`` segments (never the active one); returns how many went."""
        doomed = self.segments[:max(0, min(count, len(self.segments) - 1))]
        for segment in doomed:
            self.segments.remove(segment)
            segment.delete()
        if doomed:
            self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
            fsync_dir(self.directory)
        return len(doomed)

    def apply_retention(self, *, now: int, high_watermark: int | None = None) -> int:
        """Delete whole segments (never the active one, never above the high watermark) older than
        ``retention.ms`` before ``now`` (ms) by their max timestamp, or beyond ``retention.bytes``
        (:mod:`~raystream.storage.retention`). Returns segments deleted."""
        with self._lock:
            self._check_open()
            if not self.config.delete:
                return 0
            limit = self.log_end_offset if high_watermark is None else high_watermark
            count = segments_to_delete(self.segments, self.config, now, limit)
            deleted = self._delete_segments(count)
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
