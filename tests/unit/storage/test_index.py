"""SparseIndex: floor lookups, truncation, persistence and rejection of malformed files."""

from __future__ import annotations

import random
import struct

import pytest

from raystream.storage.index import SparseIndex, offset_index, time_index


@pytest.fixture
def index(tmp_path) -> SparseIndex:
    idx = offset_index(tmp_path / "00000000000000000000.index")
    for key, value in [(0, 100), (10, 250), (20, 400), (35, 900)]:
        idx.append(key, value)
    return idx


@pytest.mark.parametrize("key, expected", [(-1, None), (0, (0, 100)), (5, (0, 100)), (10, (10, 250)),
                                           (19, (10, 250)), (20, (20, 400)), (34, (20, 400)),
                                           (35, (35, 900)), (10**9, (35, 900))])
def test_floor(index, key, expected):
    assert index.floor(key) == expected


def test_floor_of_empty_index_is_none(tmp_path):
    assert offset_index(tmp_path / "x.index").floor(123) is None


def test_floor_with_repeated_keys_returns_the_last(tmp_path):
    idx = time_index(tmp_path / "x.timeindex")
    idx.append(5, 0)
    idx.append(5, 3)
    idx.append(9, 7)
    assert idx.floor(5) == (5, 3)
    assert idx.floor(8) == (5, 3)


@pytest.mark.parametrize("key, expected", [(-5, 0), (0, 0), (1, 1), (10, 1), (11, 2), (35, 3), (36, 4)])
def test_ceiling_index(index, key, expected):
    assert index.ceiling_index(key) == expected


@pytest.mark.parametrize("value, keys", [(0, []), (100, []), (101, [0]), (400, [0, 10]), (401, [0, 10, 20]),
                                         (900, [0, 10, 20]), (10**6, [0, 10, 20, 35])])
def test_truncate_where_value_at_least(index, value, keys):
    index.truncate_where_value_at_least(value)
    assert index.keys == keys
    assert len(index.values) == len(keys)


@pytest.mark.parametrize("key, keys", [(0, []), (1, [0]), (20, [0, 10]), (36, [0, 10, 20, 35])])
def test_truncate_where_key_at_least(index, key, keys):
    index.truncate_where_key_at_least(key)
    assert index.keys == keys
    assert index.floor(10**9) == ((keys[-1], index.values[-1]) if keys else None)


def test_flush_and_load_roundtrip(index, tmp_path):
    index.flush()
    assert index.path.stat().st_size == 4 * 12
    assert not list(tmp_path.glob("*.tmp"))
    loaded = offset_index(index.path)
    assert loaded.load()
    assert (loaded.keys, loaded.values) == ([0, 10, 20, 35], [100, 250, 400, 900])
    assert loaded.floor(25) == (20, 400)


def test_flush_writes_truncation_and_clear(index):
    index.flush()
    index.truncate_where_key_at_least(20)
    index.flush()
    loaded = offset_index(index.path)
    assert loaded.load() and loaded.keys == [0, 10]
    index.clear()
    index.flush()
    loaded = offset_index(index.path)
    assert loaded.load() and len(loaded) == 0
    assert index.path.stat().st_size == 0


def test_flush_creates_a_missing_file_even_when_clean(tmp_path):
    idx = offset_index(tmp_path / "a.index")
    idx.flush()
    assert idx.path.exists() and idx.path.stat().st_size == 0
    idx.append(0, 8)
    idx.flush()
    idx.path.unlink()
    idx.flush()  # not dirty, but the file is gone: written again
    assert idx.path.stat().st_size == 12


def test_time_index_format_holds_negative_and_large_timestamps(tmp_path):
    idx = time_index(tmp_path / "t.timeindex")
    idx.append(-5, 0)
    idx.append(2**62, 2**32 - 1)
    idx.flush()
    loaded = time_index(idx.path)
    assert loaded.load()
    assert (loaded.keys, loaded.values) == ([-5, 2**62], [0, 2**32 - 1])


def test_load_of_missing_file_is_false_and_empty(tmp_path):
    idx = offset_index(tmp_path / "missing.index")
    assert idx.load() is False
    assert len(idx) == 0


@pytest.mark.parametrize("content", [
    b"\x00" * 13,                                           # not a whole number of entries
    b"\x01",                                                # a torn single entry
    struct.pack("<IQ", 5, 100) + struct.pack("<IQ", 4, 200),  # keys decrease
    struct.pack("<IQ", 4, 200) + struct.pack("<IQ", 5, 100),  # values decrease
    random.Random(7).randbytes(12 * 40),                    # random garbage of a plausible length
], ids=["odd-length", "torn", "keys-decrease", "values-decrease", "random"])
def test_load_rejects_malformed_files(tmp_path, content):
    idx = offset_index(tmp_path / "bad.index")
    idx.path.write_bytes(content)
    assert idx.load() is False
    assert len(idx) == 0 and idx.floor(10**9) is None
