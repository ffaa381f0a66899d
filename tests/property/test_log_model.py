"""Stateful property test: :class:`raystream.storage.log.Log` against a simple in-memory model.

Hypothesis drives one log through random appends, reads, rolls, flushes, truncations, DeleteRecords,
retention, compaction, clean close/reopen and crashes (with the unflushed tail of the active segment cut,
corrupted or dropped on disk before reopening), checking the log against the model after every step.

The model is a dict ``offset -> record`` for ``[log_start_offset, log_end_offset)`` plus the batch ranges.
Compaction is modelled loosely: it marks offsets the log *may* drop from then on (``maybe_absent``: a sealed
record that is not its key's latest, or an expired tombstone); the log must return a subset of the model
that holds everything else, with offsets unchanged, and a record once gone never comes back.

Durability is modelled independently of the log: the model knows which bytes of the active segment were
fsynced (explicit flush, roll, truncation, close, and automatic flushes by ``flush.messages`` /
``flush.ms``) and which batch ends at which byte, so after a crash it knows exactly which log end offset and
how many truncated bytes recovery must report. Time is injected (``now=``) everywhere.

Two rules reach into the cleaner (by wrapping its module functions, not by changing them): one runs another
log operation between the cleaner's planning and its swap, as a concurrent thread may; one crashes at each
step of the swap. The tests at the end replay minimal sequences the machine found.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from raystream.config import TopicConfig
from raystream.errors import InvalidRecordError, OffsetOutOfRangeError
from raystream.record import OFFSET_COLUMN, RECORD_SCHEMA, TIMESTAMP_COLUMN
from raystream.storage import cleaner
from raystream.storage.batch import decode, raw_batches
from raystream.storage.log import Log
from raystream.storage.segment import DATA_SUFFIX

#: tmpfs when there is one: the log fsyncs on every flush, roll and checkpoint, and disk fsyncs would make
#: the run's duration depend on whatever else the machine is doing.
TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
LONG_MAX = 2**63 - 1
DAY_MS = 24 * 3600 * 1000
BIG = 1 << 40
KEYS = [b"a", b"b", b"c", b"d", b"e"]
ALL_COLUMNS = [OFFSET_COLUMN, TIMESTAMP_COLUMN, "key", "value", "headers"]

# -- strategies -------------------------------------------------------------------------------------------
configs = st.fixed_dictionaries({
    "segment_bytes": st.sampled_from([2048, 4096, 4096]),
    "retention_bytes": st.sampled_from([-1, 6000, 15000]),
    "retention_ms": st.sampled_from([-1, 400, 3000]),
    "cleanup_policy": st.sampled_from(["delete", "compact", "compact,delete"]),
    "delete_retention_ms": st.sampled_from([0, 500, DAY_MS]),
    "segment_ms": st.sampled_from([7 * DAY_MS, 800]),
    "flush_messages": st.sampled_from([LONG_MAX, LONG_MAX, 30]),
    "flush_ms": st.sampled_from([LONG_MAX, LONG_MAX, 1500]),
    "index_interval_bytes": st.sampled_from([4096, 3000, 128]),
    "message_timestamp_type": st.sampled_from(["CreateTime", "CreateTime", "LogAppendTime"]),
})
headers_st = st.one_of(st.none(), st.lists(
    st.tuples(st.sampled_from(["h1", "h2"]), st.one_of(st.none(), st.binary(max_size=4))), max_size=2))
record_st = st.tuples(st.sampled_from(KEYS + [None]), st.one_of(st.none(), st.binary(max_size=60)), headers_st)


@dataclasses.dataclass(frozen=True)
class Rec:
    key: bytes | None
    value: bytes | None
    headers: tuple | None  # ((key, value), ...)
    ts: int


def _headers_py(headers: tuple | None) -> list | None:
    return None if headers is None else [{"key": k, "value": v} for k, v in headers]


def _rows(batches: list[pa.RecordBatch]) -> list[tuple[int, Rec]]:
    out = []
    for b in batches:
        cols = {name: b.column(name).to_pylist() for name in b.schema.names}
        for i in range(b.num_rows):
            h = cols["headers"][i]
            out.append((cols[OFFSET_COLUMN][i], Rec(cols["key"][i], cols["value"][i],
                                                     None if h is None else tuple((x["key"], x["value"]) for x in h),
                                                     cols[TIMESTAMP_COLUMN][i])))
    return out


class Model:
    def __init__(self) -> None:
        self.recs: dict[int, Rec] = {}           # offsets in [lso, leo)
        self.batches: list[tuple[int, int, int]] = []  # (base, last, leader epoch), last >= lso
        self.lso = 0
        self.leo = 0
        self.maybe_absent: set[int] = set()      # compaction may have removed these
        self.gone: set[int] = set()              # observed removed: must never come back
        self.low_water = 0                       # lowest log end offset since it was last set
        self.all_ts: dict[int, int] = {}         # timestamps of every record below leo, also below lso

    def must_keep(self, lo: int, hi: int) -> list[int]:
        return [o for o in range(max(lo, self.lso), min(hi, self.leo)) if o not in self.maybe_absent]

    def append(self, recs: list[Rec], epoch: int) -> None:
        base = self.leo
        for i, r in enumerate(recs):
            self.recs[base + i] = r
            self.all_ts[base + i] = r.ts
        self.batches.append((base, base + len(recs) - 1, epoch))
        self.leo += len(recs)

    def batch_containing(self, offset: int) -> tuple[int, int, int]:
        for b in self.batches:
            if b[0] <= offset <= b[1]:
                return b
        raise AssertionError(f"model has no batch holding {offset}")

    def truncate_end(self, new_leo: int) -> None:
        assert new_leo <= self.leo
        assert all(not (b[0] < new_leo <= b[1]) for b in self.batches), f"{new_leo} is inside a batch"
        self.recs = {o: r for o, r in self.recs.items() if o < new_leo}
        self.all_ts = {o: t for o, t in self.all_ts.items() if o < new_leo}
        self.batches = [b for b in self.batches if b[1] < new_leo]
        self.maybe_absent = {o for o in self.maybe_absent if o < new_leo}
        self.gone = {o for o in self.gone if o < new_leo}  # offsets at or above are assigned anew
        self.leo = new_leo
        self.lso = min(self.lso, new_leo)
        self.low_water = min(self.low_water, new_leo)

    def reset(self, offset: int) -> None:
        self.recs, self.batches, self.maybe_absent, self.gone, self.all_ts = {}, [], set(), set(), {}
        self.lso = self.leo = offset
        self.low_water = min(self.low_water, offset)

    def advance_start(self, new_lso: int) -> None:
        assert self.lso <= new_lso <= self.leo, (self.lso, new_lso, self.leo)
        self.lso = new_lso
        self.recs = {o: r for o, r in self.recs.items() if o >= new_lso}
        self.batches = [b for b in self.batches if b[1] >= new_lso]


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="raystream-logmodel-", dir=TMP_ROOT)
        self.path = os.path.join(self.dir, "topic-0")
        self.log: Log | None = None
        self.model = Model()
        self.now = 1_000_000
        self.epoch = 0
        self.compacted = False
        # durability of the active segment, tracked by the model
        self.active_base = 0
        self.durable = 0
        self.ends: list[tuple[int, int]] = []  # (byte position where a batch ends, next offset)
        self.unflushed = 0
        self.last_flush = self.now

    # -- helpers ---------------------------------------------------------------------------------------------
    def _open(self) -> Log:
        self.log = None
        log = Log(self.path, self.config, now=self.now)
        self.log = log
        self.unflushed = 0
        self.last_flush = self.now
        return log

    def _new_active(self) -> None:
        seg = self.log.active_segment
        self.active_base = seg.base_offset
        self.durable = 0  # LogSegment.create writes the schema without fsync
        self.ends = [(seg.data_start, seg.base_offset)]

    def _all_durable(self) -> None:
        seg = self.log.active_segment
        self.active_base = seg.base_offset
        self.durable = seg.size
        self.ends = [(seg.size, self.log.log_end_offset)]

    def _flushed(self) -> None:
        self._all_durable()
        self.unflushed = 0
        self.last_flush = self.now

    def _offsets(self, lo: int, hi: int) -> st.SearchStrategy[int]:
        """Offsets in [lo, hi], biased towards the edges: log start and end, batch starts and their neighbours."""
        m = self.model
        edges = {m.lso, m.lso + 1, m.leo - 1, m.leo}
        for base, last, _ in m.batches:
            edges.update((base, base + 1, last))
        edges = sorted(o for o in edges if lo <= o <= hi)
        return st.one_of(st.integers(lo, hi), st.sampled_from(edges)) if edges else st.integers(lo, hi)

    def _tick(self, dt: int) -> int:
        self.now += dt
        return self.now

    # -- rules -----------------------------------------------------------------------------------------------
    @initialize(cfg=configs)
    def open_log(self, cfg: dict) -> None:
        self.config = TopicConfig(**cfg)
        self.config.validate()
        self._open()
        self._new_active()
        assert self.log.log_end_offset == 0 and self.log.log_start_offset == 0

    @rule(rows=st.lists(record_st, min_size=1, max_size=20), dt=st.integers(1, 250),
          explicit_ts=st.booleans(), as_table=st.booleans(), data=st.data())
    def append(self, rows, dt, explicit_ts, as_table, data) -> None:
        now = self._tick(dt)
        if self.config.compact and data.draw(st.integers(0, 9), label="null keys allowed") > 0:
            rows = [(KEYS[0] if k is None else k, v, h) for k, v, h in rows]  # mostly valid batches
        given_ts = None
        if explicit_ts:
            given_ts = data.draw(st.lists(st.one_of(st.none(), st.integers(max(0, now - 2000), now + 100)),
                                          min_size=len(rows), max_size=len(rows)), label="timestamps")
        self._append(rows, given_ts, as_table)

    def _append(self, rows: list[tuple], given_ts: list | None = None, as_table: bool = False) -> None:
        now = self.now
        columns = {
            "key": pa.array([r[0] for r in rows], pa.binary()),
            "value": pa.array([r[1] for r in rows], pa.binary()),
            "headers": pa.array([_headers_py(r[2]) for r in rows], RECORD_SCHEMA.field("headers").type),
        }
        if given_ts is not None:
            columns[TIMESTAMP_COLUMN] = pa.array(given_ts, pa.int64())
        batch = pa.RecordBatch.from_pydict(columns)
        if as_table:
            batch = pa.Table.from_batches([batch])
        leo = self.model.leo
        if self.config.compact and any(r[0] is None for r in rows):
            try:
                self.log.append(batch, leader_epoch=self.epoch, now=now)
            except InvalidRecordError:
                assert self.log.log_end_offset == leo
                return
            raise AssertionError("a null key was accepted by a compacted log")
        info = self.log.append(batch, leader_epoch=self.epoch, now=now)
        n = len(rows)
        assert (info.base_offset, info.last_offset, info.record_count) == (leo, leo + n - 1, n)
        recs = []
        for i, (k, v, h) in enumerate(rows):
            if self.config.message_timestamp_type == "LogAppendTime" or given_ts is None or given_ts[i] is None:
                ts = now
            else:
                ts = given_ts[i]
            recs.append(Rec(k, v, None if h is None else tuple(h), ts))
        assert info.max_timestamp == max(r.ts for r in recs)
        self.model.append(recs, self.epoch)
        seg = self.log.active_segment
        if seg.base_offset != self.active_base:  # rolled: the old segment was flushed, the new one not
            assert seg.base_offset == leo
            self._new_active()
        self.ends.append((seg.size, self.model.leo))
        self.unflushed += n
        if self.unflushed >= self.config.flush_messages or now - self.last_flush >= self.config.flush_ms:
            self._flushed()

    @rule()
    def bump_epoch(self) -> None:
        self.epoch += 1

    @rule(data=st.data())
    def read(self, data) -> None:
        log, m = self.log, self.model
        start = data.draw(self._offsets(m.lso, m.leo), label="start")
        max_offset = data.draw(st.one_of(st.none(), self._offsets(max(0, start - 2), m.leo + 2)), label="max_offset")
        max_bytes = data.draw(st.one_of(st.integers(1, 6000), st.just(BIG)), label="max_bytes")
        columns = data.draw(st.one_of(st.none(), st.permutations(ALL_COLUMNS).flatmap(
            lambda p: st.integers(1, len(p)).map(lambda n: p[:n]))), label="columns")

        full = log.read(start, BIG, max_offset)
        for b in full + (limited := log.read(start, max_bytes, max_offset, columns)):
            b.validate(full=True)  # before anything else touches it: a malformed batch can crash the process
            assert b.num_rows > 0, f"read({start}, max_offset={max_offset}) returned a batch of {b.num_rows} rows"
        rows = _rows(full)
        hi = m.leo if max_offset is None else min(max_offset, m.leo)
        offsets = [o for o, _ in rows]
        assert offsets == sorted(set(offsets)), offsets
        assert all(start <= o < hi for o in offsets), (start, hi, offsets)
        for o, r in rows:
            assert m.recs.get(o) == r, (o, r, m.recs.get(o))
            assert o not in m.gone, f"compacted-away offset {o} came back"
        missing = set(m.must_keep(start, hi)) - set(offsets)
        assert not missing, f"read({start}, max_offset={max_offset}) lacks offsets {sorted(missing)}"

        reference = [b.select(columns) for b in full] if columns is not None else full
        sizes = [b.get_total_buffer_size() for b in limited]
        assert len(limited) <= len(reference)
        if reference:
            assert limited, "read returned nothing though records exist"
        for got, want in zip(limited, reference, strict=False):
            assert got.schema.names == (list(columns) if columns else ALL_COLUMNS)
            assert got.equals(want)
        if len(limited) > 1:
            assert sum(sizes) <= max_bytes, (sizes, max_bytes)
        if len(limited) < len(reference):  # stopped early: only because the next batch did not fit
            assert sum(sizes) + reference[len(limited)].get_total_buffer_size() > max_bytes

    def _replication_read(self, data) -> tuple[int, int | None, int, list]:
        """A replication read's arguments drawn at random, and every batch it may return (in order)."""
        log, m = self.log, self.model
        start = data.draw(self._offsets(m.lso, m.leo), label="start")
        max_offset = data.draw(st.one_of(st.none(), self._offsets(max(0, start - 2), m.leo + 2)), label="max_offset")
        max_bytes = data.draw(st.one_of(st.integers(1, 6000), st.just(BIG)), label="max_bytes")
        every = [b for b in log.read_batches(m.lso, BIG) if b.header.last_offset >= start]
        if max_offset is not None:
            every = [b for b in every if b.header.base_offset < max_offset]
        return start, max_offset, max_bytes, every

    @rule(data=st.data())
    def read_batches(self, data) -> None:
        """The replication read: whole batches from the one holding ``start``, a prefix of all of them."""
        log = self.log
        start, max_offset, max_bytes, every = self._replication_read(data)
        got = log.read_batches(start, max_bytes, max_offset, verify=True)
        assert len(got) <= len(every)
        assert [b.header for b in got] == [b.header for b in every[:len(got)]]
        assert all(a.data.equals(b.data) for a, b in zip(got, every, strict=False))
        sizes = [b.data.get_total_buffer_size() for b in got]
        if every:
            assert got, "read_batches returned nothing though batches exist"
        if len(got) > 1:
            assert sum(sizes) <= max_bytes, (sizes, max_bytes)
        if len(got) < len(every):
            assert sum(sizes) + every[len(got)].data.get_total_buffer_size() > max_bytes

    @rule(data=st.data())
    def read_raw(self, data) -> None:
        """The replication read as bytes: the same batches as ``read_batches`` (checked, decodable to the same
        headers and rows), appended verbatim by a follower they come out the same again."""
        log = self.log
        start, max_offset, max_bytes, every = self._replication_read(data)
        raws = [r for group in log.read_raw(start, max_bytes, max_offset) for r in raw_batches(group)]
        assert [r.header for r in raws] == [b.header for b in every[:len(raws)]]
        assert all(decode(r.message, r.schema, r.frame, verify=True).data.equals(b.data)
                   for r, b in zip(raws, every, strict=False))
        sizes = [r.frame.total_length for r in raws]
        if every:
            assert raws, "read_raw returned nothing though batches exist"
        if len(raws) > 1:
            assert sum(sizes) <= max_bytes, (sizes, max_bytes)
        if len(raws) < len(every):  # stopped early: only because the next message did not fit
            whole = [r for group in log.read_raw(start, BIG, max_offset) for r in raw_batches(group)]
            assert sum(sizes) + whole[len(raws)].frame.total_length > max_bytes

    @rule(data=st.data())
    def read_out_of_range(self, data) -> None:
        m = self.model
        choices = [m.leo + 1] + ([m.lso - 1] if m.lso > 0 else [])
        start = data.draw(st.sampled_from(choices))
        try:
            self.log.read(start, BIG)
        except OffsetOutOfRangeError:
            return
        raise AssertionError(f"read at {start} outside [{m.lso}, {m.leo}] did not raise")

    @rule(data=st.data())
    def offset_for_timestamp(self, data) -> None:
        m = self.model
        stamps = sorted({r.ts for r in m.recs.values()})
        target = data.draw(st.one_of(st.integers(0, self.now + 200), st.sampled_from(stamps or [0])),
                           label="timestamp")
        got = self.log.offset_for_timestamp(target)
        must = [o for o in m.must_keep(m.lso, m.leo) if m.recs[o].ts >= target]
        if got is None:
            assert not must, f"offset_for_timestamp({target}) is None, expected {must[0]}"
        else:
            assert got in m.recs and got not in m.gone and m.recs[got].ts >= target, (target, got)
            assert not must or got <= must[0], f"offset_for_timestamp({target}) = {got}, expected {must[0]}"
            if not self.compacted:
                assert got == must[0]

    @rule()
    def roll(self) -> None:
        before = self.log.active_segment.base_offset
        self.log.roll()
        after = self.log.active_segment.base_offset
        if after != before:
            assert after == self.model.leo
            self._new_active()

    @rule(dt=st.integers(0, 100))
    def flush(self, dt) -> None:
        self.log.flush(now=self._tick(dt))
        assert self.log.recovery_point == self.model.leo
        self._flushed()

    @rule(data=st.data())
    def truncate_to(self, data) -> None:
        m = self.model
        self._truncate(data.draw(self._offsets(max(0, m.lso - 2), m.leo + 2), label="truncate_to"))

    def _truncate(self, offset: int) -> None:
        m = self.model
        new_leo = self.log.truncate_to(offset)
        assert new_leo == self.log.log_end_offset
        if offset >= m.leo:
            assert new_leo == m.leo
            return
        if offset <= m.lso:
            assert new_leo == offset
            m.reset(offset)
        else:
            base = m.batch_containing(offset)[0]
            assert new_leo <= base, (offset, base, new_leo)
            if not self.compacted:
                assert new_leo == base, (offset, base, new_leo)
            lost = m.must_keep(new_leo, base)
            assert not lost, f"truncate_to({offset}) dropped offsets {lost} below the batch holding it"
            m.truncate_end(new_leo)
        self._all_durable()

    @rule(data=st.data())
    def delete_records_before(self, data) -> None:
        m = self.model
        offset = data.draw(self._offsets(0, m.leo + 2), label="delete_before")
        if offset > m.leo:
            try:
                self.log.delete_records_before(offset)
            except OffsetOutOfRangeError:
                return
            raise AssertionError(f"delete_records_before({offset}) above leo {m.leo} did not raise")
        got = self.log.delete_records_before(offset)
        expected = max(m.lso, offset)
        assert got == expected == self.log.log_start_offset, (got, expected, self.log.log_start_offset)
        segs = self.log.segments
        if offset > m.lso:
            assert len(segs) == 1 or segs[0].next_offset > expected, "a segment wholly below the start remains"
        m.advance_start(expected)

    @rule(dt=st.integers(0, 1500), data=st.data())
    def apply_retention(self, dt, data=None) -> None:
        now = self._tick(dt)
        m, cfg = self.model, self.config
        limit = m.leo
        if data is not None and data.draw(st.booleans(), label="with high watermark"):
            limit = data.draw(self._offsets(m.lso, m.leo), label="high watermark")
        snap = [(s.base_offset, s.next_offset, s.size, s.max_timestamp) for s in self.log.segments]
        deleted = self.log.apply_retention(now=now, high_watermark=None if limit == m.leo else limit)
        # The documented rule: a prefix of non-active segments, first by age then by size.
        expected = 0
        if cfg.delete:
            rest = list(snap)
            if cfg.retention_ms >= 0:
                while len(rest) > 1 and rest[0][3] < now - cfg.retention_ms and rest[0][1] <= limit:
                    rest.pop(0)
            if cfg.retention_bytes >= 0:
                excess = sum(s[2] for s in rest) - cfg.retention_bytes
                while len(rest) > 1 and excess - rest[0][2] >= 0 and rest[0][1] <= limit:
                    excess -= rest[0][2]
                    rest.pop(0)
            expected = len(snap) - len(rest)
        assert deleted == expected, (deleted, expected, snap, now)
        assert [s.base_offset for s in self.log.segments] == [s[0] for s in snap[deleted:]]
        if deleted:
            event("retention deleted segments")
            m.advance_start(max(m.lso, snap[deleted][0]))

    @rule(dt=st.integers(0, 1500))
    def compact(self, dt) -> None:
        now = self._tick(dt)
        active_base = self.log.active_segment.base_offset
        stats = cleaner.compact(self.log, now)
        self._compacted(stats, active_base, self.model.leo, now)

    def _compacted(self, stats: cleaner.CleanerStats | None, active_base: int, unchanged_below: int,
                   now: int) -> None:
        """Mark what a compaction planned with ``active_base`` may have removed: a record below both the
        active segment and any truncation made meanwhile (``unchanged_below``) that is not its key's
        latest record in the model, or an expired tombstone."""
        m = self.model
        if not self.config.compact:
            assert stats is None or stats == cleaner.CleanerStats()
            return
        latest = {}
        for o in sorted(m.recs):
            latest[m.recs[o].key] = o
        horizon = now - self.config.delete_retention_ms
        for o, r in m.recs.items():
            if o < min(active_base, unchanged_below) and (latest[r.key] != o or (r.value is None and r.ts < horizon)):
                m.maybe_absent.add(o)
        self.compacted = True
        if stats is not None and stats.records_after < stats.records_before:
            event("compaction removed records")

    @precondition(lambda self: self.config.compact and len(self.log.segments) > 1)
    @rule(op=st.sampled_from(["append", "roll", "truncate", "truncate_and_regrow", "delete_records",
                              "retention"]),
          dt=st.integers(0, 1500), data=st.data())
    def compact_during_change(self, op, dt, data) -> None:
        """The cleaner reads and writes without the log's lock: run another log operation between its
        planning and its swap (as a concurrent thread could) and check the log stays consistent."""
        now = self._tick(dt)
        m = self.model
        active_base = self.log.active_segment.base_offset
        m.low_water = m.leo
        real_clean_group = cleaner._clean_group
        changed = []

        def clean_group_then_change(*args, **kwargs):
            cleaned = real_clean_group(*args, **kwargs)
            if not changed:  # once per compaction, between reading the old segments and the swap
                changed.append(op)
                self._concurrent_change(op, active_base, data)
            return cleaned

        cleaner._clean_group = clean_group_then_change
        try:
            stats = cleaner.compact(self.log, now)
        finally:
            cleaner._clean_group = real_clean_group
        event(f"compaction during {op}: {'applied' if stats.segments_before else 'abandoned'}")
        self._compacted(stats, active_base, m.low_water, now)

    def _concurrent_change(self, op: str, sealed_end: int, data) -> None:
        m = self.model
        if op == "append":
            self._append(data.draw(st.lists(record_st.filter(lambda r: r[0] is not None), min_size=1, max_size=20)))
        elif op == "roll":
            self.roll()
        elif op == "truncate":
            self.truncate_to(data)
        elif op == "truncate_and_regrow":
            # Cut at a batch of a sealed segment, then append batches of the same shapes (values changed),
            # so the truncated segment may grow back to exactly its old size.
            last_sealed = self.log.segments[-2].base_offset if len(self.log.segments) > 1 else sealed_end
            candidates = [b for b in m.batches if max(m.lso + 1, last_sealed) <= b[0] and b[1] < sealed_end]
            if not candidates:
                return
            cut = data.draw(st.sampled_from(candidates), label="regrow from")[0]
            old = [[m.recs[o] for o in range(b[0], b[1] + 1)] for b in m.batches if b[0] >= cut]
            self._truncate(cut)
            for recs in old:
                self.now += 1
                self._append([(r.key, None if r.value is None else bytes(x ^ 0xFF for x in r.value),
                               None if r.headers is None else list(r.headers)) for r in recs])
        elif op == "delete_records":
            self.delete_records_before(data)
        elif op == "retention":
            self.apply_retention(dt=0, data=data)

    @precondition(lambda self: self.config.compact and len(self.log.segments) > 1)
    @rule(stage=st.sampled_from(["cleaned", "swap", "deleted_first", "deleted_all"]), dt=st.integers(0, 1500))
    def crash_during_compaction(self, stage, dt) -> None:
        """Crash at each step of the cleaner's swap; recovery must leave the old or the new segments."""
        now = self._tick(dt)
        active_base = self.log.active_segment.base_offset
        leo = self.model.leo

        class Crash(Exception):
            pass

        def partial_swap(log_, new, group):
            if stage != "cleaned":
                new.rename_suffix(cleaner.SWAP)
            if stage in ("deleted_first", "deleted_all"):
                for old in group[:1] if stage == "deleted_first" else group:
                    old.delete()
            new.close()
            raise Crash

        real_swap_in = cleaner._swap_in
        cleaner._swap_in = partial_swap
        try:
            cleaner.compact(self.log, now)
            crashed = False
        except Crash:
            crashed = True
        finally:
            cleaner._swap_in = real_swap_in
        self._compacted(None, active_base, leo, now)
        if not crashed:  # nothing to compact
            return
        event(f"crash during compaction at {stage}")
        self.log._simulate_crash()
        log = self._open()
        assert log.log_end_offset == leo, (stage, log, leo)
        leftovers = [p.name for p in log.directory.iterdir() if p.name.endswith((cleaner.CLEANED, cleaner.SWAP))]
        assert not leftovers, leftovers
        self._all_durable()

    @rule(dt=st.integers(0, 100))
    def close_and_reopen(self, dt) -> None:
        leo = self.model.leo
        self.log.close()
        self._tick(dt)
        log = self._open()
        rep = log.recovery_report
        assert rep.clean_shutdown and rep.truncated_bytes == 0 and rep.deleted_segments == 0 and rep.error is None
        assert log.log_end_offset == leo
        self._all_durable()

    @rule(kind=st.sampled_from(["none", "cut", "flip", "drop"]), dt=st.integers(0, 100), data=st.data())
    def crash(self, kind, dt, data) -> None:
        log, m = self.log, self.model
        seg = log.active_segment
        path, size, data_start, base = seg.path, seg.size, seg.data_start, seg.base_offset
        assert sorted(p.name for p in path.parent.glob("*" + DATA_SUFFIX))[-1] == path.name
        assert os.path.getsize(path) == size
        assert self.ends[-1] == (size, m.leo), (self.ends, size, m.leo)
        log._simulate_crash()
        self.log = None
        durable = self.durable
        if kind == "flip" and max(durable, data_start) >= size:
            kind = "none"
        cut = size
        if kind == "cut":
            cut = data.draw(st.integers(durable, size), label="cut at")
        elif kind == "drop":
            cut = durable
        if cut < size:
            os.truncate(path, cut)
        where = cut
        if kind == "flip":
            where = data.draw(st.integers(max(durable, data_start), size - 1), label="flip at")
            mask = data.draw(st.integers(1, 255), label="xor")
            with open(path, "r+b") as f:
                f.seek(where)
                byte = f.read(1)[0]
                f.seek(where)
                f.write(bytes([byte ^ mask]))
        # The batches that must survive: every one that ends at or before the damage.
        survivors = [(end, nxt) for end, nxt in self.ends if end <= where]
        expected_leo = survivors[-1][1] if survivors else base
        self._tick(dt)
        log = self._open()
        rep = log.recovery_report
        assert not rep.clean_shutdown
        if log.log_end_offset != expected_leo and expected_leo < m.lso:
            # What survived ends below the log start offset: the log may restart empty at the log start
            # offset (as Kafka does) instead of lowering the start offset to what survived.
            assert log.log_start_offset == log.log_end_offset == m.lso, (log, m.lso, expected_leo)
            m.truncate_end(expected_leo)
            m.reset(log.log_end_offset)
        else:
            assert log.log_end_offset == expected_leo, (kind, where, size, self.ends, log.log_end_offset)
            m.truncate_end(expected_leo)
        if kind == "none" or (kind in ("cut", "drop") and cut == size):
            assert rep.truncated_bytes == 0 and rep.dropped_batches == 0 and rep.error is None, rep
        elif survivors:  # the schema survived: recovery cut the file after the last good batch
            end = survivors[-1][0]
            assert rep.truncated_bytes == (size if kind == "flip" else cut) - end, (rep, kind, where, end)
            assert (rep.error is not None) == (rep.truncated_bytes > 0) == (rep.dropped_batches > 0), rep
        assert log.log_start_offset == m.lso, (log.log_start_offset, m.lso)
        event(f"crash: {kind}, {'truncated' if rep.truncated_bytes else 'intact'}")
        self._all_durable()

    # -- invariants --------------------------------------------------------------------------------------------
    @invariant()
    def log_matches_model(self) -> None:
        log, m = self.log, self.model
        if log is None:
            return
        assert (log.log_start_offset, log.log_end_offset) == (m.lso, m.leo), (log, m.lso, m.leo)
        assert log.log_start_offset <= log.log_end_offset
        assert log.recovery_point <= log.log_end_offset
        segs = log.segments
        for a, b in zip(segs, segs[1:], strict=False):
            assert a.base_offset < b.base_offset and a.next_offset == b.base_offset, segs
        for seg in segs:
            stamps = [m.all_ts[o] for o in range(seg.base_offset, seg.next_offset) if o in m.all_ts]
            if not self.compacted:
                assert seg.max_timestamp == max(stamps, default=-1), (seg, seg.max_timestamp, stamps)
            else:
                assert seg.max_timestamp <= max(stamps, default=-1), (seg, seg.max_timestamp, stamps)
            if seg is not segs[-1] and seg.size > self.config.segment_bytes:
                assert len(list(seg.headers())) == 1, f"{seg} exceeds segment.bytes={self.config.segment_bytes}"
        batches = log.read_batches(m.lso, BIG, verify=True)
        model_batches = {(b[0], b[1]): b[2] for b in m.batches}
        seen_ranges = set()
        previous_last = -1
        present: dict[int, Rec] = {}
        for sb in batches:
            h = sb.header
            assert h.base_offset > previous_last, (h, previous_last)
            previous_last = h.last_offset
            assert h.last_offset >= m.lso
            assert (h.base_offset, h.last_offset) in model_batches, (h, m.batches)
            seen_ranges.add((h.base_offset, h.last_offset))
            assert h.record_count == sb.data.num_rows
            offs = sb.data.column(OFFSET_COLUMN).to_pylist()
            assert offs == sorted(set(offs)) and all(h.base_offset <= o <= h.last_offset for o in offs), (h, offs)
            if not self.compacted:
                assert offs == list(range(h.base_offset, h.last_offset + 1)), (h, offs)
            for o, r in _rows([sb.data]):
                if o >= m.lso:
                    present[o] = r
            if sb.data.num_rows:
                first = max(h.base_offset, m.lso)
                assert log.epoch_cache.epoch_for_offset(first) == model_batches[(h.base_offset, h.last_offset)], (
                    h, log.epoch_cache.entries)
        if batches:
            assert batches[-1].header.last_offset + 1 == m.leo, (batches[-1].header, m.leo)
        for b in m.batches:  # a batch may vanish only if compaction could remove all of its records
            if (b[0], b[1]) not in seen_ranges:
                assert all(o in m.maybe_absent for o in range(max(b[0], m.lso), b[1] + 1)), (b, seen_ranges)
        for o, r in present.items():
            assert m.recs.get(o) == r, (o, r, m.recs.get(o))
            assert o not in m.gone, f"compacted-away offset {o} came back"
        missing = set(m.must_keep(m.lso, m.leo)) - set(present)
        assert not missing, f"log lost offsets {sorted(missing)}"
        m.gone |= set(m.recs) - set(present)

    def teardown(self) -> None:
        if self.log is not None and not self.log._closed:
            self.log._simulate_crash()
        shutil.rmtree(self.dir, ignore_errors=True)


