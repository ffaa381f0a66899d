"""Log compaction (``cleanup.policy=compact``) and recovery of interrupted segment swaps.

Compaction keeps the latest record of every key in the sealed segments (the active one is never touched),
keeps offsets (a batch keeps its offset range even when records leave it), and drops tombstones (null
values) whose timestamp is older than ``delete.retention.ms``. Consecutive sealed segments are merged into
one cleaned segment while their total stays within ``segment.bytes``.

Crash safety, as Kafka's cleaner: the cleaned data is written to ``<base>.arrows.cleaned`` and fsynced,
then renamed to ``.swap`` (the commit point: the new data is complete), then the old segments are
deleted, then the swap is renamed to ``<base>.arrows``. A crash before the ``.swap`` rename leaves the
old segments (recovery deletes the ``.cleaned`` file); a crash after it leaves a complete swap (recovery
deletes what it replaces — every segment whose base lies in its offset range — and renames it). So the
log holds either the old or the new segments, never a mix.

Concurrency: :func:`compact` holds the log's lock only to plan and to swap; reading old segments and
writing the cleaned one happen without it, so reads and appends go on meanwhile. One cleaner per log.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raystream.errors import CorruptRecordError
from raystream.record import OFFSET_COLUMN, TIMESTAMP_COLUMN
from raystream.storage.batch import StoredBatch
from raystream.storage.files import fsync_dir
from raystream.storage.segment import (
    DATA_SUFFIX,
    INDEX_SUFFIX,
    MAX_RELATIVE_OFFSET,
    TIME_INDEX_SUFFIX,
    LogSegment,
    segment_name,
)

log = logging.getLogger(__name__)

CLEANED, SWAP, DELETED = ".cleaned", ".swap", ".deleted"


@dataclasses.dataclass(frozen=True)
class CleanerStats:
    segments_before: int = 0
    segments_after: int = 0
    records_before: int = 0
    records_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def compact(log_, now: int, value_column: str = "value") -> CleanerStats:
    """Compact ``log_`` (a :class:`~raystream.storage.log.Log`) once. ``now`` is the wall clock in ms."""
    with log_._lock:
        log_._check_open()
        if not log_.config.compact:
            return CleanerStats()
        sealed = [s for s in log_.segments[:-1] if log_.key_column in s.schema.names]
        generation = log_.truncation_generation  # a truncation meanwhile voids the result
        config = log_.config
        key_column = log_.key_column
    if not sealed:
        return CleanerStats()
    try:
        latest = _latest_offsets(sealed, key_column)
        groups = _group(sealed, config.segment_bytes)
        cleaned = [_clean_group(group, latest, key_column, value_column,
                                now - config.delete_retention_ms, config.index_interval_bytes)
                   for group in groups]
    except (OSError, CorruptRecordError) as exc:  # a segment vanished or broke meanwhile: try again later
        log.warning("[%s] compaction abandoned: %s", log_.directory.name, exc)
        return CleanerStats()
    with log_._lock:
        changed = log_.truncation_generation != generation or any(s not in log_.segments for s in sealed)
        if log_._closed or changed:
            for c in cleaned:
                c.new.delete(data_only=True)
            return CleanerStats()
        for c in cleaned:
            _swap_in(log_, c.new, c.group)
        fsync_dir(log_.directory)
    return CleanerStats(
        segments_before=len(sealed), segments_after=len(cleaned),
        records_before=sum(c.records_before for c in cleaned), records_after=sum(c.records_after for c in cleaned),
        bytes_before=sum(c.bytes_before for c in cleaned), bytes_after=sum(c.new.size for c in cleaned))


@dataclasses.dataclass
class _Cleaned:
    new: LogSegment
    group: list[LogSegment]
    records_before: int
    records_after: int
    bytes_before: int


def _latest_offsets(segments: list[LogSegment], key_column: str) -> np.ndarray:
    """Sorted offsets of the latest record of each key (records with a null key are always kept)."""
    keys, offsets, unkeyed = [], [], []
    for segment in segments:
        for _, batch in segment.batches(segment.base_offset):
            data = batch.data
            if data.num_rows == 0:
                continue
            key = data.column(key_column)
            offset = data.column(OFFSET_COLUMN)
            if key.null_count:
                unkeyed.append(offset.filter(key.is_null()).to_numpy())
                valid = key.is_valid()
                key, offset = key.filter(valid), offset.filter(valid)
            keys.append(key)
            offsets.append(offset)
    if keys:
        table = pa.table({"k": pa.concat_arrays(keys), "o": pa.concat_arrays(offsets)})
        latest = table.group_by("k").aggregate([("o", "max")]).column("o_max").to_numpy()
    else:
        latest = np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate([latest, *unkeyed]))


def _group(segments: list[LogSegment], max_bytes: int) -> list[list[LogSegment]]:
    groups: list[list[LogSegment]] = []
    for segment in segments:
        last = groups[-1] if groups else None
        if (last and last[-1].schema.equals(segment.schema)
                and sum(s.size for s in last) + segment.size <= max_bytes
                and segment.next_offset - 1 - last[0].base_offset <= MAX_RELATIVE_OFFSET):
            last.append(segment)
        else:
            groups.append([segment])
    return groups


def _clean_group(group: list[LogSegment], latest: np.ndarray, key_column: str, value_column: str,
                 tombstone_horizon_ms: int, index_interval_bytes: int) -> _Cleaned:
    first = group[0]
    new = LogSegment.create(first.directory, first.base_offset, first.schema, index_interval_bytes,
                            suffix=CLEANED)
    batches = [b for s in group for _, b in s.batches(s.base_offset)]
    records_before = records_after = 0
    for i, batch in enumerate(batches):
        kept = _filter(batch.data, latest, value_column, tombstone_horizon_ms)
        records_before += batch.data.num_rows
        records_after += kept.num_rows
        is_last = i == len(batches) - 1
        if kept.num_rows == 0 and batch.header.producer_id < 0 and not is_last:
            continue  # an empty batch is kept only for producer state or to hold the group's end offset
        header = dataclasses.replace(batch.header, record_count=kept.num_rows)
        new.append(StoredBatch(header, kept))
    os.fsync(new._fd)  # data only: index files are written under the final name, after the swap
    return _Cleaned(new, group, records_before, records_after, sum(s.size for s in group))


def _filter(data: pa.RecordBatch, latest: np.ndarray, value_column: str, horizon_ms: int) -> pa.RecordBatch:
    if data.num_rows == 0:
        return data
    offsets = data.column(OFFSET_COLUMN).to_numpy()
    idx = np.minimum(np.searchsorted(latest, offsets), max(len(latest) - 1, 0))
    keep = latest[idx] == offsets if len(latest) else np.zeros(len(offsets), dtype=bool)
    if value_column in data.schema.names:
        old = data.column(TIMESTAMP_COLUMN).to_numpy() < horizon_ms
        tombstone = data.column(value_column).is_null().to_numpy(zero_copy_only=False)
        keep &= ~(tombstone & old)
    if keep.all():
        return data
    return data.filter(pa.array(keep))


def _swap_in(log_, new: LogSegment, group: list[LogSegment]) -> None:
    """Replace ``group`` by ``new`` in the log (lock held): commit, delete the old files, take the name."""
    new.rename_suffix(SWAP)  # the commit point
    fsync_dir(new.directory)
    for old in group:
        old.delete()
    new.rename_suffix("")
    new.flush()
    log_.segments.replace(group, new)


def recover_interrupted_changes(directory: Path, index_interval_bytes: int) -> None:
    """Finish or undo what a crash interrupted (see the module docstring). Runs before segments load."""
    for path in directory.glob("*" + DATA_SUFFIX + DELETED):
        path.unlink()
    for path in directory.glob("*" + DATA_SUFFIX + CLEANED):
        path.unlink()
    for path in sorted(directory.glob("*" + DATA_SUFFIX + SWAP)):
        swap = LogSegment.open(path, index_interval_bytes)
        swap.rebuild(verify=True)
        start, end = swap.base_offset, swap.next_offset
        swap.close()
        for data in directory.glob("*" + DATA_SUFFIX):
            base = int(data.name.split(".")[0])
            if start <= base < end:
                _unlink_segment_files(directory, base)
        _unlink_segment_files(directory, start)  # stale indexes of the replaced first segment
        os.replace(path, directory / (segment_name(start) + DATA_SUFFIX))
        fsync_dir(directory)
        log.info("[%s] completed an interrupted compaction swap at offset %d", directory.name, start)


def _unlink_segment_files(directory: Path, base: int) -> None:
    for suffix in (DATA_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX):
        (directory / (segment_name(base) + suffix)).unlink(missing_ok=True)
