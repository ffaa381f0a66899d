"""Log compaction: latest record per key, preserved offsets, tombstones, crash safety, concurrency."""

from __future__ import annotations

import shutil
import threading

import pyarrow as pa
import pytest
from storage_helpers import BIG, offsets_of, records, rows

from raystream.errors import ClosedError, InvalidRecordError
from raystream.storage import cleaner
from raystream.storage.cleaner import CleanerStats, compact

COMPACT = {"cleanup.policy": "compact", "delete.retention.ms": 500}


def _put(log, pairs, ts=1000):
    """Append one batch of (key, value) pairs with record timestamp ``ts``."""
    keys = [k.encode() for k, _ in pairs]
    values = [None if v is None else v.encode() for _, v in pairs]
    return log.append(records(keys=keys, values=values, timestamps=[ts] * len(pairs)), now=ts)


def _kv(log, start=None):
    return [(o, k.decode(), None if v is None else v.decode()) for o, _, k, v in rows(log, start)]


@pytest.fixture
def compacted_log(make_log):
    log = make_log(COMPACT)
    _put(log, [("a", "a1"), ("b", "b1")])       # 0, 1
    _put(log, [("a", "a2")])                    # 2
    log.roll()
    _put(log, [("c", "c1"), ("b", "b2")])       # 3, 4
    _put(log, [("a", "a3")])                    # 5
    log.roll()
    _put(log, [("b", "b3"), ("a", "a4")])       # 6, 7 (active)
    return log


def test_compaction_keeps_the_latest_record_per_key(compacted_log, log_dir, make_log):
    log = compacted_log
    active = log.active_segment
    active_bytes = active.path.read_bytes()
    before = _kv(log)
    stats = compact(log, now=1000)
    assert stats.segments_before == 2 and stats.segments_after == 1
    assert (stats.records_before, stats.records_after) == (6, 3)
    assert stats.bytes_after < stats.bytes_before
    assert _kv(log) == [(3, "c", "c1"), (4, "b", "b2"), (5, "a", "a3"), (6, "b", "b3"), (7, "a", "a4")]
    assert log.active_segment is active and active.path.read_bytes() == active_bytes
    assert [s.base_offset for s in log.segments] == [0, 6]
    assert log.log_end_offset == 8 and log.log_start_offset == 0
    # Reads from any offset, including removed ones, go on working.
    for start in range(0, 8):
        assert _kv(log, start) == [r for r in _kv(log) if r[0] >= start]
    assert offsets_of(log.read(1, BIG, max_offset=5)) == [3, 4]
    # Emptied batches are dropped; the others keep their headers (offset ranges).
    assert [(b.base_offset, b.last_offset, b.data.num_rows) for b in log.read_batches(0, BIG)] == [
        (3, 4, 2), (5, 5, 1), (6, 7, 2)]
    assert before[:3] == [(0, "a", "a1"), (1, "b", "b1"), (2, "a", "a2")]
    assert log.append(records(keys=[b"z"], values=[b"z"]), now=1).base_offset == 8
    log.close()
    again = make_log(COMPACT, path=log_dir)
    assert _kv(again)[:5] == [(3, "c", "c1"), (4, "b", "b2"), (5, "a", "a3"), (6, "b", "b3"), (7, "a", "a4")]
    assert again.log_end_offset == 9


def test_compaction_result_survives_a_crash(compacted_log, log_dir, make_log):
    compact(compacted_log, now=1000)
    expected = _kv(compacted_log)
    compacted_log._simulate_crash()
    again = make_log(COMPACT, path=log_dir)
    assert _kv(again) == expected
    assert again.recovery_report.truncated_bytes == 0


def test_compaction_is_idempotent(compacted_log):
    compact(compacted_log, now=1000)
    once = _kv(compacted_log)
    stats = compact(compacted_log, now=1000)
    assert _kv(compacted_log) == once
    assert stats.records_before == stats.records_after == 3


def test_tombstones_are_kept_until_delete_retention_ms(make_log):
    log = make_log(COMPACT)
    _put(log, [("a", "a1"), ("b", "b1"), ("c", "c1")], ts=1000)
    _put(log, [("a", None)], ts=1000)            # tombstone for a at 1000
    _put(log, [("c", None)], ts=1000)
    _put(log, [("c", "c2")], ts=1200)            # c came back: its tombstone is superseded
    log.roll()
    _put(log, [("b", None)], ts=1300)            # active: never touched
    compact(log, now=1400)                        # 1000 > 1400 - 500: the tombstone is young
    assert _kv(log) == [(1, "b", "b1"), (3, "a", None), (5, "c", "c2"), (6, "b", None)]
    compact(log, now=1500)                        # 1000 == horizon: still kept (strictly older goes)
    assert (3, "a", None) in _kv(log)
    compact(log, now=1501)
    assert _kv(log) == [(1, "b", "b1"), (5, "c", "c2"), (6, "b", None)]
    assert log.log_end_offset == 7


