"""Cluster benchmark: producer / consumer throughput, end-to-end latency, replication cost, topic start-up
time and replica capacity of raystream on Ray, all in one run.

Prints ONE JSON object to stdout; progress goes to stderr. Every section runs in its own try/except: a
failing section reports ``{"error": "..."}`` and the others still run. Data lives in temporary directories
under /tmp, removed at the end; every Ray process started here is stopped here.

Sections (default sizes; ``--records`` changes N):

* on an embedded local cluster (a Ray of its own, ``ray.init(address="local")``, then
  ``rs.init(data_dir=tmp)``), 1 partition, RF=1,
  acks=1, N = 1,000,000 records of 100 bytes:
  ``send`` (per-record ``Producer.send``, then ``flush``; records/s), ``send_batch`` (Arrow tables of
  100,000 rows with a ``value`` column of 100-byte binaries), ``poll`` and ``poll_arrow`` (reading those
  two topics back from the earliest offset), and ``latency``: 1,000 records/s for 10 s with acks=1 and
  linger_ms=0, reporting send→ack latency (``add_done_callback``) and end-to-end latency (consumer receive
  time − record timestamp, ms resolution; and − the send time carried in the payload, ns resolution).
  ``send_batch`` and ``poll_arrow`` also report a ``kafka_sizes`` run (Kafka's 1 MiB request and fetch
  sizes, a topic with Kafka's ``max.message.bytes``) next to the defaults the targets are judged on.
* ``capacity`` (same single node): create RF=1 partitions in steps (25, 50, 100, 200 replicas in total),
  producing one record to every partition after each step, until 200, a failure, or 5 minutes; reports the
  largest step reached and the memory used (``/proc/meminfo``; the replicas' RSS/PSS from ``/proc``).
* on a 3-node ``ray.cluster_utils.Cluster`` (each node with its own ``RAYSTREAM_DATA_DIR``):
  ``replication`` — RF=3 acks=all vs RF=1 acks=1 throughput (``send`` and ``send_batch``) in the same run,
  and ``topic_ready`` — seconds until a new 10-partition RF=3 topic is created and a produce (acks=all) to
  each partition succeeded.

    .venv/bin/python benchmarks/cluster.py            # full run (a few minutes)
    .venv/bin/python benchmarks/cluster.py --quick    # small sizes, < 60 s; no capacity / multi-node
    .venv/bin/python benchmarks/cluster.py --quick --multinode

``targets`` compares each headline number with its floor (``met``) and goal (``goal_met``) from issue 14;
both are null when the section failed or did not run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402

import raystream as rs  # noqa: E402
from raystream.cli_perf import latency_stats, value_table  # noqa: E402

MIB = 1 << 20
RECORD_SIZE = 100
#: Kafka's defaults for max.request.size / max.partition.fetch.bytes and max.message.bytes (raystream's
#: are 16 MiB: raystream.config.DATA_PATH_BYTES); the ``kafka_sizes`` runs show what the difference buys.
KAFKA_BYTES = MIB
NODE_OBJECT_STORE_BYTES = 2 << 30  # per node of the 3-node Cluster
KAFKA_MAX_MESSAGE_BYTES = MIB + 12
#: Issue 14's table: (direction, floor, goal) per headline figure; ``met`` judges the floor, ``goal_met``
#: the goal. Memory per replica is the replicas' average PSS at the capacity probe's last step.
TARGETS = {
    "send_records_s": (">=", 500_000, 1_000_000),
    "send_batch_records_s": (">=", 3_000_000, 5_000_000),
    "poll_records_s": (">=", 1_000_000, 1_500_000),
    "poll_arrow_records_s": (">=", 5_000_000, 10_000_000),
    "e2e_p99_ms": ("<=", 5.0, 1.0),
    "rf3_acks_all_vs_rf1_ratio": (">=", 0.5, 0.8),
    "topic_ready_s": ("<=", 5.0, 2.0),
    "replica_memory_mib": ("<=", 60.0, 40.0),
}
_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[cluster-bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def section(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one section; its result (or ``{"error": ...}``) goes to ``results[name]``."""
    progress(f"{name} ...")
    started = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:  # one failing section must not lose the others
        traceback.print_exc(file=sys.stderr)
        value = {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(value, dict):
        value.setdefault("section_s", round(time.perf_counter() - started, 2))
    results[name] = value
    progress(f"{name}: {json.dumps(value)[:400]}")
    return value


def rate(records: int, seconds: float, record_size: int = RECORD_SIZE) -> dict[str, float]:
    return {"records": records, "seconds": round(seconds, 3), "records_s": round(records / seconds, 1),
            "mb_s": round(records * record_size / MIB / seconds, 2)}


def high_watermark(topic: str, partition: int = 0) -> int:
    return rs.Admin().describe_topic(topic).partitions[partition].high_watermark


# -- producer / consumer workloads --------------------------------------------------------------------------
def bench_send(topic: str, n: int, acks: Any = 1, **producer_config: Any) -> dict[str, Any]:
    """Per-record ``send()`` of ``n`` 100-byte values, then ``flush``; futures are dropped (no callbacks)."""
    value = np.random.default_rng(0).bytes(RECORD_SIZE)
    before = high_watermark(topic)
    with rs.Producer(acks=acks, **producer_config) as producer:
        producer.send(topic, value=value).result(timeout=60)  # warm-up: metadata, replica handle, first request
        send = producer.send
        started = time.perf_counter()
        for _ in range(n):
            send(topic, value)
        loop_s = time.perf_counter() - started
        producer.flush()
        seconds = time.perf_counter() - started
    written = high_watermark(topic) - before - 1
    out = rate(n, seconds)
    out.update(send_loop_records_s=round(n / loop_s, 1), acks=str(acks), verified=written == n)
    return out


def bench_send_batch(topic: str, n: int, rows: int, acks: Any = 1, **producer_config: Any) -> dict[str, Any]:
    """``send_batch`` of Arrow tables of ``rows`` rows (``value``: 100-byte binaries) until ``n`` records."""
    table = value_table(min(rows, n), RECORD_SIZE)
    before = high_watermark(topic)
    with rs.Producer(acks=acks, **producer_config) as producer:
        producer.send_batch(topic, table.slice(0, 10)).result(timeout=60)  # warm-up
        started = time.perf_counter()
        futures, sent = [], 0
        while sent < n:
            piece = table.slice(0, min(table.num_rows, n - sent))
            futures.append(producer.send_batch(topic, piece))
            sent += piece.num_rows
        requests = sum(len(f.result(timeout=600)) for f in futures)
        seconds = time.perf_counter() - started
    written = high_watermark(topic) - before - 10
    out = rate(n, seconds)
    out.update(rows_per_table=table.num_rows, produce_requests=requests, acks=str(acks), verified=written == n)
    return out


def bench_consume(topic: str, n: int, arrow: bool, **consumer_config: Any) -> dict[str, Any]:
    """Read ``n`` records of partition 0 from the earliest offset with ``poll`` or ``poll_arrow``."""
    with rs.Consumer(auto_offset_reset="earliest", **consumer_config) as consumer:
        consumer.assign([rs.TopicPartition(topic, 0)])
        count, calls = 0, 0
        started = time.perf_counter()
        deadline = started + 600
        while count < n and time.perf_counter() < deadline:
            got = consumer.poll_arrow(timeout=1.0).num_rows if arrow else len(consumer.poll(timeout=1.0))
            count += got
            calls += 1
        seconds = time.perf_counter() - started
    out = rate(count, seconds)
    out.update(poll_calls=calls, complete=count >= n)
    return out


def bench_latency(topic: str, per_sec: int, seconds: float, warmup_s: float = 1.0) -> dict[str, Any]:
    """Paced sends (acks=1, linger_ms=0) with a consumer thread reading the partition meanwhile.

    send→ack: ``add_done_callback`` − ``send``; e2e (payload): consumer receive − the ``perf_counter_ns``
    the producer wrote into the value just before ``send``; e2e (timestamp): receive wall-clock ms − the
    record's timestamp (CreateTime, whole ms taken at ``send``: +0..1 ms of rounding)."""
    tp = rs.TopicPartition(topic, 0)
    stop = threading.Event()
    received: list[tuple[int, float, bytes, int]] = []  # (offset, receive wall ms, value, receive perf ns)
    ready = threading.Event()
    failures: list[BaseException] = []

    def consume() -> None:
        try:
            with rs.Consumer(auto_offset_reset="latest", fetch_max_wait_ms=500) as consumer:
                consumer.assign([tp])
                consumer.position(tp)
                ready.set()
                while not stop.is_set():
                    records = consumer.poll(timeout=0.1)
                    now_ns, now_ms = time.perf_counter_ns(), time.time_ns() / 1e6
                    received.extend((r.offset, now_ms - r.timestamp, r.value, now_ns) for r in records)
        except BaseException as exc:  # reported below
            failures.append(exc)
            ready.set()

    thread = threading.Thread(target=consume, name="latency-consumer", daemon=True)
    thread.start()
    if not ready.wait(60) or failures:
        raise RuntimeError(f"latency consumer did not start: {failures[:1]}")
    pad = b"x" * (RECORD_SIZE - 8)
    total = int(per_sec * (seconds + warmup_s))
    warm = int(per_sec * warmup_s)
    acks: list[int | None] = [None] * total
    interval_ns = 1e9 / per_sec

    def acked(i: int, t0: int, future: Any) -> None:
        acks[i] = time.perf_counter_ns() - t0

    with rs.Producer(acks=1, linger_ms=0) as producer:
        producer.send(topic, value=b"warm-up").result(timeout=60)
        start = time.perf_counter_ns()
        for i in range(total):
            due = start + i * interval_ns
            wait_ns = due - time.perf_counter_ns()
            if wait_ns > 0:
                time.sleep(wait_ns / 1e9)
            t0 = time.perf_counter_ns()
            producer.send(topic, value=struct.pack("<q", t0) + pad).add_done_callback(
                functools.partial(acked, i, t0))
        actual_rate = total / ((time.perf_counter_ns() - start) / 1e9)
        producer.flush()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(1 for r in received if len(r[2]) == RECORD_SIZE) < total:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    if failures:
        raise failures[0]
    mine = [r for r in received if len(r[2]) == RECORD_SIZE]
    measured = mine[warm:]
    e2e_payload = [recv_ns - struct.unpack_from("<q", value)[0] for _, _, value, recv_ns in measured]
    e2e_ts = [lag_ms * 1e6 for _, lag_ms, _, _ in measured]
    ack = [a for a in acks[warm:] if a is not None]

    def summary(values: list) -> dict[str, float]:
        s = latency_stats(values)
        return {"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "p99_9_ms": s["p99_9_ms"],
                "avg_ms": s["avg_latency_ms"], "max_ms": s["max_latency_ms"]}

    return {"target_rate": per_sec, "actual_rate": round(actual_rate, 1), "seconds": seconds,
            "warmup_records": warm, "records": total - warm, "received": len(measured),
            "acks": "1", "linger_ms": 0, "send_ack": summary(ack), "e2e_payload": summary(e2e_payload),
            "e2e_timestamp": summary(e2e_ts)}


# -- capacity -------------------------------------------------------------------------------------------------
def meminfo_used_mib() -> float:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0])  # kB
    return round((info["MemTotal"] - info["MemAvailable"]) / 1024, 1)


