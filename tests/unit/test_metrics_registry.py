"""What raystream.metrics records, and where (replica decorators, controller hooks), against a fake registry:
no Ray, no clock (Ray's export is covered by tests/integration/test_metrics.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from raystream import metrics
from raystream.actors.controller import Controller
from raystream.core.metadata import ClusterMetadata
from raystream.protocol import TopicPartition


class FakeMetric:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict]] = []

    def inc(self, value, tags):
        self.calls.append((value, dict(tags)))

    observe = set = inc

    def values(self, **tags) -> list[float]:
        return [v for v, t in self.calls if tags.items() <= t.items()]


@pytest.fixture
def recorded(monkeypatch):
    fake = SimpleNamespace(**{name: FakeMetric() for name in (
        "bytes_in", "records_in", "bytes_out", "records_out", "produce_latency_ms", "fetch_latency_ms",
        "isr_shrinks", "isr_expands", "under_replicated", "offline", "group_lag", "log_size_bytes")})
    monkeypatch.setattr(metrics, "_registry", fake)
    return fake


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeReplica:
    """Just enough of a replica for the decorators: ``metrics``, a long-poll wait, produce and fetch."""

    def __init__(self, clock: FakeClock) -> None:
        self.metrics = metrics.ReplicaMetrics("orders", 3, 1)
        self.clock = clock

    @metrics.long_poll_wait
    async def _wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @metrics.fetch_request
    async def fetch(self, work_s: float, wait_s: float, rows: int, fail: bool = False):
        self.clock.now += work_s
        await self._wait(wait_s)
        if fail:
            raise ValueError("offset out of range")
        batches = [SimpleNamespace(num_rows=rows)] if rows else []
        return SimpleNamespace(batches=batches, bytes=10 * rows)

    @metrics.produce_request
    async def produce(self, work_s: float, wait_s: float) -> str:
        self.clock.now += work_s
        await self._wait(wait_s)  # e.g. acks=all waiting for the ISR: part of produce latency
        self.metrics.produced(1000, 7)
        return "ok"


def test_fetch_latency_excludes_long_poll_waits_and_counts_what_is_returned(recorded, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    replica = FakeReplica(clock)
    asyncio.run(replica.fetch(work_s=0.004, wait_s=0.5, rows=3))
    asyncio.run(replica.fetch(work_s=0.001, wait_s=0.5, rows=0))  # an empty long-poll
    with pytest.raises(ValueError):
        asyncio.run(replica.fetch(work_s=0.002, wait_s=0.0, rows=3, fail=True))
    assert recorded.fetch_latency_ms.values(topic="orders") == pytest.approx([4.0, 1.0, 2.0])
    assert recorded.records_out.calls == [(3, {"topic": "orders"})]  # nothing for the empty or failed fetch
    assert recorded.bytes_out.calls == [(30, {"topic": "orders"})]


def test_produce_latency_includes_the_acks_wait(recorded, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(metrics.time, "perf_counter", clock)
    replica = FakeReplica(clock)
    assert asyncio.run(replica.produce(work_s=0.002, wait_s=0.010)) == "ok"
    assert recorded.produce_latency_ms.values() == pytest.approx([12.0])
    assert recorded.records_in.calls == [(7, {"topic": "orders"})]
    assert recorded.bytes_in.calls == [(1000, {"topic": "orders"})]


def test_log_size_is_sent_when_it_changes(recorded):
    replica_metrics = metrics.ReplicaMetrics("orders", 3, 1)
    for size in (0, 0, 512, 512, 1024):
        replica_metrics.log_size(size)
    assert recorded.log_size_bytes.calls == [(size, {"topic": "orders", "partition": "3", "broker": "1"})
                                             for size in (0, 512, 1024)]


def test_gauges_are_sent_again_before_ray_drops_them(recorded, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(metrics.time, "monotonic", clock)
    replica_metrics = metrics.ReplicaMetrics("orders", 3, 1)
    gauges = metrics.ControllerGauges()
    replica_metrics.log_size(512)
    gauges.group_lag.update({("billing", "orders"): 9})
    clock.now += metrics.GAUGE_REFRESH_S / 2
    replica_metrics.log_size(512)
    gauges.refresh()
    assert len(recorded.log_size_bytes.calls) == len(recorded.group_lag.calls) == 1
    clock.now += metrics.GAUGE_REFRESH_S / 2
    replica_metrics.log_size(512)
    gauges.refresh()
    assert recorded.log_size_bytes.values() == [512, 512]
    assert recorded.group_lag.calls == [(9, {"group": "billing", "topic": "orders"})] * 2


def controller_with_topic(tmp_path, partitions: int = 2) -> Controller:
    controller = Controller("c", str(tmp_path))
    controller.store.record(ClusterMetadata.topic_record("t", {}, None, None,
                                                    {p: (0, 1, 2) for p in range(partitions)}))
    return controller


def set_partition(controller: Controller, partition: int, leader: int, isr: tuple[int, ...]) -> None:
    state = controller.metadata.topics["t"].partitions[partition]
    controller.store.record(ClusterMetadata.partition_record(state, leader, state.leader_epoch + 1, isr))


def test_every_recorded_isr_change_counts_as_shrink_or_expand(recorded, tmp_path):
    controller = controller_with_topic(tmp_path)
    set_partition(controller, 0, 0, (0, 1))       # a follower fenced / dropped out: shrink
    set_partition(controller, 0, 1, (1,))         # an election that drops the old leader: shrink
    set_partition(controller, 0, 1, (1,))         # no ISR change (e.g. a re-replication epoch bump)
    set_partition(controller, 0, 1, (1, 2))       # caught up again: expand
    set_partition(controller, 1, 0, (0, 1, 2))    # unchanged
    assert recorded.isr_shrinks.calls == [(1, {"topic": "t"})] * 2
    assert recorded.isr_expands.calls == [(1, {"topic": "t"})]
    controller._close_logs()


def test_partition_health_gauges_follow_the_metadata(recorded, tmp_path):
    controller = controller_with_topic(tmp_path, partitions=3)
    controller.monitor.report_partition_health()
    set_partition(controller, 0, 0, (0, 1))
    set_partition(controller, 1, -1, (1,))  # offline (and under-replicated)
    controller.monitor.report_partition_health()
    controller.monitor.report_partition_health()  # unchanged: nothing sent
    controller.store.record({"t": "delete", "name": "t"})
    controller.monitor.report_partition_health()
    assert recorded.under_replicated.calls == [(0, {"topic": "t"}), (2, {"topic": "t"}), (0, {"topic": "t"})]
    assert recorded.offline.calls == [(0, {"topic": "t"}), (1, {"topic": "t"}), (0, {"topic": "t"})]
    controller._close_logs()


def test_group_lag_gauge_uses_the_leaders_high_watermarks(recorded, tmp_path):
    controller = controller_with_topic(tmp_path)
    high_watermarks = {("t", 0, 0): 100, ("t", 1, 0): 30}
    asked = []

    class Handle:
        def __init__(self, key):
            self.key = key
            self.list_offset = SimpleNamespace(remote=self.answer)

        async def answer(self, request):  # a ListOffsetsRequest
            asked.append((self.key, request.spec))
            if high_watermarks[self.key] is None:
                raise TimeoutError("leader restarting")
            return high_watermarks[self.key]

    controller.replicas.cached = Handle
    commit = {TopicPartition("t", 0): (40, ""), TopicPartition("t", 1): (30, "")}
    asyncio.run(controller.commit_offsets("billing", "", -1, commit))
    asyncio.run(controller.groups.report_group_lag())
    assert recorded.group_lag.calls == [(60, {"group": "billing", "topic": "t"})]
    assert {spec for _, spec in asked} == {-1}  # LATEST: the high watermark, as describe_group asks

    asyncio.run(controller.groups.report_group_lag())  # unchanged: nothing sent
    high_watermarks[("t", 0, 0)] = None  # partition 0's lag unknown this round: the gauge keeps 60
    asyncio.run(controller.groups.report_group_lag())
    high_watermarks[("t", 0, 0)] = 110
    asyncio.run(controller.groups.report_group_lag())
    assert recorded.group_lag.values() == [60, 70]

    asyncio.run(controller.delete_group("billing"))  # no committed offsets any more: 0, once
    asyncio.run(controller.groups.report_group_lag())
    asyncio.run(controller.groups.report_group_lag())
    assert recorded.group_lag.values() == [60, 70, 0]
    controller._close_logs()


def test_dashboard_and_docs_name_every_metric_as_ray_exports_it():
    """Ray exports ``raystream_x`` as ``ray_raystream_x`` (counters ``..._total``, histograms ``_bucket`` /
    ``_sum`` / ``_count``): the dashboard and docs/metrics.md must use those names, for every metric."""
    import json
    import re
    from pathlib import Path

    from ray.util.metrics import Counter, Histogram

    root = Path(__file__).resolve().parents[2]
    defined = {m.info["name"]: m for m in vars(metrics._Registry()).values()}
    exported = {}
    for name, metric in defined.items():
        suffixes = ("_total",) if isinstance(metric, Counter) else \
            ("", "_bucket", "_sum", "_count") if isinstance(metric, Histogram) else ("",)  # "": the family
        exported.update({f"ray_{name}{suffix}": name for suffix in suffixes})
    dashboard = json.loads((root / "docs/grafana/raystream-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    used = set(re.findall(r"ray_raystream_\w+", exprs))
    assert used <= exported.keys(), used - exported.keys()
    assert {exported[n] for n in used} == defined.keys()  # a panel for every metric
    docs = (root / "docs/metrics.md").read_text()
    documented = set(re.findall(r"`(ray_raystream_\w+)`", docs))
    assert documented <= exported.keys(), documented - exported.keys()
    assert {exported[n] for n in documented} == defined.keys()
