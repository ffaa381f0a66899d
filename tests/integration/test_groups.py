"""Consumer groups end to end on the shared local Ray: membership, assignment, commits, rebalances."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import ray

import raystream as rs
from raystream import errors
from raystream.protocol import ACTOR_NAMESPACE, controller_actor_name

pytestmark = pytest.mark.integration
FAST = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300, "auto_offset_reset": "earliest"}


def produce(topic, n, partitions):
    with rs.Producer(acks="all", linger_ms=1) as producer:
        for i in range(n):
            producer.send(topic, value=b"%d" % i, partition=i % partitions)


class Member(threading.Thread):
    """A consumer polling in its own thread (as in an application), recording what it read."""

    def __init__(self, topic, group, **config):
        super().__init__(daemon=True)
        self.topic, self.group, self.config = topic, group, {**FAST, **config}
        self.records, self.assigned, self.revoked = [], [], []
        self.stop = threading.Event()
        self.pause = threading.Event()
        self.error = None
        self.consumer = None

    def run(self):
        try:
            with rs.Consumer(group_id=self.group, **self.config) as consumer:
                self.consumer = consumer
                consumer.subscribe([self.topic], on_assign=lambda p: self.assigned.append(set(p)),
                                   on_revoke=lambda p: self.revoked.append(set(p)))
                while not self.stop.is_set():
                    if self.pause.is_set():
                        time.sleep(0.05)  # a stuck application (the test's fault), not synchronisation
                        continue
                    self.records.extend(consumer.poll(timeout=0.1))
        except BaseException as exc:
            self.error = exc

    def owned(self):
        c = self.consumer
        try:
            return set(c.assignment()) if c is not None and not c.closed else set()
        except errors.ClosedError:
            return set()


def wait_partitioned(wait_for, members, partitions, message):
    def ok():
        owned = [m.owned() for m in members]
        union = set().union(*owned)
        return len(union) == partitions and sum(len(o) for o in owned) == partitions and all(owned)
    wait_for(ok, timeout_s=60, message=message)


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_members_share_partitions_with_none_owned_twice(cluster, topic_name, wait_for, strategy):
    rs.Admin().create_topic(topic_name, partitions=6)
    produce(topic_name, 600, 6)
    group = f"g-{topic_name}"
    members = [Member(topic_name, group, partition_assignment_strategy=[strategy]) for _ in range(2)]
    more = [Member(topic_name, group, partition_assignment_strategy=[strategy]) for _ in range(3)]
    try:
        for m in members:
            m.start()
        wait_partitioned(wait_for, members, 6, "two members to split six partitions")
        wait_for(lambda: len({r.value for m in members for r in m.records}) == 600, message="all records read")
        for m in members:
            m.revoked.clear()
        for m in more:
            m.start()
        wait_partitioned(wait_for, members + more, 6, "five members to split six partitions")
        if strategy == "cooperative-sticky":
            # incremental: the first members gave up only partitions that moved, and kept the others
            for m in members:
                kept = m.owned()
                assert kept and all(not (revoked & kept) for revoked in m.revoked), (m.revoked, kept)
        else:
            # eager: every rebalance revokes everything first
            for m in members:
                assert any(len(revoked) >= 3 for revoked in m.revoked), m.revoked
        assert rs.Admin().describe_group(group).state == "Stable"
    finally:
        for m in members + more:
            m.stop.set()
        for m in members + more:
            if m.is_alive():
                m.join(10)
    assert not any(m.error for m in members + more), [m.error for m in members + more]


def test_commits_resume_the_group_and_stale_generations_fail(cluster, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=2)
    produce(topic_name, 100, 2)
    group = f"g-{topic_name}"
    with rs.Consumer(group_id=group, enable_auto_commit=False, **FAST) as c:
        c.subscribe([topic_name])
        seen = []
        deadline = time.monotonic() + 30
        while len(seen) < 100 and time.monotonic() < deadline:
            seen.extend(c.poll(timeout=0.2))
        assert len(seen) == 100
        tps = [rs.TopicPartition(topic_name, p) for p in range(2)]
        c.commit({tps[0]: 10, tps[1]: (20, "checkpoint")})
        assert c.committed(tps) == {tps[0]: 10, tps[1]: 20}
        stale = c._group.generation_id - 1
        with pytest.raises(errors.CommitFailedError, match="max_poll_interval_ms"):
            c._group.transport.group_call("commit_offsets", group, c._group.member_id, stale, {tps[0]: (1, "")})
    # a new member of the group starts from the committed offsets, not from the beginning
    with rs.Consumer(group_id=group, **FAST) as c2:
        c2.subscribe([topic_name])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 70 and time.monotonic() < deadline:
            got.extend(c2.poll(timeout=0.2))
        assert sorted((r.partition, r.offset) for r in got)[0] == (0, 10)
        assert len(got) == 70  # (50 - 10) + (50 - 20)
    described = rs.Admin().describe_group(group)
    assert described.state == "Empty" and described.lag == {tps[0]: 0, tps[1]: 0}


def test_a_consumer_that_stops_polling_is_removed(cluster, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=4)
    group = f"g-{topic_name}"
    slow = Member(topic_name, group, max_poll_interval_ms=1500)
    fast = Member(topic_name, group)
    slow.start()
    fast.start()
    try:
        wait_partitioned(wait_for, [slow, fast], 4, "two members")
        slow.pause.set()
        wait_for(lambda: len(fast.owned()) == 4, timeout_s=30, message="the live member to take everything")
        described = rs.Admin().describe_group(group)
        assert len(described.members) == 1
    finally:
        slow.stop.set()
        fast.stop.set()
        slow.join(10)
        fast.join(10)


def test_killed_consumer_process_partitions_move_and_survivor_resumes_from_commits(cluster, topic_name, wait_for):
    """SIGKILL a member in another process: within the session timeout its partitions go to the survivor,
    which resumes from the committed offsets — at least once, nothing skipped."""
    rs.Admin().create_topic(topic_name, partitions=2)
    produce(topic_name, 400, 2)
    group = f"g-{topic_name}"
    script = textwrap.dedent(f"""
        import ray, raystream as rs, sys
        ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False)
        rs.init(cluster="it")
        c = rs.Consumer(group_id={group!r}, session_timeout_ms=3000, heartbeat_interval_ms=300,
                        auto_offset_reset="earliest", auto_commit_interval_ms=100, max_poll_records=10)
        c.subscribe([{topic_name!r}])
        n = 0
        while True:
            n += len(c.poll(timeout=0.2))
            if n >= 50:
                print("consumed", n, flush=True)
    """)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=env, text=True)
    try:
        assert child.stdout.readline().startswith("consumed")
        survivor = Member(topic_name, group)
        survivor.start()
        wait_for(lambda: len(rs.Admin().describe_group(group).members) == 2, timeout_s=60,
                 message="the survivor to join")
        committed = rs.Admin().describe_group(group).offsets
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_for(lambda: len(survivor.owned()) == 2, timeout_s=30, message="the dead member's partitions to move")
        wait_for(lambda: len({(r.partition, r.offset) for r in survivor.records}) >= 400
                 - sum(committed.values()), timeout_s=60, message="the survivor to read the rest")
        read = {(r.partition, r.offset) for r in survivor.records}
        for tp, offset in committed.items():
            assert all((tp.partition, o) in read for o in range(offset, 200)), f"{tp} skipped records"
        survivor.stop.set()
        survivor.join(10)
        assert survivor.error is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_committed_offsets_survive_a_controller_restart(cluster, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=1)
    tp = rs.TopicPartition(topic_name, 0)
    with rs.Consumer(group_id=f"g-{topic_name}") as c:
        c.assign([tp])
        c.commit({tp: 42})
    controller = ray.get_actor(controller_actor_name("it"), namespace=ACTOR_NAMESPACE)
    ray.kill(controller, no_restart=False)
    wait_for(lambda: ray.get(controller.ping.remote(), timeout=5) == "it", timeout_s=60, message="restart")
    with rs.Consumer(group_id=f"g-{topic_name}") as c:
        assert c.committed([tp]) == {tp: 42}
    assert f"g-{topic_name}" in rs.Admin().list_groups()


def test_admin_reset_and_delete_group(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=2)
    produce(topic_name, 10, 2)
    admin = rs.Admin()
    group = f"g-{topic_name}"
    assert admin.reset_offsets(group, topic_name, "latest") == {rs.TopicPartition(topic_name, 0): 5,
                                                                rs.TopicPartition(topic_name, 1): 5}
    assert admin.reset_offsets(group, topic_name, "earliest")[rs.TopicPartition(topic_name, 1)] == 0
    assert admin.describe_group(group).lag == {rs.TopicPartition(topic_name, 0): 5,
                                               rs.TopicPartition(topic_name, 1): 5}
    admin.delete_group(group)
    assert group not in admin.list_groups()
    with pytest.raises(errors.GroupIdNotFoundError):
        admin.describe_group(group)


def test_static_member_restarting_within_the_session_keeps_its_partitions_without_a_rebalance(
        cluster, topic_name, wait_for):
    rs.Admin().create_topic(topic_name, partitions=4)
    group = f"g-{topic_name}"
    static = Member(topic_name, group, group_instance_id="worker-1")
    other = Member(topic_name, group)
    static.start()
    other.start()
    try:
        wait_partitioned(wait_for, [static, other], 4, "two members")
        before = rs.Admin().describe_group(group)
        mine = static.owned()
        static.stop.set()  # closes without... a static member's close leaves no gap: see below
        static.join(10)
        again = Member(topic_name, group, group_instance_id="worker-1")
        again.start()
        wait_for(lambda: again.owned() == mine, timeout_s=30, message="the static member's partitions back")
        after = rs.Admin().describe_group(group)
        assert after.generation_id == before.generation_id  # no rebalance happened
        assert other.owned() == {tp for tp in (rs.TopicPartition(topic_name, p) for p in range(4))} - mine
        again.stop.set()
        again.join(10)
    finally:
        other.stop.set()
        other.join(10)


def test_pattern_subscription_and_new_partitions_are_picked_up(cluster, topic_name, wait_for):
    admin = rs.Admin()
    admin.create_topic(f"{topic_name}-a", partitions=1)
    group = f"g-{topic_name}"
    with rs.Consumer(group_id=group, metadata_max_age_ms=200, **FAST) as c:
        c.subscribe(pattern=rf"{topic_name}-.*")
        wait_for(lambda: (c.poll(timeout=0.05), c.assignment())[1] == {rs.TopicPartition(f"{topic_name}-a", 0)},
                 timeout_s=30, message="the first matching topic")
        admin.create_topic(f"{topic_name}-b", partitions=1)
        admin.create_partitions(f"{topic_name}-a", total=2)
        want = {rs.TopicPartition(f"{topic_name}-a", 0), rs.TopicPartition(f"{topic_name}-a", 1),
                rs.TopicPartition(f"{topic_name}-b", 0)}
        wait_for(lambda: (c.poll(timeout=0.05), c.assignment())[1] == want, timeout_s=30,
                 message="the new topic and partition")
        assert c.subscription() == {f"{topic_name}-a", f"{topic_name}-b"}


def test_auto_offset_reset_none_without_a_commit_raises(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    with rs.Consumer(group_id=f"g-{topic_name}", **{**FAST, "auto_offset_reset": "none"}) as c:
        c.subscribe([topic_name])
        with pytest.raises(errors.NoOffsetForPartitionError):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                c.poll(timeout=0.1)
