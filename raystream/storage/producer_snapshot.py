"""Producer-state snapshot files: ``<offset>.snapshot`` in a partition's log directory.

Kafka writes the idempotent-producer state to ``%020d.snapshot`` files so that recovery replays only the
log suffix after the latest snapshot instead of the whole log. A snapshot named ``N`` holds the state
after every batch *below* offset ``N`` (``N`` is the state's map end offset when it was taken).

This module deals in bytes only: the state itself is encoded, versioned and checksummed by
:mod:`raystream.core.producer_state` (storage must not import core). A file is written atomically
(temporary file, fsync, rename, directory fsync — :func:`raystream.storage.files.atomic_write`), so a
reader sees a whole snapshot or none; a leftover ``.snapshot.tmp`` is ignored here and removed when the
log opens. Loading tries snapshots newest first and skips, with a warning, one that cannot be read or
that ``decode`` rejects, so a corrupt file costs a longer replay, never a failed recovery.

Rules after log changes (as Kafka's ``truncateAndReload``): after a truncation to end offset ``E`` the
snapshots above ``E`` describe batches that are gone — :func:`delete_snapshots_above`; once the log start
offset moved to ``S`` the snapshots below ``S`` are useless — :func:`delete_snapshots_below`.

Plain functions; no state of their own. Not safe against concurrent writers of the same directory: the
owning replica serialises calls (as it does for the log itself).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from raystream.errors import CorruptRecordError
from raystream.storage.files import atomic_write, fsync_dir

log = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".snapshot"

T = TypeVar("T")


def snapshot_name(offset: int) -> str:
    if offset < 0:
        raise ValueError(f"snapshot offset must be >= 0, not {offset}")
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


def snapshot_path(log_dir: str | os.PathLike, offset: int) -> Path:
    return Path(log_dir) / snapshot_name(offset)


def snapshot_offset(path: str | os.PathLike) -> int | None:
    """The offset a snapshot file is named for; ``None`` if the name is not ``<digits>.snapshot``."""
    name = Path(path).name
    if not name.endswith(SNAPSHOT_SUFFIX):
        return None
    stem = name[:-len(SNAPSHOT_SUFFIX)]
    if not stem or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def write_snapshot(log_dir: str | os.PathLike, offset: int, data: bytes) -> Path:
    """Write ``data`` as the snapshot for ``offset``, atomically and durably (replacing one of the same
    offset). Returns the file's path."""
    path = snapshot_path(log_dir, offset)
    atomic_write(path, data)
    return path


def list_snapshots(log_dir: str | os.PathLike) -> list[int]:
    """Offsets of the snapshot files in ``log_dir``, ascending (temporary files are not snapshots)."""
    directory = Path(log_dir)
    try:
        paths = list(directory.iterdir())
    except FileNotFoundError:
        return []
    offsets = (snapshot_offset(p) for p in paths if p.is_file())
    return sorted(o for o in offsets if o is not None)


def read_snapshot(log_dir: str | os.PathLike, offset: int) -> bytes:
    """The bytes of the snapshot for ``offset`` (``FileNotFoundError`` if there is none)."""
    return snapshot_path(log_dir, offset).read_bytes()


def load_latest_snapshot(log_dir: str | os.PathLike, max_offset: int,
                         decode: Callable[[int, bytes], T]) -> tuple[int, T] | None:
    """``(offset, decode(offset, data))`` for the newest snapshot at or below ``max_offset`` that can be
    read and decoded; ``None`` if there is no such snapshot.

    ``decode`` must raise :class:`~raystream.errors.CorruptRecordError` (or ``ValueError``) for content it
    rejects; such a snapshot, like one that cannot be read, is skipped with a warning and the next older
    one is tried. Any other exception from ``decode`` propagates (it is a bug, not a bad file).
    """
    directory = Path(log_dir)
    for offset in reversed(list_snapshots(directory)):
        if offset > max_offset:
            continue
        path = snapshot_path(directory, offset)
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("[%s] skipping unreadable producer snapshot %s: %s", directory.name, path.name, exc)
            continue
        try:
            return offset, decode(offset, data)
        except (CorruptRecordError, ValueError) as exc:
            log.warning("[%s] skipping corrupt producer snapshot %s: %s", directory.name, path.name, exc)
    return None


def delete_snapshots_above(log_dir: str | os.PathLike, offset: int) -> list[int]:
    """Delete the snapshots for offsets greater than ``offset`` (the log was truncated to end there).
    Returns the deleted offsets. The directory is fsynced so a deleted snapshot cannot reappear after a
    crash and describe batches the log no longer has."""
    return _delete(Path(log_dir), [o for o in list_snapshots(log_dir) if o > offset])


def delete_snapshots_below(log_dir: str | os.PathLike, offset: int) -> list[int]:
    """Delete the snapshots for offsets less than ``offset`` (the log start offset moved there).
    Returns the deleted offsets."""
    return _delete(Path(log_dir), [o for o in list_snapshots(log_dir) if o < offset])


def _delete(directory: Path, offsets: list[int]) -> list[int]:
    for offset in offsets:
        snapshot_path(directory, offset).unlink(missing_ok=True)
    if offsets:
        fsync_dir(directory)
    return offsets