def test_the_active_segment_is_never_compacted(make_log):
    log = make_log(COMPACT)
    for i in range(5):
        _put(log, [("k", f"v{i}"), ("k", None)], ts=0)
    assert compact(log, now=10**9) == CleanerStats()
    assert len(_kv(log)) == 10


def test_compact_does_nothing_on_a_delete_topic(make_log):
    log = make_log()
    _put(log, [("a", "1"), ("a", "2")])
    log.roll()
    _put(log, [("a", "3")])
    assert compact(log, now=10**9) == CleanerStats()
    assert len(_kv(log)) == 3


def test_compact_after_close_is_a_closed_error(compacted_log):
    compacted_log.close()
    with pytest.raises(ClosedError):
        compact(compacted_log, now=1000)


def test_null_keys_are_rejected_on_a_compacted_topic(compacted_log):
    before = _kv(compacted_log)
    with pytest.raises(InvalidRecordError, match="key"):
        compacted_log.append(records(keys=[b"x", None], values=[b"1", b"2"]), now=1)
    assert _kv(compacted_log) == before


def test_compaction_of_an_arrow_native_log_by_a_key_column(make_log):
    schema = pa.schema([("id", pa.int64()), ("price", pa.float64())])
    log = make_log({"cleanup.policy": "compact"}, schema=schema, key_column="id")
    log.append(pa.RecordBatch.from_pydict({"id": [1, 2, 1], "price": [1.0, 2.0, 3.0]}, schema=schema), now=1)
    log.append(pa.RecordBatch.from_pydict({"id": [2, 3], "price": [None, 5.0]}, schema=schema), now=1)
    log.roll()
    log.append(pa.RecordBatch.from_pydict({"id": [1], "price": [9.0]}, schema=schema), now=1)
    compact(log, now=10**9, value_column="price")  # a null price is a tombstone
    table = pa.Table.from_batches(log.read(0, BIG))
    assert table.column("_offset").to_pylist() == [2, 4, 5]
    assert table.column("price").to_pylist() == [3.0, 5.0, 9.0]


# -- crash safety -------------------------------------------------------------------------------------------------
@pytest.fixture
def closed_log_and_compacted_copy(compacted_log, log_dir, tmp_path, make_log):
    """(original rows, compacted rows, compacted data file) — the original log closed, a copy compacted."""
    original = _kv(compacted_log)
    compacted_log.close()
    copy_dir = tmp_path / "copy"
    shutil.copytree(log_dir, copy_dir)
    copy = make_log(COMPACT, path=copy_dir)
    compact(copy, now=1000)
    compacted = _kv(copy)
    copy.close()
    assert compacted != original
    return original, compacted, copy_dir / "00000000000000000000.arrows"


def test_interrupted_before_the_swap_keeps_the_old_segments(closed_log_and_compacted_copy, log_dir, make_log):
    original, compacted, cleaned_data = closed_log_and_compacted_copy
    shutil.copyfile(cleaned_data, log_dir / "00000000000000000000.arrows.cleaned")
    log = make_log(COMPACT, path=log_dir)
    assert _kv(log) == original
    assert not (log_dir / "00000000000000000000.arrows.cleaned").exists()
    assert [s.base_offset for s in log.segments] == [0, 3, 6]


def test_a_torn_cleaned_file_is_removed_too(closed_log_and_compacted_copy, log_dir, make_log):
    original, compacted, cleaned_data = closed_log_and_compacted_copy
    (log_dir / "00000000000000000000.arrows.cleaned").write_bytes(cleaned_data.read_bytes()[:100])
    assert _kv(make_log(COMPACT, path=log_dir)) == original


