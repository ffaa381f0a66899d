"""raystream's metrics read back from Ray's Prometheus endpoint on this node (raystream.metrics).

Ray exports what the actors record every ``metrics_report_interval_ms`` (1 s for the shared test Ray, see
conftest.py), so every check polls the endpoint until the expected value is there or a deadline passes.
"""

from __future__ import annotations

import time
import urllib.request

import pyarrow as pa
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

import raystream as rs

pytestmark = pytest.mark.integration
DEADLINE_S = 30.0


def metrics_url() -> str:
    """Ray's metrics export address of this node (``MetricsExportPort`` in the GCS node table; -1 when Ray
    runs without its dashboard dependencies, i.e. without ``ray[default]``)."""
    here = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == here)
    port = node["MetricsExportPort"]
    assert port > 0, f"Ray exports no metrics on this node (MetricsExportPort={port}): is ray[default] installed?"
    return f"http://{node['NodeManagerAddress']}:{port}/metrics"


def scrape() -> list:
    with urllib.request.urlopen(metrics_url(), timeout=10) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("ray_raystream_")]


def total(samples: list, name: str, **labels: str) -> float | None:
    """Sum of ``name`` over every series (Ray adds a WorkerId per process) whose labels include ``labels``;
    None when there is none."""
    values = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return sum(values) if values else None


def wait_for_metrics(condition, what: str):
    """Scrape until ``condition(samples)`` holds; fail with the last values seen after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        samples = scrape()
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            seen = sorted({(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k in
                                                 ("topic", "partition", "group"))), s.value) for s in samples})
            pytest.fail(f"{what}: not seen within {DEADLINE_S} s; raystream samples: {seen}")
        time.sleep(0.25)  # polling interval of the wait, not a synchronisation


def test_produce_and_fetch_metrics(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=2)
    singles, rows = 20, 30
    with rs.Producer(acks="all", linger_ms=0) as producer:
        for i in range(singles):  # one request each: the next is sent after the previous is acknowledged
            producer.send(topic_name, value=b"v%d" % i, partition=i % 2).result(timeout=30)
        producer.send_batch(topic_name, pa.table({"value": [b"row-%d" % i for i in range(rows)]}),
                            partition=0).result(timeout=30)
    produced = singles + rows
    consumed = []
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, p) for p in range(2)])
        deadline = time.monotonic() + DEADLINE_S
        while len(consumed) < produced and time.monotonic() < deadline:
            consumed.extend(consumer.poll(timeout=1.0))
    assert len(consumed) == produced

    def ready(samples):
        return (total(samples, "ray_raystream_records_in_total", topic=topic_name) == produced
                and total(samples, "ray_raystream_records_out_total", topic=topic_name) == produced
                # every replica reports its own log size (RF=1: one per partition)
                and all((total(samples, "ray_raystream_log_size_bytes", topic=topic_name, partition=p) or 0) > 0
                        for p in ("0", "1")))

    samples = wait_for_metrics(ready, f"records in/out = {produced} and log sizes of {topic_name}")
    assert total(samples, "ray_raystream_bytes_in_total", topic=topic_name) > 0
    assert total(samples, "ray_raystream_bytes_out_total", topic=topic_name) > 0
    # Every produce request is observed once (20 single-record sends and one batch, at least one request).
    assert total(samples, "ray_raystream_produce_latency_ms_count", topic=topic_name) >= singles + 1
    assert total(samples, "ray_raystream_produce_latency_ms_bucket", topic=topic_name, le="+Inf") >= singles + 1
    assert total(samples, "ray_raystream_fetch_latency_ms_count", topic=topic_name) >= 1
    assert total(samples, "ray_raystream_fetch_latency_ms_sum", topic=topic_name) >= 0


def test_partition_health_and_group_lag_gauges(cluster, topic_name):
    group = f"g-{topic_name}"
    rs.Admin().create_topic(topic_name, partitions=2)
    produced, committed = {0: 12, 1: 8}, {0: 5, 1: 8}
    with rs.Producer(acks="all") as producer:
        for partition, n in produced.items():
            producer.send_batch(topic_name, pa.table({"value": [b"x"] * n}), partition=partition).result(timeout=30)
    tps = {p: rs.TopicPartition(topic_name, p) for p in produced}
    with rs.Consumer(group_id=group, auto_offset_reset="earliest", enable_auto_commit=False) as consumer:
        consumer.assign(list(tps.values()))
        read: dict[int, int] = {p: 0 for p in produced}
        deadline = time.monotonic() + DEADLINE_S
        while sum(read.values()) < sum(produced.values()) and time.monotonic() < deadline:
            for record in consumer.poll(timeout=1.0):
                read[record.partition] += 1
        assert read == produced
        consumer.commit({tps[p]: offset for p, offset in committed.items()})
    expected_lag = sum(produced[p] - committed[p] for p in produced)  # 7 + 0
    # The gauge and describe_group agree: one definition (raystream.core.lag).
    assert sum(rs.Admin().describe_group(group).lag.values()) == expected_lag

    samples = wait_for_metrics(
        lambda s: total(s, "ray_raystream_consumer_group_lag", group=group, topic=topic_name) == expected_lag,
        f"lag {expected_lag} of group {group} on {topic_name}")
    # RF=1 on one node: every partition is led and fully replicated.
    assert total(samples, "ray_raystream_under_replicated_partitions", topic=topic_name) == 0
    assert total(samples, "ray_raystream_offline_partitions", topic=topic_name) == 0

    # Committing the rest brings the gauge to 0 at the next round.
    with rs.Consumer(group_id=group, enable_auto_commit=False) as consumer:
        consumer.assign(list(tps.values()))
        consumer.commit({tps[p]: n for p, n in produced.items()})
    wait_for_metrics(lambda s: total(s, "ray_raystream_consumer_group_lag", group=group, topic=topic_name) == 0,
                     f"lag 0 of group {group} on {topic_name}")
