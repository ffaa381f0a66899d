"""The README's main job: start an embedded raystream cluster on a local Ray, create a topic, produce and
consume — records and Arrow batches — then show what the storage engine recovers after a crash.

Run: ``python -m raystream.demo`` (no set-up beyond ``pip install``; data goes to a temporary directory).
"""

from __future__ import annotations

import os
import tempfile
import time

import pyarrow as pa

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep the demo's Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def cluster_demo(data_dir: str) -> None:
    import raystream as rs

    started = time.perf_counter()
    rs.init(data_dir=data_dir, cluster="demo", include_dashboard=False)
    print(f"embedded cluster up in {time.perf_counter() - started:.1f}s")
    admin = rs.Admin()
    admin.create_topic("orders", partitions=3, replication_factor=1, config={"retention.ms": 3_600_000})
    print("topics:", admin.list_topics())

    n = 20_000
    started = time.perf_counter()
    with rs.Producer(acks="all", linger_ms=5) as producer:
        for i in range(n):
            producer.send("orders", value=f'{{"order": {i}, "amount": {i % 97}}}'.encode(),
                          key=f"customer-{i % 100}".encode())
        producer.flush()
        table = pa.table({"key": pa.array([b"customer-7"] * 5_000),
                          "value": pa.array([b'{"bulk": true}'] * 5_000)})
        producer.send_batch("orders", table).result(timeout=60)
    print(f"produced {n} records one by one and {table.num_rows} as one Arrow batch "
          f"in {time.perf_counter() - started:.2f}s")

    for p in admin.describe_topic("orders").partitions:
        print(f"  partition {p.partition}: leader {str(p.leader)[:8]} isr={len(p.isr)} "
              f"high_watermark={p.high_watermark}")

    total = n + table.num_rows
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition("orders", p) for p in range(3)])
        first = consumer.poll(timeout=5)[:3]
        for r in first:
            print(f"  {r.topic}-{r.partition}@{r.offset} key={r.key!r} value={r.value!r}")
        consumer.seek_to_beginning()
        rows = 0
        deadline = time.monotonic() + 60
        while rows < total and time.monotonic() < deadline:
            rows += consumer.poll_arrow(timeout=1).num_rows
    print(f"consumed {rows} of {total} records back as Arrow tables")
    rs.shutdown()
    if rows != total:
        raise SystemExit(f"expected {total} records, consumed {rows}")


def storage_demo(data_dir: str) -> None:
    """A crash and what recovery keeps: every intact batch, never a torn one."""
    from raystream.clock import now_ms
    from raystream.record import RECORD_SCHEMA
    from raystream.storage.log import Log

    log = Log(f"{data_dir}/crash-demo-0", now=now_ms())
    batch = pa.record_batch([pa.array([b"k"] * 100), pa.array([b"v"] * 100),
                             pa.nulls(100, RECORD_SCHEMA.field("headers").type)], schema=RECORD_SCHEMA)
    for _ in range(10):
        log.append(batch, now=now_ms())
    segment = log.active_segment.path
    log._simulate_crash()  # as if the process died mid-write: no clean-shutdown marker ...
    os.truncate(segment, segment.stat().st_size - 100)  # ... and the last batch only half on disk
    log = Log(f"{data_dir}/crash-demo-0", now=now_ms())
    report = log.recovery_report
    print(f"after a crash: log end offset {log.log_end_offset} (900 intact records kept), "
          f"dropped {report.dropped_batches} torn batch ({report.truncated_bytes} bytes)")
    log.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="raystream-demo-") as tmp:
        cluster_demo(tmp)
        storage_demo(tmp)


if __name__ == "__main__":
    main()
