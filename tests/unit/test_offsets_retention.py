"""offsets.retention.minutes: committed offsets of groups empty for that long are deleted (controller, no Ray)."""

from __future__ import annotations

import asyncio

from raystream.actors.controller import Controller
from raystream.core.metadata import ClusterMetadata
from raystream.protocol import TopicPartition


def test_offsets_of_a_long_empty_group_expire_and_survive_otherwise(tmp_path):
    controller = Controller("c", str(tmp_path), {"offsets.retention.minutes": 1})
    controller.store.record(ClusterMetadata.topic_record("t", {}, None, None, {0: (0,)}))
    tp = TopicPartition("t", 0)
    asyncio.run(controller.commit_offsets("old", "", -1, {tp: (5, "")}))
    asyncio.run(controller.commit_offsets("new", "", -1, {tp: (7, "")}))
    # "old" committed two minutes ago and its group has been empty since
    key = ("old", "t", 0)
    offset, metadata, committed_ms = controller.groups._offsets.get(key)
    controller.groups._offsets.update({key: [offset, metadata, committed_ms - 120_000]})
    controller.groups._empty_since_ms["old"] = committed_ms - 120_000
    controller.groups._expire_offsets(retention_ms=60_000)
    assert asyncio.run(controller.fetch_offsets("old")) == {}
    assert asyncio.run(controller.fetch_offsets("new")) == {tp: (7, "")}
    controller._close_logs()  # what the controller process's death releases
    restarted = Controller("c", str(tmp_path))
    assert asyncio.run(restarted.fetch_offsets("new")) == {tp: (7, "")}  # durable
    assert asyncio.run(restarted.list_groups()) == ["new"]
    restarted._close_logs()
