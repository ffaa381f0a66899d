"""A consumer-group member in its own process, for the group checker's multi-process scenarios.

    python group_member_process.py ADDRESS CLUSTER GROUP TOPIC STRATEGY JOURNAL STOP_FILE

Joins GROUP on TOPIC and polls (0.2 s) until STOP_FILE exists, committing after every poll that returned
records; journals every poll and commit to JOURNAL (tests/group_checker.py) as it goes, so a SIGKILL leaves
its history behind. Prints "ready" once it has been assigned partitions.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: group_checker

import ray  # noqa: E402
from group_checker import GroupHistory, poll_and_commit  # noqa: E402

import raystream as rs  # noqa: E402


def main(address: str, cluster: str, group: str, topic: str, strategy: str, journal: str, stop_file: str) -> None:
    ray.init(address=address, log_to_driver=False)
    rs.init(cluster=cluster, create=False)
    history = GroupHistory(journal=journal)
    label = f"pid{os.getpid()}"
    with rs.Consumer(group_id=group, session_timeout_ms=3000, heartbeat_interval_ms=300,
                     max_poll_interval_ms=10000, auto_offset_reset="earliest", enable_auto_commit=False,
                     max_poll_records=50, partition_assignment_strategy=[strategy]) as consumer:
        consumer.subscribe([topic])
        ready = False
        while not os.path.exists(stop_file):
            poll_and_commit(label, consumer, history)
            if not ready and consumer.assignment():
                print("ready", flush=True)
                ready = True
    history.close()


if __name__ == "__main__":
    main(*sys.argv[1:8])
