"""CompactedMap: a durable dict on a compacted log (the committed-offsets store)."""

from __future__ import annotations

from raystream.clock import now_ms
from raystream.storage.compacted_map import CompactedMap


def test_updates_survive_reopen_and_deletes_are_tombstones(tmp_path):
    m = CompactedMap(tmp_path / "m", clock=now_ms)
    m.update({("g", "t", 0): [5, "meta"], ("g", "t", 1): [7, ""]})
    m.update({("g", "t", 0): [9, "later"]}, deletes=[("g", "t", 1)])
    m.close()
    again = CompactedMap(tmp_path / "m", clock=now_ms)
    assert dict(again.items()) == {("g", "t", 0): [9, "later"]}
    assert ("g", "t", 1) not in again and len(again) == 1
    again.close()


def test_compaction_keeps_only_the_latest_value_per_key(tmp_path):
    m = CompactedMap(tmp_path / "m", segment_bytes=4096, delete_retention_ms=0, clock=now_ms)
    for i in range(400):
        m.update({("g", "t", i % 4): [i, ""]})
    m.update(deletes=[("g", "t", 3)])
    m.log.roll()
    m.compact(now_ms=10**13)
    kept = sum(b.num_rows for b in m.log.read(0, 1 << 30))
    assert kept <= 4  # the latest value of keys 0-2 (the delete's tombstone may be gone or kept)
    m.close()
    again = CompactedMap(tmp_path / "m", clock=now_ms)
    assert dict(again.items()) == {("g", "t", 0): [396, ""], ("g", "t", 1): [397, ""], ("g", "t", 2): [398, ""]}
    again.close()


def test_an_empty_update_writes_nothing(tmp_path):
    m = CompactedMap(tmp_path / "m", clock=now_ms)
    m.update({})
    assert m.log.log_end_offset == 0
    m.close()


def test_the_map_compacts_itself_as_it_grows(tmp_path):
    from raystream.storage.compacted_map import CompactedMap

    m = CompactedMap(tmp_path / "m", segment_bytes=32 * 1024, clock=now_ms)
    for i in range(600):  # one key rewritten over and over: many sealed segments' worth
        m.update({"k": i, f"other-{i % 3}": i})
    written = 600 * m.log.segments[-1].size // max(m.log.segments[-1].batch_count, 1)
    assert m.log.size_bytes < 4 * 32 * 1024 < written  # compacted as it went: ~ live keys, not history
    m.close()
    again = CompactedMap(tmp_path / "m", segment_bytes=32 * 1024, clock=now_ms)
    assert again.get("k") == 599 and again.get("other-1") == 598
    again.close()