def replica_pids(cluster: str) -> list[int]:
    """PIDs of this raystream cluster's live replica actors (from Ray's actor table, not ``ps``)."""
    prefix = f"{cluster}/replica/"
    actors = ray._private.state.actors(actor_state_name="ALIVE").values()
    return [a["Pid"] for a in actors if a["ActorClassName"] == "PartitionReplica" and a["Name"].startswith(prefix)
            and a["Pid"]]


def process_memory_mib(pids: list[int]) -> dict[str, float]:
    rss = pss = 0
    counted = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        counted += 1
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    n = max(counted, 1)
    return {"processes": counted, "rss_mib_avg": round(rss / 1024 / n, 1), "pss_mib_avg": round(pss / 1024 / n, 1),
            "pss_mib_total": round(pss / 1024, 1)}


def mem_total_mib() -> float:
    return int(Path("/proc/meminfo").read_text().split()[1]) / 1024


def bench_capacity(cluster: str, steps: list[int], budget_s: float, mem_limit: float = 0.85) -> dict[str, Any]:
    """Grow the number of RF=1 partition replicas on this node step by step; after each step produce one
    record to every partition. Stops at the last step, a failure, the time budget, or when the next step
    would push memory use (extrapolated from the last step) above ``mem_limit`` of MemTotal."""
    started = time.monotonic()
    baseline = meminfo_used_mib()
    out: dict[str, Any] = {"steps": [], "max_replicas": 0, "mem_used_mib_before": baseline,
                           "mem_total_mib": round(mem_total_mib())}
    topics: list[tuple[str, int]] = []
    total = 0
    per_replica_mib = 0.0
    producer = rs.Producer(acks=1, linger_ms=0)
    try:
        for target in steps:
            left = budget_s - (time.monotonic() - started)
            if left <= 0:
                out["stopped"] = f"time budget of {budget_s:.0f} s"
                break
            projected = meminfo_used_mib() + per_replica_mib * (target - total)
            if projected > mem_limit * mem_total_mib():
                out["stopped"] = (f"memory guard: {target} replicas would need ~{projected:.0f} MiB "
                                  f"(> {mem_limit:.0%} of MemTotal)")
                break
            step: dict[str, Any] = {"replicas": target}
            try:
                t0 = time.perf_counter()
                name = f"cap-{len(topics)}"
                # the step may use the rest of the budget (the default 60 s admin timeout is too short here)
                admin = rs.Admin(request_timeout_ms=int(max(left, 60) * 1000))
                admin.create_topic(name, partitions=target - total, replication_factor=1)
                topics.append((name, target - total))
                step["create_s"] = round(time.perf_counter() - t0, 2)
                t0 = time.perf_counter()
                futures = [producer.send(t, value=b"x", partition=p) for t, count in topics for p in range(count)]
                producer.flush(timeout=120)
                ok = sum(1 for f in futures if f.exception(timeout=0) is None)
                step["produce_s"] = round(time.perf_counter() - t0, 2)
                step["produce_ok"] = f"{ok}/{len(futures)}"
                step["mem_used_mib"] = meminfo_used_mib()
                per_replica_mib = max(per_replica_mib, (step["mem_used_mib"] - baseline) / target)
                step["mem_delta_mib_per_replica"] = round((step["mem_used_mib"] - baseline) / target, 1)
                step.update(process_memory_mib(replica_pids(cluster)))
                out["steps"].append(step)
                progress(f"capacity step: {step}")
                if ok != len(futures):
                    out["stopped"] = f"produce failed on {len(futures) - ok} partition(s) at {target} replicas"
                    break
                total = target
                out["max_replicas"] = total
            except Exception as exc:
                step["error"] = f"{type(exc).__name__}: {exc}"
                step["after_s"] = round(time.perf_counter() - t0, 1)
                out["steps"].append(step)
                out["stopped"] = f"failure at {target} replicas"
                break
        else:
            out["stopped"] = f"reached the {steps[-1]}-replica cap"
    finally:
        producer.close(timeout=30)
    out["seconds"] = round(time.monotonic() - started, 1)
    # No per-topic delete: the embedded cluster's shutdown right after stops every replica anyway.
    return out


