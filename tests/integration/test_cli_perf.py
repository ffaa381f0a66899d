"""Smoke test of ``raystream perf-test produce|consume --embedded``: each runs in a subprocess (its own local
Ray, started and stopped by the command) and prints one JSON object with the documented keys.

No timing assertions: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
ENV.pop("RAY_ADDRESS", None)


def perf_test(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "raystream.cli", "perf-test", *args, "--embedded", "--json"],
                          capture_output=True, text=True, timeout=120, check=False, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_perf_test_produce_reports_throughput_and_latency_percentiles() -> None:
    stats = perf_test("produce", "--num-records", "2000", "--record-size", "50", "--acks", "1")
    assert {"records", "records_per_sec", "mb_per_sec", "avg_latency_ms", "max_latency_ms", "p50_ms", "p95_ms",
            "p99_ms", "p99_9_ms", "errors", "elapsed_s"} <= stats.keys()
    assert stats["mode"] == "produce" and stats["api"] == "send"
    assert stats["records"] == 2000 and stats["latency_samples"] == 2000
    assert stats["errors"] == 0
    assert stats["p50_ms"] <= stats["p99_ms"] <= stats["max_latency_ms"]


def test_perf_test_consume_arrow_reads_every_record_it_filled() -> None:
    stats = perf_test("consume", "--num-records", "3000", "--partitions", "2", "--arrow")
    assert {"records", "records_per_sec", "mb_per_sec", "mb", "elapsed_s", "start_time", "end_time"} <= stats.keys()
    assert stats["mode"] == "consume" and stats["api"] == "poll_arrow"
    assert stats["records"] == 3000 and stats["partitions"] == 2
    assert stats["mb"] > 0
