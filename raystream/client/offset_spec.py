"""Offset specs, parsed once: what a user may name as a position in a partition.

``Admin.reset_offsets(to=...)`` and ``rs.data.read_topic(start=..., end=...)`` take ``"earliest"``,
``"latest"``, an offset >= 0 or ``{"timestamp": ms}`` (Kafka's ``OffsetSpec`` plus an exact offset);
``read_topic`` also takes a dict partition -> offset. ``auto_offset_reset`` names a reset policy
(:data:`RESET_SPECS`). The ListOffsets request that resolves a spec is in
:mod:`raystream.client.list_offsets`. Pure functions; no state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from raystream.protocol import EARLIEST, LATEST

#: ``auto_offset_reset`` values and the ListOffsets spec each resets to (``"none"``: raise instead).
RESET_SPECS = {"earliest": EARLIEST, "latest": LATEST, "none": None}


class OffsetSpecTypeError(TypeError, ValueError):
    """A spec of the wrong type. Both a TypeError (what ``Admin`` raised for a non-int timestamp) and a
    ValueError (what ``read_topic`` raised for one), so callers of either keep catching it."""


@dataclasses.dataclass(frozen=True)
class OffsetSpec:
    kind: Literal["earliest", "latest", "timestamp", "offset", "partitions"]
    timestamp_ms: int | None = None  # kind "timestamp": the first offset whose timestamp is >= this
    offset: int | None = None  # kind "offset": this offset in every partition
    offsets: Mapping[int, int] | None = None  # kind "partitions": partition -> offset

    @property
    def list_offsets_spec(self) -> int:
        """The ListOffsets spec (EARLIEST, LATEST or the timestamp) for the kinds a leader resolves."""
        if self.kind == "earliest":
            return EARLIEST
        if self.kind == "latest":
            return LATEST
        if self.kind == "timestamp":
            assert self.timestamp_ms is not None
            return self.timestamp_ms
        raise ValueError(f"an offset spec of kind {self.kind!r} names its offsets itself")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_offset_spec(spec: Any, what: str, *, per_partition: bool = False,
                      min_timestamp_ms: int = 0) -> OffsetSpec:
    """``spec`` as an :class:`OffsetSpec`; ValueError (OffsetSpecTypeError for a non-int timestamp) naming
    ``what`` otherwise. ``per_partition``: a dict partition -> offset is accepted too;
    ``min_timestamp_ms``: the smallest timestamp accepted."""
    if spec in ("earliest", "latest"):
        return OffsetSpec(spec)
    if isinstance(spec, Mapping) and set(spec) == {"timestamp"}:
        ts = spec["timestamp"]
        if not _is_int(ts):
            raise OffsetSpecTypeError(f"{what} timestamp must be an int (ms), got {type(ts).__name__}")
        if ts < min_timestamp_ms:
            raise ValueError(f"{what} timestamp must be an int >= {min_timestamp_ms} (ms), got {ts!r}")
        return OffsetSpec("timestamp", timestamp_ms=ts)
    if per_partition and isinstance(spec, Mapping):
        offsets = {}
        for p, off in spec.items():
            if not _is_int(off) or off < 0:
                raise ValueError(f"{what} offset of partition {p} must be an int >= 0, got {off!r}")
            offsets[int(p)] = off
        return OffsetSpec("partitions", offsets=offsets)
    if _is_int(spec) and spec >= 0:
        return OffsetSpec("offset", offset=spec)
    partition_map = " or a dict partition -> offset" if per_partition else ""
    raise ValueError(f"{what} must be 'earliest', 'latest', an offset >= 0, {{'timestamp': ms}}{partition_map}; "
                     f"got {spec!r}")
