"""Kafka's consumer protocol bytes (JoinGroup metadata, SyncGroup assignments) <-> the coordinator's values."""

from __future__ import annotations

import struct

import pytest

from raystream.core.assignors import NO_GENERATION, Subscription
from raystream.errors import InvalidRequestError
from raystream.gateway.consumer_protocol import (
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)
from raystream.protocol import TopicPartition

OWNED = [TopicPartition("a", 0), TopicPartition("a", 2), TopicPartition("b", 1)]


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_subscriptions_keep_what_their_version_carries(version):
    sent = Subscription(["b", "a"], OWNED, 7, None, b"user")
    got = decode_subscription(encode_subscription(sent, version), group_instance_id="static-1")
    assert got.topics == ["a", "b"]
    assert got.user_data == b"user"
    assert got.group_instance_id == "static-1"
    assert got.owned_partitions == (OWNED if version >= 1 else [])
    assert got.generation_id == (7 if version >= 2 else NO_GENERATION)


def test_a_newer_version_is_read_as_the_newest_known_one():
    data = bytearray(encode_subscription(Subscription(["t"], OWNED, 3), 3))
    struct.pack_into(">h", data, 0, 9)  # a future version, with a field kio does not know after the known ones
    got = decode_subscription(bytes(data) + b"\x00\x00\x00\x05")
    assert (got.topics, got.owned_partitions, got.generation_id) == (["t"], OWNED, 3)


@pytest.mark.parametrize("version", [0, 1, 3])
def test_assignments_round_trip_sorted_and_grouped(version):
    tps = [TopicPartition("b", 1), TopicPartition("a", 2), TopicPartition("a", 0)]
    assert decode_assignment(encode_assignment(tps, version)) == tuple(sorted(tps))
    assert decode_assignment(b"") == ()  # a member with nothing assigned may get empty bytes


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xff", b"\x00\x00\x00\x00\x00\x05ab", b"\x00\x01\x00"])
def test_malformed_bytes_are_a_typed_error(data):
    with pytest.raises(InvalidRequestError):
        decode_subscription(data)
    if data:
        with pytest.raises(InvalidRequestError):
            decode_assignment(data)
