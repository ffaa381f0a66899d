"""Which old segments retention deletes (Kafka's ``UnifiedLog.deleteRetentionMsBreachedSegments`` and
``deleteRetentionSizeBreachedSegments``): a plan over the segments, which the log then carries out.

Only a prefix of the sealed segments ever goes (never the active one, never one holding offsets at or above
``limit``, the high watermark), so the log keeps no holes. Pure functions (``now`` is an argument, ms);
thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence

from raystream.config import TopicConfig
from raystream.storage.segment import LogSegment


def segments_to_delete(segments: Sequence[LogSegment], config: TopicConfig, now: int, limit: int) -> int:
    """How many segments, from the first, are past ``retention.ms`` (by their max timestamp, before
    ``now``) and then past ``retention.bytes`` (what is left after the first rule)."""
    sealed = list(segments[:-1])
    count = 0
    if config.retention_ms >= 0:
        horizon = now - config.retention_ms
        while count < len(sealed) and sealed[count].max_timestamp < horizon and sealed[count].next_offset <= limit:
            count += 1
    if config.retention_bytes >= 0:
        excess = sum(s.size for s in segments[count:]) - config.retention_bytes
        while count < len(sealed) and excess - sealed[count].size >= 0 and sealed[count].next_offset <= limit:
            excess -= sealed[count].size
            count += 1
    return count
