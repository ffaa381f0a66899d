"""Consumer groups under the group checker (tests/group_checker.py) on the shared local Ray.

Each scenario keeps a producer writing to a 6-partition topic while members poll (0.2 s) and commit what
they read, then drains the topic and checks the whole history: one owner per partition per generation,
records only to owners, ownership moving forward in time, nothing committed skipped. Scenarios: members
polled round-robin from one thread (the notebook pattern that once left every member owning every
partition), members joining while others commit, a member that stops polling, members in separate
processes with one SIGKILLed, the controller restarted mid-rebalance — each with an eager and the
cooperative assignor where the protocol matters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from group_checker import GroupHistory, poll_and_commit

import raystream as rs
from raystream.protocol import ACTOR_NAMESPACE, controller_actor_name

pytestmark = pytest.mark.integration
PARTITIONS = 6
STRATEGIES = ["range", "cooperative-sticky"]
MEMBER = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300, "auto_offset_reset": "earliest",
          "enable_auto_commit": False, "max_poll_records": 50}


class SteadyProducer(threading.Thread):
    """Writes ``rate_per_s`` records a second round-robin over the partitions until stopped."""

    def __init__(self, topic: str, rate_per_s: float = 200.0) -> None:
        super().__init__(daemon=True)
        self.topic, self.interval_s = topic, 1.0 / rate_per_s
        self.stop = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with rs.Producer(acks="all", linger_ms=5) as producer:
                while not self.stop.wait(self.interval_s):  # pacing the load, not synchronisation
                    producer.send(self.topic, value=b"%d" % self.sent, partition=self.sent % PARTITIONS)
                    self.sent += 1
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error


def new_member(group: str, topic: str, strategy: str, **overrides) -> rs.Consumer:
    consumer = rs.Consumer(group_id=group, partition_assignment_strategy=[strategy], **{**MEMBER, **overrides})
    consumer.subscribe([topic])
    return consumer


def partitions(topic: str) -> set[rs.TopicPartition]:
    return {rs.TopicPartition(topic, p) for p in range(PARTITIONS)}


def converged(members: list[rs.Consumer], topic: str) -> bool:
    """Every member reports the same generation and together they own each partition once."""
    owned = [m.assignment() for m in members]
    generations = {m.group_metadata().generation_id for m in members}
    return (len(generations) == 1 and sum(len(o) for o in owned) == PARTITIONS
            and set().union(*owned) == partitions(topic) and all(owned))


def round_robin(members: dict[str, rs.Consumer], history: GroupHistory, until, timeout_s: float, what: str):
    """Poll every member in turn from this thread until ``until()`` holds (fails after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            owned = {label: sorted(tp.partition for tp in m.assignment()) for label, m in members.items()}
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; owned: {owned}\n"
                                 + "\n".join(history.events[-20:]))
        for label, consumer in members.items():
            poll_and_commit(label, consumer, history)


def drained(topic: str, group: str) -> bool:
    """Everything written is committed."""
    description = rs.Admin().describe_group(group)
    return bool(description.lag) and len(description.lag) == PARTITIONS and all(
        lag == 0 for lag in description.lag.values())


def check(history: GroupHistory, topic: str, group: str) -> None:
    with rs.Consumer() as c:
        ends = c.end_offsets(sorted(partitions(topic)))
    committed = {tp: o for tp, o in rs.Admin().describe_group(group).offsets.items()}
    assert committed == ends, f"committed {committed} != log ends {ends}"
    history.check(ends, committed)


def drain_and_check(members, history: GroupHistory, producer: SteadyProducer, topic: str, group: str) -> None:
    """Stop the load, poll until everything written is committed, then run the checker."""
    producer.finish()
    round_robin(members, history, lambda: drained(topic, group), 60, "the topic to drain")
    check(history, topic, group)


