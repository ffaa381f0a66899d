"""A Jepsen-style queue workload and checker for the fault suite.

The workload sends unique values (``"<partition>:<seq>"``) with ``acks=all`` at a steady pace from a
producer thread while a consumer thread reads every partition; every send's outcome is recorded as acked
(partition, offset), failed (the exception) or unknown (no answer by the end). After the faults, the checker
reads every partition from the start and asserts:

* no acknowledged record lost: each acked value is in the log at its acked partition and offset;
* no record read that was never sent;
* no duplicates (idempotence is on): each value at most once in the whole log;
* offsets never reused: whatever the live consumer read at an offset is what the final read finds there;
* per-partition order of acknowledged records follows send order;
* the live consumer never went backwards (it never seeks).

On failure the message carries the scenario's event log and the offending part of the history.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import raystream as rs


@dataclass
class History:
    sent: dict[str, tuple[int, int]] = field(default_factory=dict)  # value -> (partition, seq)
    acked: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # value -> (partition, offset, t)
    failed: dict[str, str] = field(default_factory=dict)  # value -> error type
    live_reads: list[tuple[int, int, str]] = field(default_factory=list)  # (partition, offset, value)
    events: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.2f}s] {text}"
        print(line, flush=True)
        self.events.append(line)

    def acked_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for _, _, at in self.acked.values() if at >= t)

    def unknown(self) -> list[str]:
        with self.lock:
            return [v for v in self.sent if v not in self.acked and v not in self.failed]


class QueueWorkload:
    """Producer and consumer threads over ``topic``'s partitions. Use as a context manager."""

    def __init__(self, topic: str, partitions: int, rate_per_s: float = 200.0, **producer_config: Any) -> None:
        self.topic, self.partitions, self.interval_s = topic, partitions, 1.0 / rate_per_s
        config = {"acks": "all", "linger_ms": 1, "request_timeout_ms": 5000, "delivery_timeout_ms": 30000,
                  "retry_backoff_ms": 50}
        config.update(producer_config)
        self.producer_config = config
        self.history = History()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._produce, name="workload-producer", daemon=True),
                         threading.Thread(target=self._consume, name="workload-consumer", daemon=True)]
        self.errors: list[BaseException] = []

    def __enter__(self) -> QueueWorkload:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, drain_s: float = 40.0) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join(drain_s)

    def _produce(self) -> None:
        h = self.history
        seq = 0
        try:
            with rs.Producer(**self.producer_config) as producer:
                while not self._stop.is_set():
                    partition = seq % self.partitions
                    value = f"{partition}:{seq}"
                    with h.lock:
                        h.sent[value] = (partition, seq)
                    try:
                        future = producer.send(self.topic, value=value.encode(), partition=partition)
                    except Exception as exc:  # e.g. buffer full for max_block_ms: a failed send
                        with h.lock:
                            h.failed[value] = type(exc).__name__
                    else:
                        future.add_done_callback(lambda f, v=value: self._outcome(v, f))
                    seq += 1
                    time.sleep(self.interval_s)
                producer.flush(timeout=30)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def _outcome(self, value: str, future: Any) -> None:
        exc = future.exception()
        with self.history.lock:
            if exc is None:
                meta = future.result()
                self.history.acked[value] = (meta.partition, meta.offset, time.monotonic())
            else:
                self.history.failed[value] = type(exc).__name__

    def _consume(self) -> None:
        try:
            with rs.Consumer(auto_offset_reset="earliest", fetch_max_wait_ms=200) as consumer:
                consumer.assign([rs.TopicPartition(self.topic, p) for p in range(self.partitions)])
                while not self._stop.is_set():
                    try:
                        records = consumer.poll(timeout=0.2)
                    except rs.errors.RaystreamError as exc:  # retriable trouble while leaders move
                        if not exc.retriable:
                            raise
                        continue
                    with self.history.lock:
                        self.history.live_reads.extend((r.partition, r.offset, r.value.decode()) for r in records)
        except BaseException as exc:
            self.errors.append(exc)


def read_everything(topic: str, partitions: int, timeout_s: float = 60.0) -> list[tuple[int, int, str]]:
    """Every record below each partition's high watermark, read from the earliest offset."""
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        tps = [rs.TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        deadline = time.monotonic() + timeout_s
        ends: dict[rs.TopicPartition, int] = {}
        while time.monotonic() < deadline:
            try:
                ends = consumer.end_offsets(tps)
                break
            except rs.errors.RaystreamError:
                time.sleep(0.2)
        out: list[tuple[int, int, str]] = []
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
            try:
                records = consumer.poll(timeout=0.5)
            except rs.errors.RaystreamError as exc:
                if not exc.retriable:
                    raise
                continue
            out.extend((r.partition, r.offset, r.value.decode()) for r in records)
        missing = {str(tp): (consumer.position(tp), ends[tp]) for tp in tps if consumer.position(tp) < ends[tp]}
        assert not missing, f"could not read {topic} up to its high watermarks: {missing}"
        return out


def check(history: History, final: list[tuple[int, int, str]]) -> None:
    """Assert the queue properties (module docstring); raise AssertionError with the evidence."""
    problems: list[str] = []
    at: dict[tuple[int, int], str] = {}
    count: dict[str, int] = {}
    for partition, offset, value in final:
        if (partition, offset) in at:
            problems.append(f"offset {partition}/{offset} read twice in the final read")
        at[(partition, offset)] = value
        count[value] = count.get(value, 0) + 1
    with history.lock:
        acked = dict(history.acked)
        sent = dict(history.sent)
        live = list(history.live_reads)
    lost = [(v, p, o) for v, (p, o, _) in acked.items() if at.get((p, o)) != v]
    if lost:
        problems.append(f"{len(lost)} acknowledged records lost or moved, e.g. "
                        f"{[(v, p, o, at.get((p, o))) for v, p, o in lost[:5]]}")
    phantom = [v for v in count if v not in sent]
    if phantom:
        problems.append(f"{len(phantom)} records read that were never sent, e.g. {phantom[:5]}")
    dups = [v for v, n in count.items() if n > 1]
    if dups:
        problems.append(f"{len(dups)} values written more than once, e.g. {dups[:5]}")
    wrong_partition = [v for p, _, v in final if v in sent and sent[v][0] != p]
    if wrong_partition:
        problems.append(f"records in the wrong partition: {wrong_partition[:5]}")
    reused = [(p, o, v, at.get((p, o))) for p, o, v in live if at.get((p, o)) != v]
    if reused:
        problems.append(f"{len(reused)} offsets read live hold other data (or none) now: {reused[:5]}")
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for v, (p, o, _) in acked.items():
        by_partition.setdefault(p, []).append((sent[v][1], o))
    for p, pairs in by_partition.items():
        offsets = [o for _, o in sorted(pairs)]
        if offsets != sorted(offsets):
            problems.append(f"partition {p}: acked records out of send order")
    last: dict[int, int] = {}
    for p, o, _ in live:
        if o <= last.get(p, -1):
            problems.append(f"live consumer went backwards on partition {p}: {last[p]} -> {o}")
            break
        last[p] = o
    if problems:
        raise AssertionError("queue check failed:\n  " + "\n  ".join(problems) + "\nevents:\n  "
                             + "\n  ".join(history.events) + f"\nsent={len(sent)} acked={len(acked)} "
                             f"failed={len(history.failed)} final={len(final)}")
    history.event(f"check passed: sent={len(sent)} acked={len(acked)} failed={len(history.failed)} "
                  f"unknown={len(history.unknown())} final={len(final)} live_reads={len(live)}")
