"""The segments of one log, ordered by base offset (Kafka's ``LogSegments``).

Kafka keeps a log's segments in a ``ConcurrentSkipListMap`` of base offset -> segment, so the floor
lookup (which segment holds an offset?) and the iteration from an offset are the only ways in. Here the
same map is a sorted list of base offsets beside a dict, kept in step by this class alone (the log no
longer edits a ``segments`` list and a ``_bases`` list by hand). It is also a read-only sequence in base
offset order (``len``, indexing, slicing, iteration), which is how tests and reports look at a log.

Not thread-safe: the owning :class:`~raystream.storage.log.Log` calls it with its lock held (the cleaner
swaps segments with that lock held too).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from raystream.storage.segment import LogSegment


class LogSegments(Sequence[LogSegment]):
    """See the module docstring."""

    def __init__(self, segments: Iterable[LogSegment] = ()) -> None:
        self._bases: list[int] = []
        self._by_base: dict[int, LogSegment] = {}
        for segment in segments:
            self.add(segment)

    # -- sequence view --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._bases)

    @overload
    def __getitem__(self, index: int) -> LogSegment: ...

    @overload
    def __getitem__(self, index: slice) -> list[LogSegment]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._by_base[base] for base in self._bases[index]]
        return self._by_base[self._bases[index]]

    def __iter__(self) -> Iterator[LogSegment]:
        # A snapshot of the order: callers may delete segments while iterating.
        return iter([self._by_base[base] for base in self._bases])

    def __contains__(self, segment: object) -> bool:
        return isinstance(segment, LogSegment) and self._by_base.get(segment.base_offset) is segment

    # -- map -----------------------------------------------------------------------------------------------
    @property
    def active(self) -> LogSegment:
        """The last segment, the one appends go to."""
        return self._by_base[self._bases[-1]]

    def base_offsets(self) -> list[int]:
        return list(self._bases)

    def floor_index(self, offset: int) -> int:
        """Position of the segment holding ``offset`` (the greatest base <= offset), 0 if before all."""
        return max(0, bisect.bisect_right(self._bases, offset) - 1)

    def floor(self, offset: int) -> LogSegment:
        """The segment holding ``offset`` (the first one if ``offset`` is below every base)."""
        return self[self.floor_index(offset)]

    def from_offset(self, offset: int) -> list[LogSegment]:
        """The segments from the one holding ``offset`` to the active one, in order."""
        return self[self.floor_index(offset):]

    def add(self, segment: LogSegment) -> None:
        """Add ``segment`` in base-offset order; a segment with the same base must be removed first."""
        base = segment.base_offset
        if base in self._by_base:
            raise ValueError(f"a segment with base offset {base} is already in the log")
        bisect.insort(self._bases, base)
        self._by_base[base] = segment

    def remove(self, segment: LogSegment) -> None:
        """Forget ``segment`` (deleting its files is the caller's job)."""
        if segment not in self:
            raise ValueError(f"segment at base offset {segment.base_offset} is not in the log")
        self._bases.remove(segment.base_offset)
        del self._by_base[segment.base_offset]

    def remove_after(self, index: int) -> list[LogSegment]:
        """Forget every segment after position ``index``; returns them, in order."""
        removed = self[index + 1:]
        for segment in removed:
            self.remove(segment)
        return removed

    def clear(self) -> list[LogSegment]:
        """Forget every segment; returns them, in order."""
        return self.remove_after(-1)

    def replace(self, old: Iterable[LogSegment], new: LogSegment) -> None:
        """Put ``new`` in place of ``old`` (the cleaner swapping a group of segments for their cleaned copy)."""
        for segment in old:
            self.remove(segment)
        self.add(new)