def close_all(members) -> None:
    for consumer in members:
        consumer.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_members_polled_from_one_thread_converge_with_one_owner_per_partition(cluster, topic_name, strategy):
    rs.Admin().create_topic(topic_name, partitions=PARTITIONS)
    group, history = f"g-{topic_name}", GroupHistory()
    producer = SteadyProducer(topic_name)
    producer.start()
    members = {f"m{i}": new_member(group, topic_name, strategy) for i in range(3)}
    try:
        round_robin(members, history, lambda: converged(list(members.values()), topic_name), 60, "convergence")
        assert sorted(len(m.assignment()) for m in members.values()) == [2, 2, 2]
        drain_and_check(members, history, producer, topic_name, group)
        assert producer.sent > 0 and sum(len(o) for p in history.polls for _, _, o in p.offsets) >= producer.sent
    finally:
        producer.stop.set()
        close_all(members.values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_members_joining_while_others_commit(cluster, topic_name, strategy):
    rs.Admin().create_topic(topic_name, partitions=PARTITIONS)
    group, history = f"g-{topic_name}", GroupHistory()
    producer = SteadyProducer(topic_name)
    producer.start()
    members = {"m0": new_member(group, topic_name, strategy)}
    try:
        for i in range(1, 4):
            committed_before = len(history.commits)
            round_robin(members, history, lambda n=committed_before: len(history.commits) >= n + 5, 60,
                        "commits before the next member joins")
            history.event(f"m{i} joins")
            members[f"m{i}"] = new_member(group, topic_name, strategy)
        round_robin(members, history, lambda: converged(list(members.values()), topic_name), 60, "convergence")
        drain_and_check(members, history, producer, topic_name, group)
    finally:
        producer.stop.set()
        close_all(members.values())


def test_member_that_stops_polling_stops_delivering_before_its_partitions_move(cluster, topic_name):
    """``slow`` is not polled for longer than max_poll_interval_ms: it leaves, ``fast`` gets everything;
    when ``slow`` polls again it delivers nothing of its old partitions (lost) and rejoins."""
    rs.Admin().create_topic(topic_name, partitions=PARTITIONS)
    group, history = f"g-{topic_name}", GroupHistory()
    producer = SteadyProducer(topic_name)
    producer.start()
    members = {m: new_member(group, topic_name, "range", max_poll_interval_ms=2000) for m in ("fast", "slow")}
    try:
        round_robin(members, history, lambda: converged(list(members.values()), topic_name), 60, "convergence")
        slow_owned = members["slow"].assignment()
        history.event("slow stops polling")
        round_robin({"fast": members["fast"]}, history,
                    lambda: members["fast"].assignment() == partitions(topic_name), 30,
                    "the slow member's partitions to move to the fast one")
        assert members["slow"].assignment() == set()  # it knows it left: reports nothing it no longer owns
        history.event("slow polls again")
        records = poll_and_commit("slow", members["slow"], history)
        assert not {rs.TopicPartition(r.topic, r.partition) for r in records} & slow_owned - \
            members["slow"].assignment()
        round_robin(members, history, lambda: converged(list(members.values()), topic_name), 60,
                    "convergence after the slow member rejoined")
        drain_and_check(members, history, producer, topic_name, group)
    finally:
        producer.stop.set()
        close_all(members.values())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_members_in_separate_processes_one_sigkilled(cluster, topic_name, strategy, tmp_path, wait_for):
    rs.Admin().create_topic(topic_name, partitions=PARTITIONS)
    group = f"g-{topic_name}"
    producer = SteadyProducer(topic_name)
    producer.start()
    stop_file = tmp_path / "stop"
    script = Path(__file__).with_name("group_member_process.py")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    journals = [tmp_path / f"member{i}.jsonl" for i in range(3)]
    children = [subprocess.Popen([sys.executable, str(script), ray.get_runtime_context().gcs_address, "it", group,
                                  topic_name, strategy, str(j), str(stop_file)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
                for j in journals]
    history = GroupHistory()
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        wait_for(lambda: len(rs.Admin().describe_group(group).members) == 3 and
                 rs.Admin().describe_group(group).state == "Stable", timeout_s=60, message="three members")
        children[0].send_signal(signal.SIGKILL)
        children[0].wait(10)
        history.event("member 0 SIGKILLed")

        def survivors_own_everything():
            d = rs.Admin().describe_group(group)
            return (len(d.members) == 2 and d.state == "Stable" and
                    sorted(len(m["assignment"]) for m in d.members) == [3, 3])

        wait_for(survivors_own_everything, timeout_s=60, message="the survivors to share the partitions")
        producer.finish()
        wait_for(lambda: drained(topic_name, group), timeout_s=60, message="the topic to drain")
        stop_file.touch()
        for child in children[1:]:
            assert child.wait(60) == 0
        for journal in journals:
            history.load_journal(str(journal))
        check(history, topic_name, group)
    finally:
        producer.stop.set()
        stop_file.touch()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_controller_restarted_mid_rebalance(cluster, topic_name, strategy, wait_for):
    """A third member joins and the controller is killed while the group rebalances: the members find their
    generation gone (membership is not persisted), lose their partitions without committing, rejoin the
    restarted coordinator and converge; committed offsets survived, so nothing is skipped."""
    rs.Admin().create_topic(topic_name, partitions=PARTITIONS)
    group, history = f"g-{topic_name}", GroupHistory()
    producer = SteadyProducer(topic_name)
    producer.start()
    members = {f"m{i}": new_member(group, topic_name, strategy) for i in range(2)}
    try:
        round_robin(members, history, lambda: converged(list(members.values()), topic_name), 60, "convergence")
        members["m2"] = new_member(group, topic_name, strategy)
        round_robin(members, history, lambda: rs.Admin().describe_group(group).state != "Stable", 30,
                    "the rebalance to start")
        history.event("controller killed mid-rebalance")
        controller = ray.get_actor(controller_actor_name("it"), namespace=ACTOR_NAMESPACE)
        ray.kill(controller, no_restart=False)
        wait_for(lambda: ray.get(controller.ping.remote(), timeout=5) == "it", timeout_s=60, message="restart")
        round_robin(members, history, lambda: converged(list(members.values()), topic_name), 90,
                    "convergence after the restart")
        drain_and_check(members, history, producer, topic_name, group)
    finally:
        producer.stop.set()
        close_all(members.values())
