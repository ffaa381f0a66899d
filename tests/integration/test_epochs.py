"""Leader epochs fence stale requests (the groundwork for failover)."""

from __future__ import annotations

import pyarrow as pa
import pytest
import ray

import raystream as rs
from raystream import errors
from raystream.protocol import ACTOR_NAMESPACE, FetchRequest, ProduceRequest, replica_actor_name
from raystream.record import RECORD_SCHEMA

pytestmark = pytest.mark.integration


def one_record() -> pa.RecordBatch:
    return pa.record_batch([pa.array([b"k"]), pa.array([b"v"]), pa.nulls(1, RECORD_SCHEMA.field("headers").type)],
                           schema=RECORD_SCHEMA)


def call(ref):
    try:
        return ray.get(ref, timeout=30)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause from None


def test_requests_with_stale_or_future_epochs_are_rejected(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    leader = ray.get_actor(replica_actor_name("it", topic_name, 0, 0), namespace=ACTOR_NAMESPACE)
    assert call(leader.produce.remote(ProduceRequest(one_record(), 1, 5000, leader_epoch=0))).base_offset == 0
    with pytest.raises(errors.UnknownLeaderEpochError):
        call(leader.produce.remote(ProduceRequest(one_record(), 1, 5000, leader_epoch=1)))
    # the controller moves the partition to epoch 1 (as a failover would)
    call(leader.become_leader.remote(1, [0], [0], 1))
    with pytest.raises(errors.FencedLeaderEpochError):
        call(leader.produce.remote(ProduceRequest(one_record(), 1, 5000, leader_epoch=0)))
    with pytest.raises(errors.FencedLeaderEpochError):
        call(leader.fetch.remote(FetchRequest(0, 1 << 20, 0, 1, None, leader_epoch=0)))
    with pytest.raises(errors.FencedLeaderEpochError):
        call(leader.become_follower.remote(0, 5, [0, 5]))  # an older controller decision
    assert call(leader.produce.remote(ProduceRequest(one_record(), 1, 5000, leader_epoch=1))).base_offset == 1
    # a replica told to follow answers produce with NotLeaderError (clients refresh metadata)
    call(leader.become_follower.remote(2, 7, [0, 7]))
    with pytest.raises(errors.NotLeaderError):
        call(leader.produce.remote(ProduceRequest(one_record(), 1, 5000)))
    # epoch 2 started at offset 2 in the epoch cache only once data is written under it; 0 and 1 are known
    status = call(leader.replica_status.remote())
    assert status.log_end_offset == 2 and status.latest_epoch == 1
