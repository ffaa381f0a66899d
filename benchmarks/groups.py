"""Consumer-group benchmark: rebalance times and group vs single-consumer throughput, in one run.

Prints ONE JSON object to stdout (progress on stderr). On an embedded local cluster, a 16-partition topic:

* ``join``: 8 members (consumer threads polling in a loop, default heartbeat settings except
  ``session_timeout_ms``) form a group; a 9th joins — seconds from its ``subscribe`` until the group is
  Stable with 9 members and every partition owned by exactly one member, each member's own assignment
  agreeing with the coordinator's (target ≤ 1 s). Also reported for both assignors.
* ``death``: a member in another process is SIGKILLed (no goodbye) — seconds until the remaining members
  own every partition again (target ≤ ``session_timeout_ms`` + 1 s).
* ``throughput``: records/s read from the earliest offset by one consumer and by a group of 4 consumer
  threads in this process, same data (``--records``, 100-byte values).

    .venv/bin/python benchmarks/groups.py             # ~1-2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

import raystream as rs  # noqa: E402
from raystream.cli_perf import value_table  # noqa: E402

PARTITIONS = 16
_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[groups-bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def wait(condition, timeout_s: float, what: str, interval_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


class Member(threading.Thread):
    def __init__(self, topic: str, group: str, **config: Any) -> None:
        super().__init__(daemon=True)
        self.topic, self.group, self.config = topic, group, config
        self.stop = threading.Event()
        self.count = 0
        self.consumer: Any = None
        self.subscribed_at: float | None = None

    def run(self) -> None:
        with rs.Consumer(group_id=self.group, auto_offset_reset="earliest", **self.config) as consumer:
            self.consumer = consumer
            self.subscribed_at = time.monotonic()
            consumer.subscribe([self.topic])
            while not self.stop.is_set():
                self.count += consumer.poll_arrow(timeout=0.05).num_rows

    def owned(self) -> set:
        try:
            return set(self.consumer.assignment()) if self.consumer is not None else set()
        except Exception:  # closed meanwhile
            return set()


def settled(admin: rs.Admin, group: str, members: list[Member], n: int) -> bool:
    try:
        d = admin.describe_group(group)
    except rs.errors.GroupIdNotFoundError:  # no member has joined yet
        return False
    if d.state != "Stable" or len(d.members) != n:
        return False
    coordinator = [set(m["assignment"]) for m in d.members]
    if sum(len(a) for a in coordinator) != PARTITIONS or len(set().union(*coordinator)) != PARTITIONS:
        return False
    local = sorted((sorted(map(str, m.owned())) for m in members), key=str)
    return local == sorted((sorted(map(str, a)) for a in coordinator), key=str)


def bench_join(topic: str, strategy: str, session_ms: int) -> dict[str, Any]:
    group = f"join-{strategy}"
    admin = rs.Admin()
    config = {"session_timeout_ms": session_ms, "partition_assignment_strategy": [strategy]}
    members = [Member(topic, group, **config) for _ in range(8)]
    for m in members:
        m.start()
    try:
        wait(lambda: settled(admin, group, members, 8), 120, "8 members to settle", 0.05)
        ninth = Member(topic, group, **config)
        ninth.start()
        members.append(ninth)
        wait(lambda: ninth.subscribed_at is not None, 30, "the 9th member to subscribe")
        wait(lambda: settled(admin, group, members, 9), 120, "9 members to settle")
        return {"assignor": strategy, "join_s": round(time.monotonic() - ninth.subscribed_at, 3),
                "target_s": 1.0}
    finally:
        for m in members:
            m.stop.set()
        for m in members:
            m.join(30)


def bench_death(topic: str, session_ms: int) -> dict[str, Any]:
    group = "death"
    admin = rs.Admin()
    members = [Member(topic, group, session_timeout_ms=session_ms) for _ in range(7)]
    for m in members:
        m.start()
    script = textwrap.dedent(f"""
        import ray, raystream as rs
        ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False)
        rs.init(cluster="groupbench")
        c = rs.Consumer(group_id={group!r}, session_timeout_ms={session_ms}, auto_offset_reset="earliest")
        c.subscribe([{topic!r}])
        while True:
            c.poll_arrow(timeout=0.1)
            print("polling", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env={**os.environ})
    try:
        child.stdout.readline()
        wait(lambda: len(admin.describe_group(group).members) == 8 and settled(
            admin, group, members + [_Remote(admin, group, members)], 8), 120, "8 members incl. the child", 0.05)
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait(lambda: settled(admin, group, members, 7), session_ms / 1000 + 120, "7 members to settle")
        seconds = time.monotonic() - killed
        return {"death_s": round(seconds, 3), "session_timeout_ms": session_ms,
                "target_s": session_ms / 1000 + 1.0, "met": seconds <= session_ms / 1000 + 1.0}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for m in members:
            m.stop.set()
        for m in members:
            m.join(30)


