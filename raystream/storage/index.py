"""Sparse, sorted indexes of one segment: the offset index and the time index.

* offset index: ``relative offset -> file position`` of the batch that starts at or before that offset;
* time index: ``max timestamp so far -> relative offset`` of the batch where that timestamp was reached.

An entry is added at most every ``index.interval.bytes`` of appended data, so the index is small and a
lookup is a binary search followed by a short forward scan of the segment (as in Kafka). Entries live in
memory and are written to ``<base>.index`` / ``<base>.timeindex`` when the segment is flushed, sealed or
closed; a missing or inconsistent file is rebuilt from the data by the segment's recovery.

Not thread-safe: the owning segment's log serialises access.
"""

from __future__ import annotations

import bisect
import struct
from pathlib import Path

from raystream.storage.files import atomic_write


class SparseIndex:
    """A list of (key, value) pairs with non-decreasing keys, persisted as fixed-size binary records."""

    def __init__(self, path: Path, entry_format: str) -> None:
        self.path = path
        self._struct = struct.Struct(entry_format)
        self.keys: list[int] = []
        self.values: list[int] = []
        self._dirty = False

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, key: int, value: int) -> None:
        assert not self.keys or key >= self.keys[-1], (key, self.keys[-1])
        self.keys.append(key)
        self.values.append(value)
        self._dirty = True

    def floor(self, key: int) -> tuple[int, int] | None:
        """The last entry whose key is <= ``key``, or None."""
        i = bisect.bisect_right(self.keys, key) - 1
        return (self.keys[i], self.values[i]) if i >= 0 else None

    def ceiling_index(self, key: int) -> int:
        """Index of the first entry whose key is >= ``key`` (len(self) if none)."""
        return bisect.bisect_left(self.keys, key)

    def truncate_where_value_at_least(self, value: int) -> None:
        """Drop the entries whose value is >= ``value`` (values are non-decreasing too)."""
        i = bisect.bisect_left(self.values, value)
        if i < len(self.values):
            del self.keys[i:], self.values[i:]
            self._dirty = True

    def truncate_where_key_at_least(self, key: int) -> None:
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys):
            del self.keys[i:], self.values[i:]
            self._dirty = True

    def clear(self) -> None:
        self.keys.clear()
        self.values.clear()
        self._dirty = True

    def flush(self) -> None:
        if self._dirty or not self.path.exists():
            atomic_write(self.path, b"".join(self._struct.pack(k, v) for k, v in zip(self.keys, self.values, strict=True)))
            self._dirty = False

    def load(self) -> bool:
        """Load entries from disk; False (and empty) if the file is missing or not well-formed."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False
        if len(data) % self._struct.size:
            return False
        pairs = list(self._struct.iter_unpack(data))
        keys = [k for k, _ in pairs]
        values = [v for _, v in pairs]
        if keys != sorted(keys) or values != sorted(values):
            return False
        self.keys, self.values, self._dirty = keys, values, False
        return True


def offset_index(path: Path) -> SparseIndex:
    return SparseIndex(path, "<IQ")  # relative offset, file position


def time_index(path: Path) -> SparseIndex:
    return SparseIndex(path, "<qI")  # timestamp ms, relative offset
