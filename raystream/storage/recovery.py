"""Opening a log's segments after a restart: finish interrupted compactions, load every segment, and verify
what may be torn (Kafka's ``LogLoader``).

Segments below the recovery point (after a clean close: all of them) are trusted and only their indexes are
loaded; the rest are scanned batch by batch with their checksums checked, and the log is cut at the first
torn or corrupt batch — later segments go too, as a log has no holes. The result says what a crash cost.

Runs before the log is shared (in ``Log.__init__``, with the directory locked); not thread-safe.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from raystream.errors import CorruptRecordError
from raystream.storage.cleaner import recover_interrupted_changes
from raystream.storage.log_segments import LogSegments
from raystream.storage.segment import DATA_SUFFIX, LogSegment

log = logging.getLogger(__name__)


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


def recover_segments(directory: Path, index_interval_bytes: int, clean: bool,
                     recovery_point: int) -> tuple[LogSegments, RecoveryReport]:
    """The directory's segments, recovered, and the report (``log_end_offset`` not yet set: the log may
    still create or truncate segments). ``duration_s`` is measured with ``time.monotonic()``: an elapsed
    time for the report, not a reading of the clock that any decision depends on."""
    started = time.monotonic()
    for tmp in directory.glob("*.tmp"):
        tmp.unlink()
    recover_interrupted_changes(directory, index_interval_bytes)
    segments = LogSegments(_open_segments(directory, index_interval_bytes))
    report = _verify_tail(segments, clean, recovery_point)
    return segments, dataclasses.replace(report, duration_s=time.monotonic() - started)


def _open_segments(directory: Path, index_interval_bytes: int) -> list[LogSegment]:
    paths = sorted(directory.glob("*" + DATA_SUFFIX))
    segments = []
    for path in paths:
        try:
            segments.append(LogSegment.open(path, index_interval_bytes))
        except CorruptRecordError:
            # Only a segment created just before a crash can lack a schema; nothing after it can exist.
            if path != paths[-1]:
                raise
            log.warning("[%s] removing segment %s with a torn schema", directory.name, path.name)
            path.unlink()
    return segments


def _verify_tail(segments: LogSegments, clean: bool, recovery_point: int) -> RecoveryReport:
    """Trust segments below the recovery point (after a clean close: all); scan and verify the rest,
    cutting the log at the first torn or corrupt batch."""
    start = len(segments) if clean else segments.floor_index(recovery_point)
    for segment in segments[:start]:
        segment.load_or_rebuild_indexes()
    recovered_from = segments[start].base_offset if start < len(segments) else recovery_point
    truncated = deleted = dropped = 0
    error = None
    for i, segment in enumerate(segments[start:], start):
        result = segment.rebuild(verify=True)
        if result.error is None and result.valid_bytes == segment.size:
            continue
        error = result.error or "torn tail"
        dropped += _count_frames_from(segment, result.valid_bytes)
        truncated += segment.truncate_bytes(result.valid_bytes)
        for later in segments.remove_after(i):
            truncated += later.size
            dropped += later.rebuild(verify=False).batches
            later.delete()
            deleted += 1
        break
    return RecoveryReport(clean, recovered_from, 0, truncated, dropped, deleted, error)


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
