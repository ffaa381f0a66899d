"""Transactions benchmark: transactional vs plain idempotent producer throughput, and commit latency.

Prints ONE JSON object to stdout (progress on stderr). On an embedded local cluster (a Ray of its own,
``ray.init(address="local")``, then ``rs.init(data_dir=tmp)``), 1 partition, RF=1, acks="all", records of
100 bytes:

* ``idempotent`` — ``--records`` records (default 300,000) with per-record ``send`` then ``flush``;
* ``transactional`` — the same records in transactions of ``--per-transaction`` records (default 10,000):
  ``begin_transaction``, the sends, ``commit_transaction``; ``ratio`` = transactional / idempotent
  records/s (target: a transaction of 10,000 records costs ≤ 10 % more, i.e. ratio ≥ 0.9);
* ``commit_ms`` — p50 / p99 of ``commit_transaction`` alone for transactions of one record (the fixed cost
  of a transaction: flush, EndTxn, marker written and replicated, state recorded), ``--commits`` times;
* ``verified``: a read_committed consumer reads back exactly the committed records.

Rounds alternate the modes' order (``--rounds``, medians reported).

    .venv/bin/python benchmarks/transactions.py              # ~1 minute
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
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers of benchmarks/cluster.py

import numpy as np  # noqa: E402
import ray  # noqa: E402
from cluster import RECORD_SIZE, bench_send, high_watermark, progress  # noqa: E402

import raystream as rs  # noqa: E402

TARGET_RATIO = 0.9


def bench_transactional(topic: str, n: int, per_txn: int) -> dict[str, Any]:
    value = np.random.default_rng(0).bytes(RECORD_SIZE)
    before = high_watermark(topic)
    with rs.Producer(transactional_id=f"bench-{uuid.uuid4().hex[:8]}") as producer:
        producer.init_transactions()
        started = time.perf_counter()
        sent = transactions = 0
        while sent < n:
            producer.begin_transaction()
            count = min(per_txn, n - sent)
            send = producer.send
            for _ in range(count):
                send(topic, value)
            producer.commit_transaction()
            sent += count
            transactions += 1
        seconds = time.perf_counter() - started
    written = high_watermark(topic) - before  # records + one marker per transaction
    return {"records_s": n / seconds, "seconds": round(seconds, 3), "transactions": transactions,
            "verified": written == n + transactions}


def bench_commit_latency(topic: str, commits: int) -> dict[str, Any]:
    times = []
    with rs.Producer(transactional_id=f"bench-{uuid.uuid4().hex[:8]}") as producer:
        producer.init_transactions()
        for _ in range(commits):
            producer.begin_transaction()
            producer.send(topic, value=b"x")
            started = time.perf_counter()
            producer.commit_transaction()
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": round(times[len(times) // 2], 2), "p99": round(times[int(len(times) * 0.99) - 1], 2),
            "commits": commits}


def read_committed_count(topic: str, expected: int, timeout_s: float = 60) -> int:
    got = 0
    with rs.Consumer(isolation_level="read_committed", auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic, 0)])
        deadline = time.monotonic() + timeout_s
        while got < expected and time.monotonic() < deadline:
            got += consumer.poll_arrow(timeout=0.5).num_rows
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--per-transaction", type=int, default=10_000)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="parent of the temporary directory (default: /tmp)")
    args = parser.parse_args(argv)
    sys.stdout.flush()
    real_stdout = os.dup(1)  # Ray prints raylet warnings on fd 1: keep it on stderr until the JSON is out
    os.dup2(2, 1)
    root = tempfile.mkdtemp(prefix="raystream-txn-bench-", dir=args.dir)
    results: dict[str, Any] = {"config": {"records": args.records, "per_transaction": args.per_transaction,
                                          "record_size": RECORD_SIZE, "rounds": args.rounds, "partitions": 1,
                                          "replication_factor": 1, "acks": "all", "cpus": os.cpu_count()}}
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        rs.init(data_dir=root, cluster="bench-txn")
        admin = rs.Admin()
        runs: dict[str, list[dict[str, Any]]] = {"idempotent": [], "transactional": []}
        for r in range(args.rounds):
            for mode in (("idempotent", "transactional") if r % 2 == 0 else ("transactional", "idempotent")):
                topic = f"{mode}-{r}"
                admin.create_topic(topic)
                out = (bench_send(topic, args.records, acks="all") if mode == "idempotent"
                       else bench_transactional(topic, args.records, args.per_transaction))
                runs[mode].append(out)
                progress(f"{mode} round {r + 1}: {out['records_s']:,.0f} records/s")
        for mode, outs in runs.items():
            results[mode] = {"records_s": round(statistics.median(o["records_s"] for o in outs)),
                             "verified": all(o["verified"] for o in outs)}
        results["ratio"] = round(results["transactional"]["records_s"] / results["idempotent"]["records_s"], 3)
        results["met"] = results["ratio"] >= TARGET_RATIO
        admin.create_topic("commits")
        results["commit_ms"] = bench_commit_latency("commits", args.commits)
        results["verified_read_committed"] = read_committed_count("transactional-0", args.records) == args.records
    finally:
        rs.shutdown(stop_cluster=True)
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    os.dup2(real_stdout, 1)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
