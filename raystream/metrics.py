"""raystream's server-side metrics, recorded with ``ray.util.metrics`` so that Ray's Prometheus endpoint on
every node (and so Prometheus and Grafana) shows them. The list, with the names as exported, the tags and
where each is recorded, is in ``docs/metrics.md``; the dashboard is ``docs/grafana/raystream-dashboard.json``.

Ray exports a metric named ``raystream_x`` as ``ray_raystream_x`` (a counter as ``ray_raystream_x_total``)
and adds its own labels (``SessionName``, ``NodeAddress``, ``WorkerId``, ...), so every process has series
of its own: queries sum (counters, histograms) or take the max (gauges) by our tags.

Tags: ``topic`` on everything; ``partition`` and ``broker`` only on the per-replica log size; ``group`` on
the lag gauge. Nothing is tagged per producer, consumer or request, so the number of series stays that of
topics, replicas and groups.

Concurrency contract: the metric objects are created once per process, on the first call of
:func:`registry` (double-checked under a lock); the actors call it (through :class:`ReplicaMetrics` or the
controller's hooks) in ``__init__`` or off the hot path, never per request. Recording is thread-safe (Ray's
metric objects lock internally) and cheap (~2 µs a call); raystream records only from its actors' event
loops. The hot paths make a fixed number of calls per *request*, never per record: the produce and fetch
decorators below time the whole call, and a replica's tag dicts are built once, in :class:`ReplicaMetrics`.
Gauges are sent when they change and again every ``GAUGE_REFRESH_S`` (Ray drops a gauge left unset ~20 s).
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

#: Request latency buckets (ms): sub-millisecond appends up to acks=all waits near request.timeout.ms.
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
#: Ray drops a gauge series that was not set for ~20 s (measured with Ray 2.60 at metrics_report_interval_ms
#: 1000 and 10000; counters stay), so every gauge value is sent again at least this often.
GAUGE_REFRESH_S = 5.0

_TOPIC = ("topic",)


class _Registry:
    """The process's metric objects (created together, once; see the module docstring)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.bytes_in = Counter("raystream_bytes_in", "Bytes appended by partition leaders from producers "
                                "(Arrow buffer size of the produced batches).", tag_keys=_TOPIC)
        self.records_in = Counter("raystream_records_in", "Records appended by partition leaders from "
                                  "producers (a deduplicated idempotent retry is not counted again).", tag_keys=_TOPIC)
        self.bytes_out = Counter("raystream_bytes_out", "Bytes returned by fetches to consumers (after "
                                 "projection and filters; replication is not counted).", tag_keys=_TOPIC)
        self.records_out = Counter("raystream_records_out", "Records returned by fetches to consumers "
                                   "(replication is not counted).", tag_keys=_TOPIC)
        self.produce_latency_ms = Histogram(
            "raystream_produce_latency_ms", "Produce request time in the partition leader, ms: append plus, "
            "with acks=all, the wait for the ISR (Kafka's produce TotalTimeMs without the network).",
            boundaries=LATENCY_BOUNDARIES_MS, tag_keys=_TOPIC)
        self.fetch_latency_ms = Histogram(
            "raystream_fetch_latency_ms", "Fetch request time in the partition leader, ms, excluding the "
            "long-poll wait for data (fetch.max.wait.ms).", boundaries=LATENCY_BOUNDARIES_MS, tag_keys=_TOPIC)
        self.isr_shrinks = Counter("raystream_isr_shrinks", "Recorded ISR changes that removed a replica "
                                   "(controller).", tag_keys=_TOPIC)
        self.isr_expands = Counter("raystream_isr_expands", "Recorded ISR changes that added a replica "
                                   "(controller).", tag_keys=_TOPIC)
        self.under_replicated = Gauge("raystream_under_replicated_partitions", "Partitions whose ISR is "
                                      "smaller than their replica set (controller metadata).", tag_keys=_TOPIC)
        self.offline = Gauge("raystream_offline_partitions", "Partitions without a leader (controller "
                             "metadata).", tag_keys=_TOPIC)
        self.group_lag = Gauge("raystream_consumer_group_lag", "Records between the high watermark and the "
                               "group's committed offset, summed over the topic's partitions (group "
                               "coordinator, every metrics.group.lag.interval.ms).", tag_keys=("group", "topic"))
        self.log_size_bytes = Gauge("raystream_log_size_bytes", "Bytes of a partition replica's segment "
                                    "files, reported by every replica (leaders and followers).",
                                    tag_keys=("topic", "partition", "broker"))


_registry: _Registry | None = None
_registry_lock = threading.Lock()