# -- multi-node ------------------------------------------------------------------------------------------------
def bench_replication(n: int, rows: int) -> dict[str, Any]:
    admin = rs.Admin()
    admin.create_topic("rf1", partitions=1, replication_factor=1)
    admin.create_topic("rf3", partitions=1, replication_factor=3, config={"min.insync.replicas": 2})
    admin.create_topic("rf1-batch", partitions=1, replication_factor=1)
    admin.create_topic("rf3-batch", partitions=1, replication_factor=3, config={"min.insync.replicas": 2})
    out: dict[str, Any] = {"records": n}
    out["rf1_send"] = bench_send("rf1", n, acks=1)
    progress(f"replication rf1 send: {out['rf1_send']}")
    out["rf3_send"] = bench_send("rf3", n, acks="all")
    progress(f"replication rf3 send: {out['rf3_send']}")
    out["send_ratio"] = round(out["rf3_send"]["records_s"] / out["rf1_send"]["records_s"], 3)
    out["rf1_send_batch"] = bench_send_batch("rf1-batch", n, rows, acks=1)
    out["rf3_send_batch"] = bench_send_batch("rf3-batch", n, rows, acks="all")
    out["send_batch_ratio"] = round(out["rf3_send_batch"]["records_s"] / out["rf1_send_batch"]["records_s"], 3)
    isr = {p.partition: len(p.isr) for p in admin.describe_topic("rf3").partitions}
    out["rf3_isr_size_after"] = isr
    return out


