"""Producer-id allocation: the metadata record and the controller's blocks (no Ray: the actor class is
used as a plain object), and the broker setting for producer-id expiry."""

from __future__ import annotations

import asyncio

import pytest

from raystream.actors.controller import Controller
from raystream.config import BrokerConfig
from raystream.core.metadata import ClusterMetadata
from raystream.errors import InvalidConfigurationError


def test_producer_ids_record_only_moves_forward():
    metadata = ClusterMetadata()
    assert metadata.next_producer_id == 0
    metadata.apply({"t": "producer_ids", "next": 1000})
    metadata.apply({"t": "producer_ids", "next": 500})  # never backwards
    assert metadata.next_producer_id == 1000


def test_controller_hands_out_ids_in_blocks_that_survive_a_restart(tmp_path):
    controller = Controller("c", str(tmp_path))
    first = [asyncio.run(controller.init_producer_id()) for _ in range(1001)]
    assert first[:3] == [(0, 0), (1, 0), (2, 0)] and first[-1] == (1000, 0)  # crossed into a second block
    assert controller.metadata.next_producer_id == 2000
    controller._close_logs()  # the old incarnation's process is gone: its files are free
    restarted = Controller("c", str(tmp_path))  # replays the metadata log
    pid, epoch = asyncio.run(restarted.init_producer_id())
    assert (pid, epoch) == (2000, 0)  # after every block handed out before: no id repeats
    assert pid not in {p for p, _ in first}


def test_producer_id_expiration_setting_takes_kafkas_name():
    assert BrokerConfig().producer_id_expiration_ms == 86_400_000
    assert BrokerConfig.from_dict({"producer.id.expiration.ms": "60000"}).producer_id_expiration_ms == 60_000
    assert BrokerConfig.from_dict({"producer_id_expiration_ms": 5}).producer_id_expiration_ms == 5
    with pytest.raises(InvalidConfigurationError):
        BrokerConfig.from_dict({"producer.id.expiration.ms": 0})