def registry() -> _Registry:
    """This process's metric objects, created on the first call."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = _Registry()
    return _registry


# -- partition replicas --------------------------------------------------------------------------------------
class ReplicaMetrics:
    """What one partition replica records, with its tag dicts built once. Not thread-safe: the replica's
    event loop makes every call."""

    def __init__(self, topic: str, partition: int, broker_id: int) -> None:
        self._metrics = registry()
        self._topic_tags = {"topic": topic}
        self._replica_tags = {"topic": topic, "partition": str(partition), "broker": str(broker_id)}
        self._log_size_bytes: int | None = None
        self._log_size_sent_s = 0.0

    def produced(self, size_bytes: int, records: int) -> None:
        """One batch appended as the leader."""
        if records > 0:
            self._metrics.records_in.inc(records, self._topic_tags)
            self._metrics.bytes_in.inc(max(size_bytes, 1), self._topic_tags)

    def fetched(self, result: Any) -> None:
        """A fetch's :class:`~raystream.protocol.FetchResult` (one loop over its batches, not its records)."""
        records = sum(b.num_rows for b in result.batches)
        if records > 0:
            self._metrics.records_out.inc(records, self._topic_tags)
            self._metrics.bytes_out.inc(max(result.bytes, 1), self._topic_tags)

    def produce_latency(self, elapsed_ms: float) -> None:
        self._metrics.produce_latency_ms.observe(elapsed_ms, self._topic_tags)

    def fetch_latency(self, elapsed_ms: float) -> None:
        self._metrics.fetch_latency_ms.observe(elapsed_ms, self._topic_tags)

    def log_size(self, size_bytes: int) -> None:
        """The replica's log size (sent to Ray when it changed, else every ``GAUGE_REFRESH_S``)."""
        now_s = time.monotonic()
        if size_bytes != self._log_size_bytes or now_s - self._log_size_sent_s >= GAUGE_REFRESH_S:
            self._log_size_bytes, self._log_size_sent_s = size_bytes, now_s
            self._metrics.log_size_bytes.set(size_bytes, self._replica_tags)


# Seconds the current fetch spent in long-poll waits; set by fetch_request for the duration of one call (each
# Ray actor call runs in an asyncio task of its own, so this is per request), None outside a fetch.
_long_poll_s: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("raystream_long_poll_s",
                                                                                  default=None)


def produce_request(method: Callable) -> Callable:
    """Decorates a replica's async ``produce``: observes its latency (success or error) in
    ``raystream_produce_latency_ms``. Needs the instance's ``metrics`` (a :class:`ReplicaMetrics`)."""

    @functools.wraps(method)
    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(self, *args, **kwargs)
        finally:
            self.metrics.produce_latency((time.perf_counter() - started) * 1000)

    return timed


def fetch_request(method: Callable) -> Callable:
    """Decorates a replica's async ``fetch``: observes its latency minus the time spent in methods decorated
    with :func:`long_poll_wait` in ``raystream_fetch_latency_ms`` (success or error), and counts what a
    successful fetch returns (records and bytes out). Needs the instance's ``metrics``."""

    @functools.wraps(method)
    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        waited = [0.0]
        token = _long_poll_s.set(waited)
        try:
            result = await method(self, *args, **kwargs)
        finally:
            _long_poll_s.reset(token)
            self.metrics.fetch_latency(max(time.perf_counter() - started - waited[0], 0.0) * 1000)
        self.metrics.fetched(result)
        return result

    return timed


def long_poll_wait(method: Callable) -> Callable:
    """Decorates an async wait: inside a :func:`fetch_request` call its duration is not fetch latency."""

    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        waited = _long_poll_s.get()
        if waited is None:
            return await method(*args, **kwargs)
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            waited[0] += time.perf_counter() - started

    return timed


# -- controller ------------------------------------------------------------------------------------------------
def isr_changed(topic: str, old_isr: Iterable[int], new_isr: Iterable[int]) -> None:
    """A recorded ISR change: a shrink if it removed a replica, an expand if it added one (both if it
    replaced one)."""
    old, new = set(old_isr), set(new_isr)
    if old - new:
        registry().isr_shrinks.inc(1, {"topic": topic})
    if new - old:
        registry().isr_expands.inc(1, {"topic": topic})


class _GaugeSeries:
    """The series of one gauge as last sent, keyed by their tag values (in ``tag_keys`` order)."""

    def __init__(self, name: str, tag_keys: tuple[str, ...]) -> None:
        self._name, self._tag_keys = name, tag_keys
        self._last: dict[tuple[str, ...], float] = {}

    def update(self, values: Mapping[tuple[str, ...], float | None]) -> None:
        """``values``: every live series now (None: unknown this time, the last value stays). A series sent
        before and missing here is set to 0 once and forgotten (Ray then drops it)."""
        gauge = getattr(registry(), self._name)
        for key, value in values.items():
            if value is not None and self._last.get(key) != value:
                gauge.set(value, dict(zip(self._tag_keys, key, strict=True)))
                self._last[key] = value
        for key in self._last.keys() - values.keys():
            gauge.set(0, dict(zip(self._tag_keys, key, strict=True)))
            del self._last[key]

    def resend(self) -> None:
        gauge = getattr(registry(), self._name)
        for key, value in self._last.items():
            gauge.set(value, dict(zip(self._tag_keys, key, strict=True)))


class ControllerGauges:
    """The controller's gauges: partition health per topic (failover) and lag per group and topic (group
    coordinator). Values are sent when they change and all sent again by :meth:`refresh` every
    ``GAUGE_REFRESH_S``. Not thread-safe: the controller's event loop makes every call."""

    def __init__(self) -> None:
        self.under_replicated = _GaugeSeries("under_replicated", _TOPIC)
        self.offline = _GaugeSeries("offline", _TOPIC)
        self.group_lag = _GaugeSeries("group_lag", ("group", "topic"))
        self._refreshed_s = time.monotonic()

    def refresh(self) -> None:
        """Call often (the failure check does, every replica.heartbeat.interval.ms); sends when due."""
        now_s = time.monotonic()
        if now_s - self._refreshed_s >= GAUGE_REFRESH_S:
            self._refreshed_s = now_s
            for series in (self.under_replicated, self.offline, self.group_lag):
                series.resend()