def bench_topic_ready(partitions: int = 10, rf: int = 3) -> dict[str, Any]:
    admin = rs.Admin()
    t0 = time.perf_counter()
    admin.create_topic("ready", partitions=partitions, replication_factor=rf, config={"min.insync.replicas": 2})
    created = time.perf_counter() - t0
    with rs.Producer(acks="all", linger_ms=0) as producer:
        futures = [producer.send("ready", value=b"ready", partition=p) for p in range(partitions)]
        offsets = [f.result(timeout=120).offset for f in futures]
    ready = time.perf_counter() - t0
    return {"partitions": partitions, "replication_factor": rf, "create_topic_s": round(created, 3),
            "ready_s": round(ready, 3), "all_produced": all(o >= 0 for o in offsets)}


def run_multinode(results: dict[str, Any], n: int, rows: int, root: str) -> None:
    from ray.cluster_utils import Cluster

    dirs = [os.path.join(root, f"node{i}") for i in range(3)]
    for d in dirs:
        os.makedirs(d)
    progress("starting a 3-node ray.cluster_utils.Cluster ...")
    # Each node's object store as a real node's would be (Ray gives 30 % of RAM by default), not
    # cluster_utils' 150 MiB test default: with 16 MiB requests and pushes that small a store spills to disk.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": NODE_OBJECT_STORE_BYTES,
        "env_vars": {"RAYSTREAM_DATA_DIR": dirs[0]}})
    try:
        for d in dirs[1:]:
            cluster.add_node(num_cpus=1, object_store_memory=NODE_OBJECT_STORE_BYTES,
                             env_vars={"RAYSTREAM_DATA_DIR": d})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            t0 = time.perf_counter()
            rs.init(cluster="bench3", data_dir=dirs[0])
            results["multinode_init_s"] = round(time.perf_counter() - t0, 2)
            try:
                section(results, "replication", lambda: bench_replication(n, rows))
                section(results, "topic_ready", bench_topic_ready)
            finally:
                rs.shutdown(stop_cluster=True)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