class _Remote:
    """Stands for the child process's member in ``settled``: whatever the coordinator gives the member that
    is not one of ours."""

    def __init__(self, admin: rs.Admin, group: str, ours: list[Member]) -> None:
        self.admin, self.group, self.ours = admin, group, ours

    def owned(self) -> set:
        local = set().union(*(m.owned() for m in self.ours))
        try:
            d = self.admin.describe_group(self.group)
        except rs.errors.GroupIdNotFoundError:
            return set()
        every = set().union(*(set(m["assignment"]) for m in d.members))
        return every - local


def bench_throughput(topic: str, records: int) -> dict[str, Any]:
    def single() -> float:
        with rs.Consumer(auto_offset_reset="earliest") as c:
            c.assign([rs.TopicPartition(topic, p) for p in range(PARTITIONS)])
            got, t0 = 0, time.perf_counter()
            while got < records:
                got += c.poll_arrow(timeout=1.0).num_rows
            return records / (time.perf_counter() - t0)

    def grouped(n: int) -> float:
        """Rate from the moment the group is formed (every member assigned) to the last record."""
        group = f"tp-{n}-{time.monotonic_ns()}"
        members = [Member(topic, group, session_timeout_ms=10_000) for _ in range(n)]
        for m in members:
            m.start()
        wait(lambda: all(m.owned() for m in members), 120, "the group to form", 0.002)
        t0, before = time.perf_counter(), sum(m.count for m in members)
        wait(lambda: sum(m.count for m in members) >= records, 300, "the group to read everything", 0.002)
        seconds = time.perf_counter() - t0
        for m in members:
            m.stop.set()
        for m in members:
            m.join(30)
        return (records - before) / seconds

    one, four = single(), grouped(4)
    return {"records": records, "single_records_s": round(one, 1), "group_of_4_records_s": round(four, 1),
            "ratio": round(four / one, 3),
            "note": "group members are threads of one Python process (one GIL), timed from the moment the group "
                    "has formed"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_600_000)
    parser.add_argument("--session-timeout-ms", type=int, default=10_000)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"config": {"partitions": PARTITIONS, "records": args.records,
                                          "session_timeout_ms": args.session_timeout_ms}}
    root = tempfile.mkdtemp(prefix="raystream-groups-")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rs.init(data_dir=root, cluster="groupbench")
    try:
        rs.Admin().create_topic("events", partitions=PARTITIONS)
        table = value_table(args.records // PARTITIONS, 100)
        with rs.Producer(acks=1, max_request_size=16 << 20) as producer:
            for p in range(PARTITIONS):
                producer.send_batch("events", table, partition=p)
        for name, fn in (("join_range", lambda: bench_join("events", "range", args.session_timeout_ms)),
                         ("join_cooperative", lambda: bench_join("events", "cooperative-sticky",
                                                                 args.session_timeout_ms)),
                         ("death", lambda: bench_death("events", args.session_timeout_ms)),
                         ("throughput", lambda: bench_throughput("events", table.num_rows * PARTITIONS))):
            progress(f"{name} ...")
            try:
                results[name] = fn()
            except Exception as exc:  # reported in place
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            progress(f"{name}: {json.dumps(results[name])}")
    finally:
        rs.shutdown(stop_cluster=True)
        ray.shutdown()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
