"""Ray Data benchmark: ``rs.data.read_topic`` vs ``ray.data.read_parquet`` on the same rows.

Prints ONE JSON object to stdout; progress goes to stderr. An embedded local cluster (its own Ray,
``ray.init(address="local")``, data under a temporary directory removed at the end; every Ray process
started here is stopped here).

* ``--rows`` rows (default 10,000,000) of 10 columns (5 int64, 5 float64) are written with
  ``rs.data.write_topic`` (``write_topic_rows_per_s``; producer requests of 16 MiB, the topic's
  ``max.message.bytes`` raised to match) to a 4-partition Arrow-native topic (RF=1), and the same rows with
  ``pyarrow.parquet`` to 4 Parquet files (one per partition's share) in a temporary directory;
* ``read_topic(...).materialize()`` vs ``ray.data.read_parquet(dir).materialize()`` (all columns; best of
  ``--repeats``), ``ratio`` = topic time / Parquet time (lower is better for the topic);
* reading 1 of the 10 columns vs all 10 from the topic (``columns=["c0"]``: projected in the replicas),
  ``one_vs_all_ratio`` = one-column time / all-columns time; the same for Parquet for reference;
* ``fixed_s``: a one-column read of only 1,000 rows (what every read costs whatever its size: Ray Data's
  executor, planning, one task);
* filters run in the replicas: ``c0 < 1 %`` of its range (random data: every batch is read and filtered)
  and ``_offset < 1 %`` of each partition (batch statistics skip the other batches unread).

    .venv/bin/python benchmarks/ray_data.py [--rows 10000000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PARTITIONS = 4
REQUEST_BYTES = 16 * 1024 * 1024


def progress(msg: str) -> None:
    print(f"[ray_data] {msg}", file=sys.stderr, flush=True)


def make_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {}
    for i in range(10):
        cols[f"c{i}"] = rng.integers(0, 1 << 40, rows, dtype=np.int64) if i < 5 else rng.random(rows)
    return pa.table(cols)


def best(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def run(args: argparse.Namespace, root: str) -> dict[str, Any]:
    import ray

    import raystream as rs

    table = make_table(args.rows)
    results: dict[str, Any] = {"rows": args.rows, "columns": 10, "partitions": PARTITIONS,
                               "table_mb": round(table.nbytes / 2**20, 1), "repeats": args.repeats}
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        results["cpus"] = int(ray.cluster_resources().get("CPU", 0))
        rs.init(data_dir=os.path.join(root, "data"), cluster=f"bench-{uuid.uuid4().hex[:8]}")
        topic = "bench"
        rs.Admin().create_topic(topic, partitions=PARTITIONS, schema=table.schema,
                                config={"max.message.bytes": 2 * REQUEST_BYTES})
        # The dataset to write: 4 blocks per partition-worth of rows (Ray Data spreads them over write tasks).
        blocks = 4 * PARTITIONS
        step = -(-args.rows // blocks)
        ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, args.rows, step)]).materialize()
        progress(f"write_topic of {args.rows} rows")
        t0 = time.perf_counter()
        written = rs.data.write_topic(ds, topic, producer_config={"max_request_size": REQUEST_BYTES,
                                                                  "batch_size": REQUEST_BYTES})
        write_s = time.perf_counter() - t0
        results["write_topic"] = {"rows": written, "seconds": round(write_s, 3),
                                  "rows_per_s": round(written / write_s), "mb_per_s": round(table.nbytes / 2**20 / write_s, 1)}
        desc = rs.Admin().describe_topic(topic)
        results["write_topic"]["partition_rows"] = [p.high_watermark for p in desc.partitions]

        pdir = os.path.join(root, "parquet")
        os.makedirs(pdir)
        per_file = -(-args.rows // PARTITIONS)
        t0 = time.perf_counter()
        for i, lo in enumerate(range(0, args.rows, per_file)):
            pq.write_table(table.slice(lo, per_file), os.path.join(pdir, f"part-{i}.parquet"))
        results["parquet_write_s"] = round(time.perf_counter() - t0, 3)
        del ds

        def read_topic(columns=None, row_filter=None, expect=args.rows):
            mat = rs.data.read_topic(topic, columns=columns, filter=row_filter).materialize()
            assert mat.count() == expect, mat.count()
            return mat.num_blocks()

        def read_parquet(columns=None):
            ds = ray.data.read_parquet(pdir)
            mat = (ds if columns is None else ds.select_columns(columns)).materialize()
            assert mat.count() == args.rows
            return mat.num_blocks()

        progress("warm-up")
        ray.data.read_parquet(pdir).select_columns(["c0"]).materialize()
        rs.data.read_topic(topic, columns=["c0"], end=1000).materialize()
        progress("read all columns")
        topic_all, topic_blocks = best(read_topic, args.repeats)
        parquet_all, parquet_blocks = best(read_parquet, args.repeats)
        progress("read one column")
        topic_one, _ = best(lambda: read_topic(["c0"]), args.repeats)
        parquet_one, _ = best(lambda: read_parquet(["c0"]), args.repeats)
        results["read_all"] = {"read_topic_s": round(topic_all, 3), "read_parquet_s": round(parquet_all, 3),
                               "ratio": round(topic_all / parquet_all, 2),
                               "read_topic_rows_per_s": round(args.rows / topic_all),
                               "read_parquet_rows_per_s": round(args.rows / parquet_all),
                               "read_topic_blocks": topic_blocks, "read_parquet_blocks": parquet_blocks}
        progress("fixed cost and filters")
        fixed, _ = best(lambda: rs.data.read_topic(topic, columns=["c0"], end=1000).materialize(), args.repeats)
        import pyarrow.compute as pc

        c0 = table.column("c0").to_numpy()
        threshold = int(np.quantile(c0, 0.01))
        expect_c0 = int((c0 < threshold).sum())
        filter_c0, _ = best(lambda: read_topic(["c0"], pc.field("c0") < threshold, expect_c0), args.repeats)
        per_partition = [p.high_watermark for p in desc.partitions]
        cut = min(per_partition) // 100
        filter_offset, _ = best(lambda: read_topic(["c0"], pc.field("_offset") < cut, cut * PARTITIONS),
                                args.repeats)
        results["fixed_s"] = round(fixed, 3)
        results["filters"] = {"c0_1pct_s": round(filter_c0, 3), "c0_1pct_rows": expect_c0,
                              "offset_1pct_s": round(filter_offset, 3), "offset_1pct_rows": cut * PARTITIONS,
                              "all_columns_s": round(topic_all, 3)}
        results["projection"] = {"read_topic_one_s": round(topic_one, 3), "read_topic_all_s": round(topic_all, 3),
                                 "one_vs_all_ratio": round(topic_one / topic_all, 3),
                                 "read_parquet_one_s": round(parquet_one, 3),
                                 "parquet_one_vs_all_ratio": round(parquet_one / parquet_all, 3)}
    finally:
        rs.shutdown(stop_cluster=True)
        ray.shutdown()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="parent of the temporary directory (default: /tmp)")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="raystream-bench-raydata-", dir=args.dir)
    try:
        results = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