# -- main ---------------------------------------------------------------------------------------------------------
def run_local(results: dict[str, Any], args: argparse.Namespace, root: str) -> None:
    data_dir = os.path.join(root, "local")
    t0 = time.perf_counter()
    # address="local": always a Ray of our own (ray.init(address=None) would join a cluster that
    # `ray start` left running on this machine); rs.init then uses this process's Ray.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rs.init(data_dir=data_dir, cluster="bench")
    results["local_init_s"] = round(time.perf_counter() - t0, 2)
    try:
        admin = rs.Admin()
        kafka_topic = {"max.message.bytes": KAFKA_MAX_MESSAGE_BYTES}
        for name, config in (("send", None), ("batch", None), ("batch-kafka", kafka_topic), ("latency", None)):
            admin.create_topic(name, partitions=1, replication_factor=1, config=config)
        n, rows = args.records, args.rows
        kafka_producer = {"max_request_size": KAFKA_BYTES, "buffer_memory": 32 * MIB}
        kafka_consumer = {"max_partition_fetch_bytes": KAFKA_BYTES}
        section(results, "send", lambda: bench_send("send", n, acks=1))

        def send_batch() -> dict[str, Any]:
            out = bench_send_batch("batch", n, rows, acks=1)
            out["kafka_sizes"] = bench_send_batch("batch-kafka", n, rows, acks=1, **kafka_producer)
            out["kafka_sizes"]["config"] = {**kafka_producer, **kafka_topic}
            return out

        section(results, "send_batch", send_batch)
        section(results, "poll", lambda: bench_consume("send", n, arrow=False))

        def poll_arrow() -> dict[str, Any]:
            out = bench_consume("batch", n, arrow=True)
            out["kafka_sizes"] = bench_consume("batch-kafka", n, arrow=True, **kafka_consumer)
            out["kafka_sizes"]["config"] = kafka_consumer
            return out

        section(results, "poll_arrow", poll_arrow)
        section(results, "latency", lambda: bench_latency("latency", args.latency_rate, args.latency_seconds))
        if args.capacity:
            section(results, "capacity", lambda: bench_capacity("bench", args.capacity_steps, args.capacity_budget_s))
    finally:
        t0 = time.perf_counter()
        try:
            rs.shutdown(stop_cluster=True)  # stops every replica (logs closed cleanly)
        finally:
            ray.shutdown()
        results["local_shutdown_s"] = round(time.perf_counter() - t0, 2)


