"""A log's directory: the format marker, the owner's lock, and the names of the log's own files.

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

Not thread-safe: the owning :class:`~raystream.storage.log.Log` locks once when it opens and releases once
when it closes.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from raystream.errors import InvalidLogDirectoryError, LogDirectoryLockedError
from raystream.storage.files import read_state, write_state

META_FILE = "raystream-log.meta"
LOCK_FILE = ".lock"
CLEAN_SHUTDOWN_FILE = ".clean_shutdown"
CHECKPOINT_FILE = "checkpoint"
EPOCH_FILE = "leader-epoch-checkpoint"
LOG_FORMAT = 1


class DirectoryLock:
    """The exclusive ``flock`` on a log directory, taken after checking (or writing) its format marker."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create the directory if needed, lock it and check its format. Raises InvalidLogDirectoryError
        for a foreign directory or format, LogDirectoryLockedError if another owner holds the lock."""
        d = self.directory
        if d.exists() and not d.is_dir():
            raise InvalidLogDirectoryError(f"{d} is not a directory")
        if d.is_dir() and not (d / META_FILE).exists():
            foreign = [p.name for p in d.iterdir() if p.name != LOCK_FILE]
            if foreign:
                raise InvalidLogDirectoryError(
                    f"{d} is not a raystream log directory (no {META_FILE}; holds {sorted(foreign)[:5]})")
        d.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise LogDirectoryLockedError(f"log directory {d} is already open by another owner") from None
        meta = read_state(d / META_FILE)
        if meta is None:
            write_state(d / META_FILE, {"format": LOG_FORMAT})
        elif not isinstance(meta, dict) or meta.get("format") != LOG_FORMAT:
            self.release()
            raise InvalidLogDirectoryError(f"{d}: unsupported log format {meta!r:.60}")

    def release(self) -> None:
        """Unlock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_checkpoint(directory: Path) -> tuple[int, int, int]:
    """The checkpointed (log start offset, recovery point, high watermark); zeros for a new log."""
    state = read_state(directory / CHECKPOINT_FILE, default={}) or {}
    return (int(state.get("log_start_offset", 0)), int(state.get("recovery_point", 0)),
            int(state.get("high_watermark", 0)))


def write_checkpoint(directory: Path, log_start_offset: int, recovery_point: int, high_watermark: int) -> None:
    """Replace the checkpoint atomically."""
    write_state(directory / CHECKPOINT_FILE, {
        "log_start_offset": log_start_offset,
        "recovery_point": recovery_point,
        "high_watermark": high_watermark,
    })
