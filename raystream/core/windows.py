"""Event-time windows for stream processing (Kafka Streams' windowing rules), vectorised over Arrow columns.

A window is ``[start, end)`` in event time (milliseconds, the record timestamp or a column). Windows close
by *stream time*, the largest event time a task has seen so far (its watermark, per input partition): a
window closes once stream time reaches ``end + grace_ms``. A record whose every window is closed when it
arrives is late: it is counted and dropped (or routed elsewhere by the caller), never folded into a result
that was already emitted.

* :class:`TumblingWindows` — fixed size, no overlap: each record is in exactly one window.
* :class:`HoppingWindows` — fixed size, advancing by ``advance_ms``: a record is in ``size / advance``
  windows (rounded up), the ones whose start is in ``(ts - size, ts]`` on the advance grid.
* :class:`SessionWindows` — per key, records closer than ``inactivity_gap_ms`` share a session; a record
  between two sessions merges them (:func:`merge_sessions`).

Assignment is vectorised with numpy (one pass over a batch's timestamps, no Python per record);
:class:`StreamTime` keeps the watermark. Pure: no I/O, no clock; not thread-safe (one stream task owns one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

#: Kafka Streams' default grace before 3.0 was 24 h; since then windows declare it. 0 here unless given.
DEFAULT_GRACE_MS = 0


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be an int > 0 (milliseconds), got {value!r}")
    return value


def _non_negative(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (milliseconds), got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Which rows fall in which windows: ``rows[i]`` (an index into the batch) is in the window starting at
    ``starts[i]``; one entry per (row, window), in row order."""

    rows: np.ndarray  # int64
    starts: np.ndarray  # int64, ms

    def ends(self, size_ms: int) -> np.ndarray:
        return self.starts + size_ms


@dataclasses.dataclass(frozen=True)
class HoppingWindows:
    """Windows of ``size_ms`` starting every ``advance_ms`` (aligned to the epoch), closing ``grace_ms``
    after their end in stream time."""

    size_ms: int
    advance_ms: int
    grace_ms: int = DEFAULT_GRACE_MS

    def __post_init__(self) -> None:
        _positive("size_ms", self.size_ms)
        _positive("advance_ms", self.advance_ms)
        _non_negative("grace_ms", self.grace_ms)
        if self.advance_ms > self.size_ms:
            raise ValueError(f"advance_ms ({self.advance_ms}) may not exceed size_ms ({self.size_ms}): records "
                             f"between windows would be in none")

    @property
    def windows_per_record(self) -> int:
        return -(-self.size_ms // self.advance_ms)

    def assign(self, timestamps: np.ndarray) -> Assignment:
        """Every (row, window start) of these event times: the windows with ``start <= ts < start + size``."""
        ts = np.asarray(timestamps, dtype=np.int64)
        last = ts - np.mod(ts, self.advance_ms)  # the latest window start at or before ts
        rows = np.repeat(np.arange(len(ts), dtype=np.int64), self.windows_per_record)
        starts = np.repeat(last, self.windows_per_record) - np.tile(
            np.arange(self.windows_per_record, dtype=np.int64) * self.advance_ms, len(ts))
        inside = starts + self.size_ms > np.repeat(ts, self.windows_per_record)
        return Assignment(rows[inside], starts[inside])

    def closed(self, starts: np.ndarray, stream_time: int) -> np.ndarray:
        """Which windows (by start) are closed at ``stream_time``: end + grace reached."""
        return np.asarray(starts, dtype=np.int64) + self.size_ms + self.grace_ms <= stream_time


def TumblingWindows(size_ms: int, grace_ms: int = DEFAULT_GRACE_MS) -> HoppingWindows:  # noqa: N802 - a type
    """Fixed windows of ``size_ms`` that do not overlap (hopping windows that advance by their size)."""
    return HoppingWindows(size_ms, size_ms, grace_ms)


@dataclasses.dataclass
class StreamTime:
    """A task's stream time (watermark): the largest event time seen, per input partition or overall.
    For a batch, call :meth:`late` first, then :meth:`advance`: a batch's records are judged against the
    stream time before it (Kafka Streams advances record by record, so it is stricter by at most one batch
    of disorder)."""

    value: int = -(2 ** 63)

    def advance(self, timestamps: np.ndarray) -> int:
        if len(timestamps):
            self.value = max(self.value, int(np.max(timestamps)))
        return self.value

    def late(self, windows: HoppingWindows, assignment: Assignment, n_rows: int) -> np.ndarray:
        """Per row: True when every window it falls in was closed before this batch (it is dropped)."""
        open_ = ~windows.closed(assignment.starts, self.value)
        has_open = np.zeros(n_rows, dtype=bool)
        np.logical_or.at(has_open, assignment.rows, open_)
        return ~has_open


@dataclasses.dataclass(frozen=True)
class Session:
    """One key's session: ``[start, end]`` are its first and last event times (inclusive, as Kafka's)."""

    start: int
    end: int


@dataclasses.dataclass(frozen=True)
class SessionWindows:
    """Sessions per key that end after ``inactivity_gap_ms`` without records, closing ``grace_ms`` after."""

    inactivity_gap_ms: int
    grace_ms: int = DEFAULT_GRACE_MS

    def __post_init__(self) -> None:
        _positive("inactivity_gap_ms", self.inactivity_gap_ms)
        _non_negative("grace_ms", self.grace_ms)

    def closed(self, session: Session, stream_time: int) -> bool:
        return session.end + self.inactivity_gap_ms + self.grace_ms <= stream_time


def merge_sessions(sessions: Iterable[Session], timestamp: int, gap_ms: int) -> tuple[Session, list[Session]]:
    """The session a record at ``timestamp`` belongs to, given the key's sessions, and the sessions it
    replaces: every session within ``gap_ms`` of the record, or of the growing merged session."""
    merged, remaining, replaced = Session(timestamp, timestamp), list(sessions), []
    changed = True
    while changed:  # a merged session may reach one it did not reach before
        changed = False
        for session in list(remaining):
            if session.start - gap_ms <= merged.end and merged.start <= session.end + gap_ms:
                merged = Session(min(merged.start, session.start), max(merged.end, session.end))
                replaced.append(session)
                remaining.remove(session)
                changed = True
    return merged, sorted(replaced, key=lambda s: s.start)