# No explain phase: on a failure it re-runs the shrunk case hundreds of times (minutes) for line hints.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
LogMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None, phases=PHASES,
                                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestLogModel = LogMachine.TestCase


# -- regressions: minimal sequences the state machine found -------------------------------------------------
@pytest.fixture
def log_dir():
    directory = tempfile.mkdtemp(prefix="raystream-logmodel-", dir=TMP_ROOT)
    yield os.path.join(directory, "log")
    shutil.rmtree(directory, ignore_errors=True)


def _records(*values: bytes, key: bytes = b"k") -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{"key": key, "value": v} for v in values], schema=RECORD_SCHEMA)


def _values(log: Log) -> list[tuple[int, bytes]]:
    return [(r[OFFSET_COLUMN], r["value"]) for b in log.read(log.log_start_offset, BIG) for r in b.to_pylist()]


def test_truncate_inside_the_batch_holding_the_log_start(log_dir):
    log = Log(log_dir, now=0)
    log.append(_records(b"0", b"1", b"2"), now=1)  # one batch, offsets 0..2
    log.delete_records_before(1)
    log.truncate_to(2)  # whole batches go: the log end drops to 0, below the log start
    assert log.log_start_offset <= log.log_end_offset
    assert log.read(log.log_start_offset, BIG) == []
    log.close()


