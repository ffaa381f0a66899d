"""The README's main job: a short tour of raystream.

Until the cluster layer lands this demonstrates the storage engine every partition replica owns: it
creates a partition log, appends Kafka-style records and Arrow batches, reads them back (with column
projection), crashes and recovers, and prints what happened.
"""

from __future__ import annotations

import tempfile
import time

import pyarrow as pa

from raystream.config import TopicConfig
from raystream.storage.log import Log
from raystream.storage.records import RECORD_SCHEMA


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="raystream-demo-") as tmp:
        config = TopicConfig.from_dict({"segment.bytes": 1 << 20})
        log = Log(f"{tmp}/orders-0", config)
        n = 10_000
        keys = pa.array([f"customer-{i % 100}".encode() for i in range(n)], pa.binary())
        values = pa.array([f'{{"order": {i}, "amount": {i % 97}}}'.encode() for i in range(n)], pa.binary())
        headers = pa.nulls(n, RECORD_SCHEMA.field("headers").type)
        started = time.perf_counter()
        for start in range(0, n, 1000):
            batch = pa.record_batch([keys[start:start + 1000], values[start:start + 1000],
                                     headers[start:start + 1000]], schema=RECORD_SCHEMA)
            log.append(batch, leader_epoch=0)
        log.flush()
        print(f"appended {n} records in {time.perf_counter() - started:.3f}s -> {log}")
        first = log.read(0, max_bytes=1 << 20, max_offset=3)
        print("first records:", pa.Table.from_batches(first).select(["_offset", "key", "value"]).to_pylist())
        keys_only = pa.Table.from_batches(log.read(0, max_bytes=1 << 30, columns=["_offset", "key"]))
        print(f"projected read: {keys_only.num_rows} rows, columns {keys_only.column_names}")
        log._simulate_crash()  # as if the process died: no clean-shutdown marker
        log = Log(f"{tmp}/orders-0", config)
        print("reopened after crash:", log.recovery_report)
        log.close()


if __name__ == "__main__":
    main()
