"""The local state stores of stream processing (raystream.streams.state), on real SQLite files: key-value and
window stores, changelog restore, the checkpoint file, crashes, and readers on other threads."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream.errors import ClosedError, InvalidTopicError
from raystream.streams.state import (
    CHUNK,
    PAGE,
    StateDB,
    changelog_topic,
    decode_window_key,
    encode_window_key,
)


@pytest.fixture
def db(tmp_path: Path):
    state = StateDB(tmp_path / "app" / "0_1" / "state.db")
    yield state
    state.close()


def k(i: int) -> bytes:
    return i.to_bytes(4, "big")


# -- key-value store --------------------------------------------------------------------------------------
def test_get_put_delete_round_trip(db: StateDB) -> None:
    kv = db.key_value_store("counts")
    assert kv.get(b"a") is None
    kv.put(b"a", b"1")
    kv.put(b"", b"empty key")
    kv.put(b"a", b"2")
    assert kv.get(b"a") == b"2" and kv.get(b"") == b"empty key" and kv.count() == 2
    kv.delete(b"a")
    assert kv.get(b"a") is None and kv.count() == 1
    assert db.key_value_store("counts") is kv
    assert db.path.parent.is_dir() and db.path.exists()


def test_put_many_applies_in_order_last_write_wins_and_none_deletes(db: StateDB) -> None:
    kv = db.key_value_store("s")
    kv.put_many([(b"x", b"old"), (b"gone", b"1")])
    kv.put_many([(b"x", b"1"), (b"gone", None), (b"x", b"2"), (b"new", None), (b"new", b"n"), (b"y", b"3"),
                 (b"y", None)])
    assert dict(kv.items()) == {b"x": b"2", b"new": b"n"}


def test_get_many_chunks_over_the_variable_limit(db: StateDB) -> None:
    kv = db.key_value_store("s")
    n = 3 * CHUNK + 7
    kv.put_many((k(i), b"v%d" % i) for i in range(0, n, 2))
    asked = [k(i) for i in range(n + 100)] + [k(0)]  # absent keys and a duplicate
    found = kv.get_many(asked)
    assert found == {k(i): b"v%d" % i for i in range(0, n, 2)}
    assert kv.get_many([]) == {}


def test_items_in_byte_order_over_a_half_open_range_and_across_pages(db: StateDB) -> None:
    kv = db.key_value_store("s")
    keys = [k(i) for i in range(2 * PAGE + 5)] + [b"", b"\x00", b"\x00\x00\x00\x01\x00", b"\xff"]
    kv.put_many((key, key) for key in keys)
    assert [key for key, _ in kv.items()] == sorted(keys)
    lo, hi = k(10), k(PAGE + 20)
    assert [key for key, _ in kv.items(lo, hi)] == sorted(x for x in keys if lo <= x < hi)
    assert [key for key, _ in kv.items(end=b"\x00\x00")] == [b"", b"\x00"]
    assert [key for key, _ in kv.items(start=b"\x01")] == [b"\xff"]
    assert list(kv.items(k(5), k(5))) == []


def test_put_columns_takes_arrow_arrays_with_nulls_as_tombstones(db: StateDB) -> None:
    kv = db.key_value_store("s")
    kv.put_many([(b"a", b"1"), (b"b", b"2")])
    kv.put_columns(pa.array([b"a", b"c"], pa.binary()), pa.array([None, b"3"], pa.binary()))
    assert dict(kv.items()) == {b"b": b"2", b"c": b"3"}


def test_restore_applies_a_changelog_chunk_in_order(db: StateDB) -> None:
    kv = db.key_value_store("s")
    kv.put(b"stale", b"x")
    n = 100_000
    kv.restore([k(i % 50_000) for i in range(n)] + [b"stale", k(7)],
               [b"%d" % i for i in range(n)] + [None, None])
    assert kv.count() == 49_999
    assert kv.get(k(3)) == b"50003" and kv.get(k(7)) is None and kv.get(b"stale") is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.binary(max_size=3), st.one_of(st.none(), st.binary(max_size=4))),
                         max_size=12), max_size=8),
       st.binary(max_size=2), st.binary(max_size=2))
def test_key_value_store_behaves_like_a_dict(batches, lo, hi) -> None:
    model: dict[bytes, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp, StateDB(Path(tmp) / "state.db") as db:
        kv = db.key_value_store("model")
        for batch in batches:
            kv.put_many(batch)
            for key, value in batch:
                if value is None:
                    model.pop(key, None)
                else:
                    model[key] = value
            assert kv.count() == len(model)
        assert list(kv.items()) == sorted(model.items())
        assert list(kv.items(lo, hi)) == sorted((a, b) for a, b in model.items() if lo <= a < hi)
        probes = [key for batch in batches for key, _ in batch] + [b"\xfe\xfe\xfe\xfe"]
        assert kv.get_many(probes) == {p: model[p] for p in probes if p in model}
        assert all(kv.get(p) == model.get(p) for p in probes)


# -- window store -----------------------------------------------------------------------------------------
def test_window_fetch_bounds_are_inclusive_and_ordered(db: StateDB) -> None:
    ws = db.window_store("w", retention_ms=1000)
    ws.put_many([(b"a", start, b"a%d" % start) for start in (300, 100, 200, -100, 400)])
    ws.put_many([(b"b", 200, b"b200"), (b"b", 100, b"b100"), (b"a", 400, None)])
    assert ws.fetch(b"a", 100, 300) == [(100, b"a100"), (200, b"a200"), (300, b"a300")]
    assert ws.fetch(b"a", -1000, 99) == [(-100, b"a-100")]
    assert ws.fetch(b"a", 400, 400) == [] and ws.fetch(b"c", 0, 1000) == []
    assert ws.fetch_all(100, 200) == [(b"a", 100, b"a100"), (b"b", 100, b"b100"),
                                      (b"a", 200, b"a200"), (b"b", 200, b"b200")]
    assert ws.get_many([(b"a", 100), (b"b", 200), (b"a", 400), (b"z", 1)]) == {
        (b"a", 100): b"a100", (b"b", 200): b"b200"}
    assert ws.count() == 6


def test_window_get_many_chunks(db: StateDB) -> None:
    ws = db.window_store("w", retention_ms=10)
    ws.put_columns([k(i) for i in range(2 * CHUNK)], list(range(2 * CHUNK)), [b"v"] * (2 * CHUNK))
    pairs = [(k(i), i) for i in range(2 * CHUNK)] + [(k(i), i + 1) for i in range(CHUNK)]
    assert ws.get_many(pairs) == {(k(i), i): b"v" for i in range(2 * CHUNK)}


def test_expire_deletes_windows_older_than_retention(db: StateDB) -> None:
    ws = db.window_store("w", retention_ms=100)
    ws.put_many([(b"a", s, b"x") for s in (0, 50, 99, 100, 150)] + [(b"b", 99, b"y")])
    assert ws.expire(199) == 2  # cutoff 99: a window starting exactly at it is kept
    assert ws.fetch_all(-10**12, 10**12) == [(b"a", 99, b"x"), (b"b", 99, b"y"), (b"a", 100, b"x"),
                                             (b"a", 150, b"x")]
    assert ws.expire(199) == 0
    assert ws.expire(200) == 2
    assert ws.fetch(b"a", 0, 1000) == [(100, b"x"), (150, b"x")] and ws.count() == 2


@pytest.mark.parametrize("start", [0, 1, -1, 2**63 - 1, -(2**63), 1_700_000_000_000])
@pytest.mark.parametrize("key", [b"", b"user-1", bytes(range(256))])
def test_window_changelog_key_round_trips(key: bytes, start: int) -> None:
    encoded = encode_window_key(key, start)
    assert encoded[:8] == start.to_bytes(8, "big", signed=True) and encoded[8:] == key
    assert decode_window_key(encoded) == (key, start)


def test_window_restore_decodes_changelog_keys_last_write_wins(db: StateDB) -> None:
    ws = db.window_store("w", retention_ms=1000)
    ws.put_many([(b"old", 5, b"x")])
    keys = [encode_window_key(b"a", 0), encode_window_key(b"a", 10), encode_window_key(b"a", 0),
            encode_window_key(b"old", 5), encode_window_key(b"b", -10)]
    ws.restore(keys, [b"first", b"ten", b"second", None, b"neg"])
    assert ws.fetch_all(-100, 100) == [(b"b", -10, b"neg"), (b"a", 0, b"second"), (b"a", 10, b"ten")]
    with pytest.raises(ValueError, match="at least 8 bytes"):
        ws.restore([b"short"], [b"v"])


# -- names and bad arguments ------------------------------------------------------------------------------
def test_changelog_topic_is_kafka_streams_name_and_validated() -> None:
    assert changelog_topic("wordcount", "counts-store") == "wordcount-counts-store-changelog"
    with pytest.raises(InvalidTopicError, match="illegal characters"):
        changelog_topic("my app", "counts")
    with pytest.raises(InvalidTopicError, match="limit is 249"):
        changelog_topic("a" * 240, "counts")
    with pytest.raises(ValueError, match="store name"):
        changelog_topic("app", "bad/name")


def test_bad_arguments_raise_clear_errors(db: StateDB) -> None:
    kv = db.key_value_store("s")
    with pytest.raises(TypeError, match="keys must be bytes.*str"):
        kv.put("a", b"1")
    with pytest.raises(TypeError, match="values must be bytes.*str"):
        kv.put_many([(b"a", "1")])
    with pytest.raises(TypeError, match="keys must be bytes"):
        kv.get_many([b"a", 1])
    with pytest.raises(TypeError, match="range bounds"):
        list(kv.items("a"))
    with pytest.raises(ValueError):
        kv.restore([b"a", b"b"], [b"1"])
    assert kv.count() == 0  # nothing half-applied
    for name in ("", "a b", "x/y", 'q"uote', None):
        with pytest.raises(ValueError, match="store name"):
            db.key_value_store(name)
    with pytest.raises(ValueError, match="retention_ms must be >= 0"):
        db.window_store("w", retention_ms=-1)
    with pytest.raises(TypeError, match="retention_ms must be an int"):
        db.window_store("w", retention_ms=1.5)
    with pytest.raises(ValueError, match="is a key-value store"):
        db.window_store("s", retention_ms=10)
    ws = db.window_store("w", retention_ms=10)
    with pytest.raises(ValueError, match="is a window store"):
        db.key_value_store("w")
    with pytest.raises(TypeError, match="window start must be an int"):
        ws.put_many([(b"a", 1.0, b"x")])


def test_a_closed_db_raises_closed_error(db: StateDB) -> None:
    kv, ws = db.key_value_store("s"), db.window_store("w", 10)
    db.close()
    db.close()  # idempotent
    calls = [lambda: kv.get(b"a"), lambda: kv.put(b"a", b"1"), lambda: list(kv.items()), kv.count,
             lambda: ws.fetch(b"a", 0, 1), lambda: ws.expire(5), db.begin, db.wipe, db.size_bytes,
             db.read_checkpoint, lambda: db.write_checkpoint({}), lambda: db.key_value_store("t")]
    for call in calls:
        with pytest.raises(ClosedError, match="is closed"):
            call()


# -- transactions, wipe, persistence ----------------------------------------------------------------------
def test_transaction_commits_or_rolls_back_as_a_whole(db: StateDB) -> None:
    kv, ws = db.key_value_store("s"), db.window_store("w", 100)
    with db.transaction():
        kv.put(b"a", b"1")
        ws.put_many([(b"a", 0, b"w")])
        assert kv.get(b"a") == b"1"  # the writer reads its own uncommitted writes
    with pytest.raises(RuntimeError, match="batch failed"), db.transaction():
        kv.put(b"a", b"2")
        kv.put(b"b", b"2")
        ws.expire(10**6)
        raise RuntimeError("batch failed")
    assert dict(kv.items()) == {b"a": b"1"} and ws.count() == 1
    db.begin()
    with pytest.raises(RuntimeError, match="already open"):
        db.begin()
    db.rollback()
    with pytest.raises(RuntimeError, match="no transaction"):
        db.commit()


def test_wipe_empties_every_store_in_the_file_even_unopened_ones(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateDB(path) as db:
        db.key_value_store("a").put(b"k", b"v")
        db.window_store("b", 10).put_many([(b"k", 1, b"v")])
    with StateDB(path) as db:
        db.wipe()
        assert db.key_value_store("a").count() == 0 and db.window_store("b", 10).count() == 0


def test_clean_close_keeps_data_and_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "t" / "state.db"
    with StateDB(path) as db:
        assert db.read_checkpoint() is None
        db.key_value_store("s").put_many((k(i), b"x" * 100) for i in range(1000))
        assert db.size_bytes() > 100_000
        db.write_checkpoint({"app-s-changelog": 1000, "app-w-changelog": 0})
    assert not list(path.parent.glob("*.tmp"))
    with StateDB(path) as db:
        assert db.read_checkpoint() == {"app-s-changelog": 1000, "app-w-changelog": 0}
        db.delete_checkpoint()
        assert db.read_checkpoint() is None and not db.checkpoint_path.exists()
        db.delete_checkpoint()  # no file: fine
        assert db.key_value_store("s").count() == 1000


def test_checkpoint_arguments_and_corrupt_file(db: StateDB) -> None:
    with pytest.raises(InvalidTopicError):
        db.write_checkpoint({"bad topic": 1})
    with pytest.raises(ValueError, match=">= 0"):
        db.write_checkpoint({"t": -1})
    with pytest.raises(TypeError):
        db.write_checkpoint({"t": "1"})
    with db.transaction(), pytest.raises(RuntimeError, match="uncommitted"):
        db.write_checkpoint({"t": 1})
    assert db.read_checkpoint() is None
    db.checkpoint_path.write_bytes(b'{"t": 1')  # torn
    assert db.read_checkpoint() is None
    db.checkpoint_path.write_bytes(b'{"t": -4}')
    assert db.read_checkpoint() is None


CRASH = """
import os, sys
from raystream.streams.state import StateDB
db = StateDB(sys.argv[1])
kv = db.key_value_store("s")
with db.transaction():
    kv.put_many([(b"a", b"committed"), (b"b", b"committed")])
