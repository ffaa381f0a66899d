"""DeleteRecords at the replica actors (real Ray, real logs on disk): a leader and its follower, two
``PartitionReplica`` actors of a private cluster name on the shared local Ray (the shared raystream cluster
has one broker, so a replication factor of 2 is only possible below the controller). The leader's log start
offset moves, the follower follows it from the leader's next push, and the answer is the low watermark
once both have."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pytest
import ray

from raystream import errors, handles
from raystream.actors.replica import PartitionReplica
from raystream.protocol import DeleteRecordsRequest, FetchRequest, ProduceRequest
from raystream.record import RECORD_SCHEMA

pytestmark = pytest.mark.integration
#: The leader's heartbeat push comes every replica.lag.time.max.ms / 3 = 40 s: far beyond the delete's
#: timeout, so the follower can only be in time if the delete itself started a push.
BROKER_CONFIG = {"replica_lag_time_max_ms": 120_000}


def call(ref):
    try:
        return ray.get(ref, timeout=60)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause from None


def records(n: int, start: int) -> pa.RecordBatch:
    return pa.record_batch([pa.nulls(n, pa.binary()), pa.array([b"v%d" % (start + i) * 50 for i in range(n)]),
                            pa.nulls(n, RECORD_SCHEMA.field("headers").type)], schema=RECORD_SCHEMA)


@pytest.fixture
def replicas(cluster, tmp_path):
    name, node = f"dr-{uuid.uuid4().hex[:8]}", ray.get_runtime_context().get_node_id()
    started = []
    for broker in (0, 1):
        options = handles.replica_options(name, "t", 0, broker, node)
        started.append(ray.remote(PartitionReplica).options(**options).remote(
            name, "t", 0, broker, str(tmp_path / f"broker-{broker}"), {"segment.bytes": 2048}, None, None,
            f"{name}-no-controller", BROKER_CONFIG))
    leader, follower = started
    call(follower.become_follower.remote(0, 0, [0, 1]))
    call(leader.become_leader.remote(0, [0, 1], [0, 1], 0))
    yield leader, follower
    for actor in started:
        call(actor.shutdown.remote(delete=True))
        ray.kill(actor)


def test_the_follower_follows_and_the_answer_is_the_low_watermark(replicas, wait_for):
    leader, follower = replicas
    for i in range(6):  # acks=all: on both replicas; small segments, so whole ones go
        call(leader.produce.remote(ProduceRequest(records(10, 10 * i), -1, 30_000, leader_epoch=0)))
    before = call(follower.describe.remote())
    assert (before.log_start_offset, before.log_end_offset) == (0, 60)
    assert call(leader.delete_records.remote(DeleteRecordsRequest(25, 30_000, leader_epoch=0))) == 25
    after = call(follower.describe.remote())
    assert after.log_start_offset == 25 and after.size_bytes < before.size_bytes
    assert call(leader.describe.remote()).log_start_offset == 25
    with pytest.raises(errors.OffsetOutOfRangeError):
        call(leader.fetch.remote(FetchRequest(10, 1 << 20, 0, 1)))
    first = call(leader.fetch.remote(FetchRequest(25, 1 << 20, 0, 1))).batches[0]
    assert first.column("value")[0].as_py() == b"v25" * 50
    # -1: the high watermark; the follower's log start follows there too
    assert call(leader.delete_records.remote(DeleteRecordsRequest(-1, 30_000))) == 60
    assert call(follower.describe.remote()).log_start_offset == 60


def test_offsets_past_the_high_watermark_and_followers_are_refused(replicas):
    leader, follower = replicas
    call(leader.produce.remote(ProduceRequest(records(5, 0), -1, 30_000)))
    with pytest.raises(errors.OffsetOutOfRangeError, match="high_watermark=5"):
        call(leader.delete_records.remote(DeleteRecordsRequest(6, 30_000)))
    with pytest.raises(errors.NotLeaderError):
        call(follower.delete_records.remote(DeleteRecordsRequest(1, 30_000)))
    with pytest.raises(errors.FencedLeaderEpochError):
        call(leader.delete_records.remote(DeleteRecordsRequest(1, 30_000, leader_epoch=-1)))
    assert [call(r.describe.remote()).log_start_offset for r in replicas] == [0, 0]


def test_a_follower_that_missed_a_delete_starts_at_the_leaders_log_start(replicas, wait_for):
    """A follower out of the ISR is not waited for; when it rejoins behind the leader's log start it is
    truncated fully and restarted there (the re-sync handshake), then catches up."""
    leader, follower = replicas
    call(leader.produce.remote(ProduceRequest(records(10, 0), -1, 30_000)))
    call(leader.become_leader.remote(0, [0, 1], [0], 1))  # the controller shrank the ISR to the leader
    call(follower.become_follower.remote(1, 9, [1, 9]))  # ... and this replica follows someone else meanwhile
    for i in range(1, 4):
        call(leader.produce.remote(ProduceRequest(records(10, 10 * i), 1, 30_000)))
    assert call(leader.delete_records.remote(DeleteRecordsRequest(35, 30_000))) == 35  # not waiting for broker 1
    call(leader.become_leader.remote(2, [0, 1], [0], 2))  # a new epoch: the leader re-syncs its follower
    call(follower.become_follower.remote(2, 0, [0, 1]))
    wait_for(lambda: (lambda d: (d.log_start_offset, d.log_end_offset))(call(follower.describe.remote())) == (35, 40),
             timeout_s=60, message="the follower restarted at the leader's log start and caught up")
