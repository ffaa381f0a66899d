"""The controller's metadata log (raystream.storage.metadata_log): records back in order, a torn tail cut."""

from __future__ import annotations

import pytest

from raystream.storage.metadata_log import MetadataLog


def replayed(root) -> list[dict]:
    records: list[dict] = []
    log = MetadataLog(root)
    log.replay(records.append)
    log.close()
    return records


def test_records_come_back_in_order_and_a_torn_tail_is_cut(tmp_path):
    log = MetadataLog(tmp_path)
    log.replay(lambda record: None)
    log.append({"t": "delete", "name": "a"})
    log.append({"t": "producer_ids", "next": 1000})
    log.close()
    good_size = log.path.stat().st_size
    with open(log.path, "ab") as f:
        f.write(b"\x82\xa1t")  # half a record: the process died while writing it
    assert replayed(tmp_path) == [{"t": "delete", "name": "a"}, {"t": "producer_ids", "next": 1000}]
    assert log.path.stat().st_size == good_size  # cut, so the next append follows the last good record
    again = MetadataLog(tmp_path)
    again.replay(lambda record: None)
    again.append({"t": "delete", "name": "b"})
    again.close()
    assert [r["name"] for r in replayed(tmp_path) if r["t"] == "delete"] == ["a", "b"]


def test_append_before_replay_is_a_programming_error(tmp_path):
    with pytest.raises(AssertionError):
        MetadataLog(tmp_path).append({"t": "delete", "name": "a"})