def test_compaction_meanwhile_truncated_and_regrown_segment_is_not_swapped_in(log_dir):
    """The cleaner works without the lock; a truncation into the last sealed segment followed by appends
    that grow it back to exactly its old size must still void the cleaner's (now stale) copy."""
    log = Log(log_dir, TopicConfig(cleanup_policy="compact"), now=0)
    log.append(_records(b"old0"), now=1)  # offset 0
    log.append(_records(b"old1"), now=2)  # offset 1
    log.roll()                             # [0, 2) sealed, [2, 2) active
    real_clean_group = cleaner._clean_group

    def clean_group_while_truncating(*args, **kwargs):
        cleaned = real_clean_group(*args, **kwargs)
        log.truncate_to(1)                     # as a follower would, concurrently
        log.append(_records(b"new1"), now=3)   # offset 1 again; the segment has its old size again
        return cleaned

    cleaner._clean_group = clean_group_while_truncating
    try:
        cleaner.compact(log, now=10)
    finally:
        cleaner._clean_group = real_clean_group
    assert _values(log)[-1] == (1, b"new1"), _values(log)
    log.close()


def test_read_with_max_offset_below_start_offset(log_dir):
    """A consumer may fetch above the high watermark (a new leader's lags): nothing is readable yet."""
    log = Log(log_dir, now=0)
    log.append(_records(b"0", b"1", b"2", b"3", b"4"), now=1)  # one batch, offsets 0..4
    batches = log.read(3, BIG, max_offset=1)
    for b in batches:
        b.validate(full=True)  # raises "Array length is negative"
    assert batches == []
    log.close()


def test_recovery_report_counts_every_dropped_batch(log_dir):
    """A corrupt batch in the unflushed tail loses it and every batch after it; the report says how many."""
    log = Log(log_dir, now=0)
    log.flush(now=0)
    ends = []
    for value in (b"v0", b"v1", b"v2"):
        log.append(_records(value), now=1)
        ends.append(log.active_segment.size)
    path = log.active_segment.path
    log._simulate_crash()
    with open(path, "r+b") as f:  # flip a byte in the body of the second batch; the third stays intact
        f.seek(ends[1] - 8)
        byte = f.read(1)[0]
        f.seek(ends[1] - 8)
        f.write(bytes([byte ^ 1]))
    log = Log(log_dir, now=2)
    assert log.log_end_offset == 1
    assert log.recovery_report.truncated_bytes == ends[2] - ends[0]
    assert log.recovery_report.dropped_batches == 2, log.recovery_report
    log.close()
