"""Idempotence benchmark: producer throughput with ``enable_idempotence`` on vs off, in one run.

Prints ONE JSON object to stdout (progress on stderr). On an embedded local cluster (a Ray of its own,
``ray.init(address="local")``, then ``rs.init(data_dir=tmp)``), 1 partition, RF=1, acks="all", N records
of 100 bytes (default 300,000):

* ``send`` — per-record ``Producer.send`` then ``flush`` (as ``benchmarks/cluster.py``'s ``send``);
* ``send_batch`` — Arrow tables of ``--rows`` rows (default 100,000) until N records.

Each workload runs ``--rounds`` times per mode, alternating the order of the modes round by round (off/on,
then on/off, ...) so that drift on a busy machine does not favour one; each mode writes to a topic of its
own. Reported per mode: the median records/s (and every round's); ``ratio`` is median on / median off
(target >= 0.9). ``verified`` checks that every run wrote exactly N records (high watermark delta).

    .venv/bin/python benchmarks/idempotence.py                  # ~30 s
    .venv/bin/python benchmarks/idempotence.py --records 100000 --rounds 2
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
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workloads of benchmarks/cluster.py

import ray  # noqa: E402
from cluster import bench_send, bench_send_batch, progress  # noqa: E402

import raystream as rs  # noqa: E402

TARGET_RATIO = 0.9
MODES = ("off", "on")


def compare(name: str, rounds: int, run) -> dict[str, Any]:
    """``run(mode)`` ``rounds`` times per mode, alternating which mode goes first."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            out = run(mode)
            runs[mode].append(out)
            progress(f"{name} idempotence={mode} round {r + 1}: {out['records_s']:,.0f} records/s")
    result: dict[str, Any] = {}
    for mode in MODES:
        rates = [o["records_s"] for o in runs[mode]]
        result[mode] = {"records_s": round(statistics.median(rates)), "rounds_records_s": [round(x) for x in rates],
                        "verified": all(o["verified"] for o in runs[mode])}
    result["ratio"] = round(result["on"]["records_s"] / result["off"]["records_s"], 3)
    result["met"] = result["ratio"] >= TARGET_RATIO
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per send_batch table")
    parser.add_argument("--rounds", type=int, default=5, help="runs per mode and workload")
    parser.add_argument("--dir", default=None, help="parent of the temporary directory (default: /tmp)")
    args = parser.parse_args(argv)

    sys.stdout.flush()
    real_stdout = os.dup(1)  # Ray prints raylet warnings on fd 1: keep it on stderr until the JSON is out
    os.dup2(2, 1)
    started = time.perf_counter()
    results: dict[str, Any] = {"config": {
        "records": args.records, "record_size": 100, "rows_per_table": args.rows, "rounds": args.rounds,
        "partitions": 1, "replication_factor": 1, "acks": "all", "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}}
    root = tempfile.mkdtemp(prefix="raystream-idempotence-bench-", dir=args.dir)
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        rs.init(data_dir=os.path.join(root, "data"), cluster="idem-bench")
        try:
            admin = rs.Admin()
            for mode in MODES:
                admin.create_topic(f"send-{mode}", partitions=1, replication_factor=1)
                admin.create_topic(f"batch-{mode}", partitions=1, replication_factor=1)
            n = args.records

            def send(mode: str) -> dict[str, Any]:
                return bench_send(f"send-{mode}", n, acks="all", enable_idempotence=mode == "on")

            def send_batch(mode: str) -> dict[str, Any]:
                return bench_send_batch(f"batch-{mode}", n, args.rows, acks="all", enable_idempotence=mode == "on")

            results["send"] = compare("send", args.rounds, send)
            results["send_batch"] = compare("send_batch", args.rounds, send_batch)
        finally:
            rs.shutdown(stop_cluster=True)
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["targets"] = {f"{name}_on_vs_off_ratio": {"target": f">= {TARGET_RATIO}", "value": results[name]["ratio"],
                                                      "met": results[name]["met"]}
                          for name in ("send", "send_batch") if name in results}
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["config"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
    os.close(real_stdout)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
