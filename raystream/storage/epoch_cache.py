"""The leader-epoch cache: which leader epoch started at which offset (Kafka's LeaderEpochFileCache).

A follower that starts following a new leader asks it for the end offset of its own latest epoch and
truncates its log there (KIP-101), so a suffix written under a deposed leader is dropped instead of
silently diverging. Entries are (epoch, start_offset), both strictly increasing. Persisted atomically to
``leader-epoch-checkpoint`` on every change (changes are rare: once per leader change).

Not thread-safe: the owning log serialises access.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from raystream.storage.files import read_state, write_state

UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1


class LeaderEpochCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        state = read_state(path, default=[])
        self.entries: list[tuple[int, int]] = [(int(e), int(o)) for e, o in state]  # type: ignore[union-attr]

    @property
    def latest_epoch(self) -> int:
        return self.entries[-1][0] if self.entries else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int) -> None:
        """Record that ``epoch`` starts at ``start_offset`` (no-op if it is already the latest epoch)."""
        if epoch < 0:
            return
        if self.entries and epoch <= self.entries[-1][0]:
            return
        # An entry for an older epoch whose start is at or after this one can no longer be right.
        while self.entries and self.entries[-1][1] >= start_offset:
            self.entries.pop()
        self.entries.append((epoch, start_offset))
        self._persist()

    def end_offset_for(self, epoch: int, log_end_offset: int) -> tuple[int, int]:
        """(largest epoch <= ``epoch``, end offset of that epoch) — the answer to a follower's
        OffsetsForLeaderEpoch request. ``(-1, -1)`` if ``epoch`` is older than every entry."""
        if not self.entries:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if epoch >= self.entries[-1][0]:
            return self.entries[-1][0], log_end_offset
        i = bisect.bisect_right([e for e, _ in self.entries], epoch)
        if i == 0:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        return self.entries[i - 1][0], self.entries[i][1]

    def truncation_point(self, follower_epochs: list[tuple[int, int]], follower_log_end_offset: int,
                         log_end_offset: int) -> int:
        """Where a follower with epoch entries ``follower_epochs`` must cut its log to agree with this
        (the leader's) cache: the end of the largest epoch both know (KIP-101 with KIP-279's refinement:
        when the leader answers with an older epoch than the follower's latest, the follower's own end of
        that epoch bounds the cut too, so a suffix it wrote as leader of an epoch the new leader never saw
        goes even where it is shorter than the leader's epoch). A follower whose epochs all predate this
        cache keeps its log (nothing to compare)."""
        follower_latest = follower_epochs[-1][0] if follower_epochs else UNDEFINED_EPOCH
        epoch, end = self.end_offset_for(follower_latest, log_end_offset)
        if end < 0:
            return follower_log_end_offset
        follower_end = next((start for e, start in follower_epochs if e > epoch), follower_log_end_offset)
        return min(end, follower_end, follower_log_end_offset)

    def epoch_for_offset(self, offset: int) -> int:
        i = bisect.bisect_right([o for _, o in self.entries], offset)
        return self.entries[i - 1][0] if i else UNDEFINED_EPOCH

    def truncate_from_end(self, end_offset: int) -> None:
        """Forget epochs that start at or after ``end_offset`` (the log was truncated there)."""
        kept = [(e, o) for e, o in self.entries if o < end_offset]
        if kept != self.entries:
            self.entries = kept
            self._persist()

    def truncate_from_start(self, start_offset: int) -> None:
        """The log now starts at ``start_offset``: the epoch covering it starts there."""
        i = bisect.bisect_right([o for _, o in self.entries], start_offset)
        if i <= 1 and not (i == 1 and self.entries[0][1] < start_offset):
            return
        first_epoch = self.entries[i - 1][0]
        self.entries = [(first_epoch, start_offset)] + self.entries[i:]
        self._persist()

    def clear(self) -> None:
        self.entries = []
        self._persist()

    def _persist(self) -> None:
        write_state(self.path, [list(e) for e in self.entries])