def judge(results: dict[str, Any]) -> dict[str, Any]:
    def get(*path: str) -> Any:
        value: Any = results
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    rep = results.get("replication")
    ratio = None
    if isinstance(rep, dict) and "send_ratio" in rep:
        ratio = min(rep["send_ratio"], rep.get("send_batch_ratio", rep["send_ratio"]))
    values = {
        "send_records_s": get("send", "records_s"),
        "send_batch_records_s": get("send_batch", "records_s"),
        "poll_records_s": get("poll", "records_s"),
        "poll_arrow_records_s": get("poll_arrow", "records_s"),
        "e2e_p99_ms": get("latency", "e2e_payload", "p99_ms"),
        "rf3_acks_all_vs_rf1_ratio": ratio,
        "topic_ready_s": get("topic_ready", "ready_s"),
        "replica_memory_mib": _last_step_pss(results.get("capacity")),
    }
    out = {}
    for name, (op, floor, goal) in TARGETS.items():
        value = values[name]
        out[name] = {"value": value, "floor": f"{op} {floor}", "met": _judge(value, op, floor),
                     "goal": f"{op} {goal}", "goal_met": _judge(value, op, goal)}
    return out


def _judge(value: float | None, op: str, bound: float) -> bool | None:
    return None if value is None else (value >= bound if op == ">=" else value <= bound)


def _last_step_pss(capacity: Any) -> float | None:
    steps = capacity.get("steps") if isinstance(capacity, dict) else None
    ok = [s for s in steps or () if "pss_mib_avg" in s and s.get("processes")]
    return ok[-1]["pss_mib_avg"] if ok else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s); skips capacity and "
                        "multi-node unless --multinode")
    parser.add_argument("--records", type=int, default=None, help="records per throughput test (1,000,000)")
    parser.add_argument("--rows", type=int, default=None, help="rows per send_batch table (100,000)")
    parser.add_argument("--multinode", action="store_true", help="with --quick: run the 3-node sections too")
    parser.add_argument("--no-multinode", action="store_true", help="skip the 3-node sections")
    parser.add_argument("--no-capacity", action="store_true", help="skip the capacity probe")
    parser.add_argument("--latency-rate", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=float, default=None)
    parser.add_argument("--capacity-steps", type=lambda s: [int(x) for x in s.split(",")],
                        default=[25, 50, 100, 200])
    parser.add_argument("--capacity-budget-s", type=float, default=300.0)
    parser.add_argument("--dir", default=None, help="parent of the temporary directory (default: /tmp)")
    args = parser.parse_args(argv)
    args.records = args.records or (50_000 if args.quick else 1_000_000)
    args.rows = args.rows or (10_000 if args.quick else 100_000)
    args.latency_seconds = args.latency_seconds or (2.0 if args.quick else 10.0)
    args.capacity = not args.quick and not args.no_capacity
    multinode = (args.multinode or not args.quick) and not args.no_multinode

    # Ray prints raylet warnings on this process's stdout: keep fd 1 on stderr until the JSON is printed.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    started = time.perf_counter()
    results: dict[str, Any] = {"config": {
        "records": args.records, "record_size": RECORD_SIZE, "rows_per_table": args.rows, "partitions": 1,
        "replication_factor": 1, "acks": "1", "quick": args.quick, "cpus": os.cpu_count(),
        "mem_total_mib": round(mem_total_mib()),
        "ray": ray.__version__, "python": platform.python_version(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}}
    root = tempfile.mkdtemp(prefix="raystream-cluster-bench-", dir=args.dir)
    try:
        try:
            run_local(results, args, root)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            results["local_error"] = f"{type(exc).__name__}: {exc}"
        if ray.is_initialized():
            ray.shutdown()
        if multinode:
            try:
                run_multinode(results, args.records, args.rows, root)
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                results["multinode_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["targets"] = judge(results)
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["config"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
    os.close(real_stdout)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
