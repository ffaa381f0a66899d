"""What recording metrics (``raystream.metrics``) costs the data path: the same workloads with the replicas'
metric recording on and stubbed out, in alternating rounds.

Each round starts an embedded cluster of its own (``ray.init(address="local")``, 1 partition, RF=1, acks=1);
"off" rounds give Ray a ``worker_process_setup_hook`` that replaces every :class:`ReplicaMetrics` recording
method with a no-op in every worker (checked in the replica's own process), so the difference is the cost of
the recording calls themselves. Workloads: per-record ``send()`` of N 100-byte records (batched by the
producer), Arrow ``send_batch`` (tables of 10,000 rows), one-record-per-request ``send().result()`` with
``linger_ms=0`` (the most per-request overhead there is), and ``poll`` of the N records back. Prints one JSON
object: the median of each mode's rounds and the on/off ``ratio`` per workload (1.0: no cost).

    .venv/bin/python benchmarks/metrics_overhead.py [--records N] [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

import raystream as rs  # noqa: E402
from raystream.protocol import ACTOR_NAMESPACE, replica_actor_name  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from cluster import bench_consume, bench_send, bench_send_batch  # noqa: E402

_RECORDING = ("produced", "fetched", "produce_latency", "fetch_latency", "log_size")


def metrics_off() -> None:
    """Ray worker setup hook: ReplicaMetrics records nothing in this process."""
    from raystream import metrics

    def nothing(self, *args):
        return None

    for name in _RECORDING:
        setattr(metrics.ReplicaMetrics, name, nothing)


def recording_state(cluster: str) -> str:
    replica = ray.get_actor(replica_actor_name(cluster, "send", 0, 0), namespace=ACTOR_NAMESPACE)
    return ray.get(replica.__ray_call__.remote(lambda self: self.metrics.produced.__name__), timeout=30)


def bench_requests(topic: str, n: int) -> dict[str, float]:
    """``n`` produce requests of one record each, one at a time (acks=1, linger_ms=0)."""
    with rs.Producer(acks=1, linger_ms=0) as producer:
        producer.send(topic, value=b"w").result(timeout=60)
        started = time.perf_counter()
        for _ in range(n):
            producer.send(topic, value=b"x" * 100).result(timeout=60)
        seconds = time.perf_counter() - started
    return {"requests_s": round(n / seconds, 1)}


def one_round(on: bool, args: argparse.Namespace, root: str) -> dict[str, float]:
    runtime_env = {} if on else {"worker_process_setup_hook": metrics_off}
    ray.init(address="local", include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    data_dir = tempfile.mkdtemp(dir=root)
    try:
        rs.init(data_dir=data_dir, cluster="overhead")
        admin = rs.Admin()
        for name in ("send", "batch", "requests"):
            admin.create_topic(name, partitions=1, replication_factor=1)
        out = {"send": bench_send("send", args.records, acks=1)["records_s"],
               "send_batch": bench_send_batch("batch", args.records, 10_000, acks=1)["records_s"],
               "requests": bench_requests("requests", args.requests)["requests_s"],
               "poll": bench_consume("send", args.records, arrow=False)["records_s"]}
        state = recording_state("overhead")
        assert (state == "produced") == on, f"recording {'on' if on else 'off'} but replica has {state!r}"
        return out
    finally:
        try:
            rs.shutdown(stop_cluster=True)
        finally:
            ray.shutdown()
            shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="raystream-metrics-bench-")
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    try:
        for i in range(args.rounds):
            for on in ((True, False) if i % 2 == 0 else (False, True)):
                print(f"round {i + 1}/{args.rounds}: metrics {'on' if on else 'off'}", file=sys.stderr)
                runs["on" if on else "off"].append(one_round(on, args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    medians = {mode: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} for mode, rounds in runs.items()}
    result = {"records": args.records, "requests": args.requests, "rounds": args.rounds, "median": medians,
              "ratio": {k: round(medians["on"][k] / medians["off"][k], 3) for k in medians["on"]}, "runs": runs}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
