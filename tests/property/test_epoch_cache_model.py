"""Stateful property test: :class:`raystream.storage.epoch_cache.LeaderEpochCache` against a list model.

The model follows the module's contract: entries are ``(epoch, start_offset)``, both strictly increasing;
``assign`` ignores an epoch that is not newer than the latest and first forgets entries starting at or
after the new start; every change is persisted, so a reopened cache holds the same entries.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from raystream.storage.epoch_cache import UNDEFINED_EPOCH, UNDEFINED_OFFSET, LeaderEpochCache

TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
epochs = st.integers(-2, 12)
offsets = st.integers(0, 60)


class EpochCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="raystream-epochmodel-", dir=TMP_ROOT)
        self.path = Path(self.dir) / "leader-epoch-checkpoint"
        self.cache = LeaderEpochCache(self.path)
        self.model: list[tuple[int, int]] = []

    @rule(epoch=epochs, start=offsets)
    def assign(self, epoch: int, start: int) -> None:
        self.cache.assign(epoch, start)
        if epoch < 0 or (self.model and epoch <= self.model[-1][0]):
            return
        self.model = [(e, o) for e, o in self.model if o < start] + [(epoch, start)]

    @rule(end=offsets)
    def truncate_from_end(self, end: int) -> None:
        self.cache.truncate_from_end(end)
        self.model = [(e, o) for e, o in self.model if o < end]

    @rule(start=offsets)
    def truncate_from_start(self, start: int) -> None:
        self.cache.truncate_from_start(start)
        covering = [i for i, (_, o) in enumerate(self.model) if o <= start]
        if covering:
            i = covering[-1]
            self.model = [(self.model[i][0], start)] + self.model[i + 1:]

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model = []

    @rule()
    def reopen(self) -> None:
        self.cache = LeaderEpochCache(self.path)

    @rule(epoch=epochs, extra=st.integers(0, 10))
    def end_offset_for(self, epoch: int, extra: int) -> None:
        leo = (self.model[-1][1] if self.model else 0) + extra
        older = [i for i, (e, _) in enumerate(self.model) if e <= epoch]
        if not older:
            expected = (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
        elif older[-1] == len(self.model) - 1:
            expected = (self.model[-1][0], leo)
        else:
            expected = (self.model[older[-1]][0], self.model[older[-1] + 1][1])
        assert self.cache.end_offset_for(epoch, leo) == expected

    @rule(offset=offsets)
    def epoch_for_offset(self, offset: int) -> None:
        covering = [e for e, o in self.model if o <= offset]
        assert self.cache.epoch_for_offset(offset) == (covering[-1] if covering else UNDEFINED_EPOCH)

    @invariant()
    def matches_model(self) -> None:
        entries = [tuple(e) for e in self.cache.entries]
        assert entries == self.model
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(entries, entries[1:], strict=False)), entries
        assert self.cache.latest_epoch == (self.model[-1][0] if self.model else UNDEFINED_EPOCH)
        assert [tuple(e) for e in LeaderEpochCache(self.path).entries] == self.model, "not persisted"

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


EpochCacheMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestEpochCacheModel = EpochCacheMachine.TestCase