@pytest.mark.parametrize("clean", [True, False], ids=["after-clean-close", "after-crash"])
@pytest.mark.parametrize("deleted", [[], [0], [0, 3]], ids=["none-deleted", "first-deleted", "all-deleted"])
def test_interrupted_after_the_swap_is_completed(closed_log_and_compacted_copy, log_dir, make_log,
                                                 deleted, clean):
    original, compacted, cleaned_data = closed_log_and_compacted_copy
    shutil.copyfile(cleaned_data, log_dir / "00000000000000000000.arrows.swap")
    for base in deleted:
        for suffix in (".arrows", ".index", ".timeindex"):
            (log_dir / f"{base:020d}{suffix}").unlink(missing_ok=True)
    if not clean:
        (log_dir / ".clean_shutdown").unlink()
    log = make_log(COMPACT, path=log_dir)
    assert _kv(log) == compacted
    assert [s.base_offset for s in log.segments] == [0, 6]
    assert sorted(p.name for p in log_dir.glob("*.arrows*")) == [
        "00000000000000000000.arrows", "00000000000000000006.arrows"]
    assert log.log_end_offset == 8
    assert log.append(records(1), now=1).base_offset == 8


# -- concurrency --------------------------------------------------------------------------------------------------
def test_reads_and_appends_go_on_while_compaction_runs(make_log, monkeypatch):
    log = make_log(COMPACT)
    written: dict[int, tuple[str, str]] = {}
    keys = [f"key{i}" for i in range(7)]

    def put_many(n, label):
        for i in range(n):
            pairs = [(keys[(i * 3 + j) % len(keys)], f"{label}-{i}-{j}") for j in range(3)]
            info = _put(log, pairs)
            for offset, pair in zip(range(info.base_offset, info.last_offset + 1), pairs, strict=True):
                written[offset] = pair

    for segment in range(5):
        put_many(15, f"s{segment}")
        log.roll()
    put_many(3, "active")

    def check(snapshot):
        offsets = [o for o, _, _ in snapshot]
        assert offsets == sorted(set(offsets))
        for offset, key, value in snapshot:
            assert written[offset] == (key, value)
        latest = {}
        for offset, (key, _) in written.items():
            latest[key] = max(latest.get(key, -1), offset)
        assert {k: max(o for o, kk, _ in snapshot if kk == k) for k in latest} == latest

    started, proceed = threading.Event(), threading.Event()
    real_filter = cleaner._filter

    def slow_filter(*args, **kwargs):
        started.set()
        assert proceed.wait(10), "the main thread never let compaction proceed"
        return real_filter(*args, **kwargs)

    monkeypatch.setattr(cleaner, "_filter", slow_filter)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("stats", compact(log, now=1000)))
    thread.start()
    try:
        assert started.wait(10)
        check(_kv(log))            # reads while the cleaner is mid-way
        put_many(5, "during")      # appends too
        log.roll()
        put_many(2, "later")
        check(_kv(log))
    finally:
        proceed.set()
    while thread.is_alive():
        check(_kv(log))
        thread.join(0.001)
    thread.join()
    assert result["stats"].segments_before == 5
    final = _kv(log)
    check(final)
    assert len(final) < len(written)
    assert log.log_end_offset == max(written) + 1


def test_compaction_racing_a_truncation_does_not_resurrect_records(make_log, monkeypatch):
    """A follower truncation while the cleaner rewrites a sealed segment must win: the cleaner may not
    swap in a copy of records the truncation dropped."""
    log = make_log(COMPACT)
    for i in range(10):
        _put(log, [(f"k{i % 3}", f"v{i}")])
    log.roll()
    _put(log, [("k0", "new")])
    real_clean = cleaner._clean_group

    def clean_then_truncate(*args, **kwargs):
        cleaned = real_clean(*args, **kwargs)
        log.truncate_to(5)  # what another thread (the replica fetcher) does meanwhile
        return cleaned

    monkeypatch.setattr(cleaner, "_clean_group", clean_then_truncate)
    compact(log, now=1000)
    assert log.log_end_offset == 5
    assert all(o < 5 for o, _, _ in _kv(log))
    assert log.append(records(keys=[b"k9"], values=[b"x"]), now=1).base_offset == 5


def test_an_emptied_last_batch_keeps_the_segment_end_offset(make_log, log_dir):
    log = make_log(COMPACT)
    _put(log, [("a", "1")], ts=0)
    _put(log, [("a", None)], ts=0)
    log.roll()
    _put(log, [("b", "2")], ts=0)
    compact(log, now=10**6)
    assert [(b.base_offset, b.last_offset, b.data.num_rows) for b in log.read_batches(0, BIG)] == [
        (1, 1, 0), (2, 2, 1)]
    assert [(s.base_offset, s.next_offset) for s in log.segments] == [(0, 2), (2, 3)]
    assert _kv(log) == [(2, "b", "2")]
    log._simulate_crash()
    again = make_log(COMPACT, path=log_dir)
    assert [(s.base_offset, s.next_offset) for s in again.segments] == [(0, 2), (2, 3)]
    assert _kv(again) == [(2, "b", "2")]
