"""Property: the real consumer and group-member code against the real group coordinator, in one process.

No Ray: the coordinator (:class:`raystream.actors.groups.GroupCoordinator`, its rules in
:mod:`raystream.core.group`) runs on an asyncio loop in a thread of this process, with its committed
offsets in a real compacted log on disk; the consumers (``raystream.Consumer`` with their heartbeat threads)
reach it through an in-process transport whose partitions are the unit tests' fake logs. Hypothesis draws
random interleavings of members joining, polling (with and without committing), stopping to poll for longer
than ``max_poll_interval_ms``, closing and pausing, with short session and heartbeat timeouts, for an eager
and the cooperative assignor. Invariants (tests/group_checker.py): one owner per partition per generation
as reported by the members, records only to the owner, ownership moving forward in time, nothing committed
skipped — and, sampled after every step, the coordinator's own assignment never gives a partition twice.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from group_checker import GroupHistory, poll_and_commit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "client"))
from fake_transport import FakeTransport  # noqa: E402

from raystream import metrics  # noqa: E402
from raystream.actors.groups import GroupCoordinator  # noqa: E402
from raystream.client.consumer import Consumer  # noqa: E402
from raystream.client.producer import Producer  # noqa: E402
from raystream.config import BrokerConfig  # noqa: E402
from raystream.errors import RequestTimeoutError  # noqa: E402
from raystream.protocol import TopicPartition  # noqa: E402

TOPIC, PARTITIONS, PER_PARTITION, GROUP = "events", 4, 30, "g"
MEMBER = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 100, "max_poll_interval_ms": 2000,
          "auto_offset_reset": "earliest", "enable_auto_commit": False, "max_poll_records": 7,
          "retry_backoff_ms": 20}


class InProcessCoordinator:
    """The controller's group coordinator alone, on its own event loop thread."""

    def __init__(self, root: Path, topics: dict[str, int]) -> None:
        self.metadata = SimpleNamespace(topics={name: SimpleNamespace(partitions=dict.fromkeys(range(n)))
                                                for name, n in topics.items()})
        self.broker_config = BrokerConfig.from_dict({"group.initial.rebalance.delay.ms": 0,
                                                     "metrics.group.lag.interval.ms": 3_600_000})
        self.coordinator: GroupCoordinator | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="coordinator")
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(root), self.loop).result(10)

    async def _start(self, root: Path) -> None:
        self.coordinator = GroupCoordinator(root, self.metadata, self.broker_config, None, metrics.ControllerGauges())
        self.coordinator.start()

    def submit(self, method: str, *args):
        return asyncio.run_coroutine_threadsafe(getattr(self.coordinator, method)(*args), self.loop)

    def assignments(self) -> list[tuple]:
        """The coordinator's current assignment per member (read on its loop: a consistent snapshot)."""
        async def read():
            group = self.coordinator._groups.get(GROUP)
            return [] if group is None else [m.assignment for m in group.members.values()]
        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(10)

    def stop(self) -> None:
        async def cancel():
            self.coordinator.close()  # cancels its tasks, closes its logs
        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class GroupTransport(FakeTransport):
    """The fake partitions plus the in-process coordinator."""

    def __init__(self, coordinator: InProcessCoordinator) -> None:
        super().__init__()
        self.coordinator = coordinator

    def group_call(self, method: str, *args, timeout_s: float | None = None):
        try:
            return self.coordinator.submit(method, *args).result(timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(f"{method} timed out") from None

    def group_submit(self, method: str, *args):
        return self.coordinator.submit(method, *args)


ACTIONS = st.sampled_from(["poll", "poll", "poll", "poll_no_commit", "join", "close", "stall", "pause"])


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(ACTIONS, st.integers(0, 3)), min_size=8, max_size=22))
def test_one_owner_per_partition_per_generation_under_random_interleavings(tmp_path_factory, strategy, steps):
    coordinator = InProcessCoordinator(tmp_path_factory.mktemp("coordinator"), {TOPIC: PARTITIONS})
    transport = GroupTransport(coordinator)
    transport.add_topic(TOPIC, PARTITIONS)
    with Producer(transport=transport, linger_ms=0) as producer:
        for i in range(PARTITIONS * PER_PARTITION):
            producer.send(TOPIC, value=b"%d" % i, partition=i % PARTITIONS)
    history = GroupHistory()
    members: dict[str, Consumer] = {}
    stalled: set[str] = set()  # not polled any more until they are closed (a stuck application)
    made = 0

    def join() -> None:
        nonlocal made
        consumer = Consumer(transport=transport, group_id=GROUP, partition_assignment_strategy=[strategy],
                            **MEMBER)
        consumer.subscribe([TOPIC])
        members[f"m{made}"] = consumer
        made += 1

    def check_coordinator() -> None:
        given_out = [tp for assignment in coordinator.assignments() for tp in assignment]
        assert len(given_out) == len(set(given_out)), f"coordinator assigned a partition twice: {given_out}"

    try:
        join()
        for action, index in steps:
            live = sorted(members)
            label = live[index % len(live)] if live else None
            if action == "join" or label is None:
                join()
            elif action in ("poll", "poll_no_commit") and label not in stalled:
                if action == "poll":
                    poll_and_commit(label, members[label], history, timeout=0.05)
                else:
                    history.poll(label, members[label], members[label].poll(timeout=0.05))
            elif action == "close" and len(members) > 1:
                history.event(f"{label} closes")
                members.pop(label).close()
                stalled.discard(label)
            elif action == "stall":
                history.event(f"{label} stops polling")
                stalled.add(label)
            elif action == "pause":
                time.sleep(0.5)  # the workload's think time: heartbeats and expiry run on
            check_coordinator()
        for label in list(stalled):  # a stuck member is eventually restarted: its session must end first
            members.pop(label).close()
        if not members:
            join()
        deadline = time.monotonic() + 60
        while True:
            committed = transport.group_call("fetch_offsets", GROUP, None, timeout_s=10)
            if all(committed.get(TopicPartition(TOPIC, p), (0,))[0] == PER_PARTITION
                   for p in range(PARTITIONS)):
                break
            assert time.monotonic() < deadline, f"the group did not drain: committed {committed}"
            for label, consumer in list(members.items()):
                poll_and_commit(label, consumer, history, timeout=0.05)
            check_coordinator()
        ends = {TopicPartition(TOPIC, p): PER_PARTITION for p in range(PARTITIONS)}
        history.check(ends, {tp: offset for tp, (offset, _) in committed.items()})
    finally:
        for consumer in members.values():
            consumer.close()
        coordinator.stop()