db.write_checkpoint({"app-s-changelog": 2})
db.delete_checkpoint()  # the task opened its store: from here on a crash leaves no checkpoint
db.begin()
kv.put_many([(b"a", b"uncommitted"), (b"c", b"uncommitted")])
os._exit(0)  # the process dies: no commit, no close
"""


def test_a_crash_keeps_committed_transactions_and_leaves_no_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "app" / "0_0" / "state.db"
    subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), str(path)], check=True, timeout=60)
    with StateDB(path) as db:
        assert db.read_checkpoint() is None
        assert dict(db.key_value_store("s").items()) == {b"a": b"committed", b"b": b"committed"}


def test_a_second_db_on_an_unclosed_file_sees_committed_data(tmp_path: Path) -> None:
    first = StateDB(tmp_path / "state.db")
    with first.transaction():
        first.key_value_store("s").put(b"a", b"1")
    second = StateDB(tmp_path / "state.db")
    assert second.key_value_store("s").get(b"a") == b"1" and second.read_checkpoint() is None
    second.close()
    first.close()


# -- readers on other threads -----------------------------------------------------------------------------
def test_a_reader_thread_sees_only_committed_state_and_does_not_wait_for_the_writer(db: StateDB) -> None:
    kv = db.key_value_store("s")
    kv.put_many([(b"x", b"0"), (b"y", b"0")])
    opened, read = threading.Event(), threading.Event()
    seen: list[object] = []

    def reader() -> None:
        try:
            assert opened.wait(30)
            seen.append(kv.get_many([b"x", b"y"]))  # while the writer's transaction is open
            read.set()
            last = 0
            while last < 200:
                x, y = kv.get(b"x"), kv.get(b"y")
                both = kv.get_many([b"x", b"y"])
                assert both[b"x"] == both[b"y"], both  # a batch is seen whole or not at all
                assert int(x) >= last and int(y) >= int(x)  # y is read later; values only grow
                last = int(both[b"x"])
            seen.append(last)
        except BaseException as exc:  # report to the main thread
            seen.append(exc)
            read.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    db.begin()
    kv.put_many([(b"x", b"1"), (b"y", b"1")])
    opened.set()
    assert read.wait(30)
    db.commit()
    for i in range(2, 201):
        with db.transaction():
            kv.put(b"x", b"%d" % i)
            kv.put(b"y", b"%d" % i)
    thread.join(30)
    assert seen == [{b"x": b"0", b"y": b"0"}, 200]
