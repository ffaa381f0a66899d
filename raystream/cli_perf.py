"""``raystream perf-test produce|consume``: Kafka's kafka-producer-perf-test and kafka-consumer-perf-test.

``produce`` sends ``--num-records`` records of ``--record-size`` bytes (one reused random payload, as
Kafka's tool does) and reports records/s, MB/s and the latency of every record — from ``send()`` to the
completion of its future, taken in an ``add_done_callback`` with ``time.perf_counter_ns`` — as average,
maximum and the 50th/95th/99th/99.9th percentiles. ``--arrow`` sends Arrow tables of ``--batch-records``
rows with ``send_batch`` instead (latency is then per table). ``--throughput`` caps the send rate.

``consume`` reads ``--num-records`` records from the earliest offset of every partition with ``poll`` (or
``poll_arrow`` with ``--arrow``) and reports records/s, MB/s (key and value bytes) and the total.

Both connect like every other command (``--address`` / ``--cluster`` / ``--data-dir``), or with
``--embedded`` start a throwaway local cluster (a local Ray and a temporary data directory, both gone
afterwards; it never joins a Ray cluster already running on the machine). A missing topic is created with ``--partitions`` / ``--replication-factor``; ``consume``
first fills a topic it had to create (always the case with ``--embedded``) with ``--num-records`` records.

MB means MiB (2**20 bytes), as in Kafka's tools. ``--json`` prints one JSON object instead of Kafka's lines;
a progress bar goes to stderr only when stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import click

from raystream import errors
from raystream.cli_topics import connect, friendly_errors
from raystream.config import DATA_PATH_BYTES

MB = 1 << 20
#: Kafka's ThroughputThrottler sleeps only once it is at least this far ahead of schedule.
_MIN_SLEEP_NS = 2_000_000
_PROGRESS_EVERY = 1 << 14
_CALLBACK_WAIT_S = 60.0


# -- cluster session ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def session(ctx: click.Context, embedded: bool) -> Iterator[None]:
    """Connect (``connect`` from cli_topics), or start an embedded local cluster on a temporary data
    directory; disconnect (and, when embedded, stop it and remove the directory) at the end."""
    import raystream as rs

    if not embedded:
        connect(ctx)
        try:
            yield
        finally:
            rs.shutdown()
        return
    import ray

    opts = ctx.find_root().obj or {}
    if opts.get("address"):
        click.echo("perf-test: --embedded ignores --address / RAY_ADDRESS", err=True)
    if ray.is_initialized():
        raise click.UsageError("--embedded starts its own Ray; this process already uses one")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    data_dir = tempfile.mkdtemp(prefix="raystream-perf-")
    # address="local": a new Ray of our own. (ray.init(address=None) would join a cluster that
    # `ray start` left running on this machine, or RAY_ADDRESS.) rs.init then uses this process's Ray.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        rs.init(address=None, data_dir=data_dir, cluster=opts.get("cluster", "default"))
        yield
    finally:
        try:
            rs.shutdown(stop_cluster=True)  # every replica flushes and closes its log
        finally:
            ray.shutdown()
            shutil.rmtree(data_dir, ignore_errors=True)


def ensure_topic(topic: str, partitions: int, replication_factor: int) -> bool:
    """Create ``topic`` if it does not exist. True if this call created it."""
    import raystream as rs

    admin = rs.Admin()
    if topic in admin.list_topics():
        return False
    try:
        admin.create_topic(topic, partitions=partitions, replication_factor=replication_factor)
    except errors.TopicAlreadyExistsError:
        return False
    return True


def partition_count(topic: str) -> int:
    import raystream as rs

    return len(rs.Admin().describe_topic(topic).partitions)


# -- data -----------------------------------------------------------------------------------------------------
def payload(record_size: int, seed: int = 0) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).bytes(record_size)


def value_table(rows: int, record_size: int, seed: int = 0):
    """A table with one ``value`` column of ``rows`` binaries of ``record_size`` bytes, built zero-copy over
    one random buffer (no per-row Python)."""
    import numpy as np
    import pyarrow as pa

    data = pa.py_buffer(np.random.default_rng(seed).bytes(rows * record_size))
    offsets = pa.py_buffer(np.arange(0, (rows + 1) * record_size, record_size, dtype=np.int32)
                           if record_size else np.zeros(rows + 1, dtype=np.int32))
    return pa.table({"value": pa.Array.from_buffers(pa.binary(), rows, [None, offsets, data])})


# -- statistics -----------------------------------------------------------------------------------------------
def latency_stats(latencies_ns: Any) -> dict[str, float]:
    """avg / max / p50 / p95 / p99 / p99.9 in milliseconds of an array of nanosecond latencies."""
    import numpy as np

    lat = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    if lat.size == 0:
        return {k: float("nan") for k in ("avg_latency_ms", "max_latency_ms", "p50_ms", "p95_ms", "p99_ms",
                                          "p99_9_ms")}
    p50, p95, p99, p999 = np.percentile(lat, [50, 95, 99, 99.9])
    return {"avg_latency_ms": round(float(lat.mean()), 3), "max_latency_ms": round(float(lat.max()), 3),
            "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3),
            "p99_9_ms": round(float(p999), 3)}


class Throttler:
    """Kafka's ThroughputThrottler: keeps ``count / elapsed`` at or below ``per_sec`` (-1: unlimited) by
    sleeping once at least 2 ms ahead of schedule."""

    def __init__(self, per_sec: float, start_ns: int) -> None:
        self.active = per_sec > 0
        self.interval_ns = 1e9 / per_sec if self.active else 0.0
        self.start_ns = start_ns

    def throttle(self, sent: int) -> None:
        ahead = self.start_ns + sent * self.interval_ns - time.perf_counter_ns()
        if ahead >= _MIN_SLEEP_NS:
            time.sleep(ahead / 1e9)


class Progress:
    """A ``rich`` progress bar on stderr when stderr is a terminal; otherwise nothing."""

    def __init__(self, description: str, total: int) -> None:
        self._bar = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def update(self, completed: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed)

    def __exit__(self, *exc_info: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


# -- produce --------------------------------------------------------------------------------------------------
def _record_done(latencies: list, failures: list, index: int, start_ns: int, future: Any) -> None:
    latencies[index] = time.perf_counter_ns() - start_ns
    exc = future.exception(0)
    if exc is not None:
        failures.append(exc)


def _wait_callbacks(latencies: list) -> None:
    """The futures' events are set just before their callbacks run: wait for the last few callbacks."""
    deadline = time.monotonic() + _CALLBACK_WAIT_S
    while None in latencies:
        if time.monotonic() > deadline:
            raise errors.RequestTimeoutError(f"{latencies.count(None)} send callback(s) never ran")
        time.sleep(0.001)


def run_produce(topic: str, num_records: int, record_size: int, throughput: float = -1, acks: Any = 1,
                linger_ms: int = 5, batch_size: int = 1_048_576, arrow: bool = False,
                batch_records: int = 10_000, producer_config: dict[str, Any] | None = None,
                description: str = "produce") -> dict[str, Any]:
    """The producer perf test against the current cluster; the topic must exist. Returns the stats."""
    import raystream as rs

    config = {"acks": acks, "linger_ms": linger_ms, "batch_size": batch_size, **(producer_config or {})}
    n_units = math.ceil(num_records / batch_records) if arrow else num_records
    latencies: list[int | None] = [None] * n_units
    failures: list[BaseException] = []
    done = functools.partial(_record_done, latencies, failures)
    perf_ns = time.perf_counter_ns
    with rs.Producer(**config) as producer, Progress(description, num_records) as progress:
        producer.partitions_for(topic)  # metadata fetched before the clock starts, as Kafka's tool warms up
        start = perf_ns()
        throttler = Throttler(throughput, start)
        if arrow:
            table = value_table(min(batch_records, num_records), record_size)
            send_batch = producer.send_batch
            sent = 0
            for i in range(n_units):
                rows = min(batch_records, num_records - sent)
                piece = table if rows == table.num_rows else table.slice(0, rows)
                t0 = perf_ns()
                send_batch(topic, piece).add_done_callback(functools.partial(done, i, t0))
                sent += rows
                if throttler.active:
                    throttler.throttle(sent)
                progress.update(sent)
        else:
            value = payload(record_size)
            send = producer.send
            throttle = throttler.throttle if throttler.active else None
            for i in range(num_records):
                t0 = perf_ns()
                send(topic, value).add_done_callback(functools.partial(done, i, t0))
                if throttle is not None:
                    throttle(i + 1)
                if not i % _PROGRESS_EVERY:
                    progress.update(i)
        producer.flush()
        _wait_callbacks(latencies)
        elapsed_s = (perf_ns() - start) / 1e9
    stats = {"mode": "produce", "api": "send_batch" if arrow else "send", "topic": topic,
             "records": num_records, "record_size": record_size, "acks": str(acks), "linger_ms": linger_ms,
             "batch_size": batch_size, "throughput_limit": throughput, "elapsed_s": round(elapsed_s, 3),
             "records_per_sec": round(num_records / elapsed_s, 1),
             "mb_per_sec": round(num_records * record_size / MB / elapsed_s, 3),
             **latency_stats(latencies), "latency_samples": n_units, "errors": len(failures)}
    if arrow:
        stats["batch_records"] = batch_records
    if failures:
        stats["first_error"] = f"{type(failures[0]).__name__}: {failures[0]}"
    return stats


def fill_topic(topic: str, num_records: int, record_size: int, partitions: int, rows: int = 100_000) -> None:
    """Write ``num_records`` records (spread over the partitions) with large ``send_batch`` calls."""
    import raystream as rs

    table = value_table(min(rows, num_records), record_size, seed=1)
    with rs.Producer(acks=1) as producer:
        futures, sent, i = [], 0, 0
        while sent < num_records:
            piece = table.slice(0, min(table.num_rows, num_records - sent))
            futures.append(producer.send_batch(topic, piece, partition=i % partitions))
            sent += piece.num_rows
            i += 1
        for future in futures:
            future.result()


# -- consume --------------------------------------------------------------------------------------------------
def run_consume(topic: str, num_records: int, arrow: bool = False, timeout_ms: int = 10_000,
                consumer_config: dict[str, Any] | None = None, description: str = "consume") -> dict[str, Any]:
    """Read up to ``num_records`` records of every partition of ``topic`` from the earliest offset; stops
    early after ``timeout_ms`` without a record. Returns the stats."""
    import pyarrow.compute as pc

    import raystream as rs

    partitions = partition_count(topic)
    config = {"auto_offset_reset": "earliest", **(consumer_config or {})}
    count = nbytes = 0
    start_wall = time.time()
    with rs.Consumer(**config) as consumer, Progress(description, num_records) as progress:
        consumer.assign([rs.TopicPartition(topic, p) for p in range(partitions)])
        start = time.perf_counter()
        last_data = start
        while count < num_records:
            if arrow:
                table = consumer.poll_arrow(timeout=0.5, max_records=num_records - count)
                got = table.num_rows
                for name in ("key", "value"):
                    if got and name in table.column_names:
                        nbytes += pc.sum(pc.binary_length(table.column(name))).as_py() or 0
            else:
                records = consumer.poll(timeout=0.5, max_records=min(consumer.max_poll_records, num_records - count))
                got = len(records)
                for r in records:
                    if r.value is not None:
                        nbytes += len(r.value)
                    if r.key is not None:
                        nbytes += len(r.key)
            now = time.perf_counter()
            if got:
                count += got
                last_data = now
                progress.update(count)
            elif (now - last_data) * 1000 >= timeout_ms:
                break
        # Kafka's tool stops the clock at the last record, not after the idle timeout.
        elapsed_s = max((last_data if count < num_records else time.perf_counter()) - start, 1e-9)
    return {"mode": "consume", "api": "poll_arrow" if arrow else "poll", "topic": topic,
            "partitions": partitions, "records": count, "requested": num_records, "mb": round(nbytes / MB, 3),
            "elapsed_s": round(elapsed_s, 3), "records_per_sec": round(count / elapsed_s, 1),
            "mb_per_sec": round(nbytes / MB / elapsed_s, 3),
            "start_time": datetime.datetime.fromtimestamp(start_wall).isoformat(timespec="milliseconds"),
            "end_time": datetime.datetime.fromtimestamp(start_wall + elapsed_s).isoformat(timespec="milliseconds")}


# -- commands -------------------------------------------------------------------------------------------------
def _embedded(ctx: click.Context, flag: bool) -> bool:
    return flag or bool(ctx.parent is not None and ctx.parent.params.get("embedded"))


_embedded_option = click.option("--embedded", is_flag=True,
                                help="Start a throwaway local cluster (temporary data dir) instead of connecting.")


def _topic_options(fn):
    for option in reversed([
        click.option("--topic", default="perf-test", show_default=True),
        click.option("--num-records", type=click.IntRange(min=1), default=1_000_000, show_default=True),
        click.option("--record-size", type=click.IntRange(min=0), default=100, show_default=True,
                     help="Bytes per record value."),
        click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Partitions of the topic if it has to be created."),
        click.option("--replication-factor", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Replication factor of the topic if it has to be created."),
        click.option("--arrow", is_flag=True, help="Use send_batch / poll_arrow (Arrow tables)."),
        click.option("--batch-records", type=click.IntRange(min=1), default=10_000, show_default=True,
                     help="Rows per Arrow table with --arrow."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
        _embedded_option,
    ]):
        fn = option(fn)
    return fn


@click.group("perf-test")
@_embedded_option
def perf_test(embedded: bool) -> None:
    """Measure producer and consumer throughput and latency (like kafka-*-perf-test)."""


@perf_test.command("produce")
@_topic_options
@click.option("--throughput", type=float, default=-1, show_default=True,
              help="Maximum records/s (-1: unlimited).")
@click.option("--acks", default="1", show_default=True, type=click.Choice(["0", "1", "all"]))
@click.option("--linger-ms", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1_048_576, show_default=True)
@click.pass_context
@friendly_errors
def produce_perf(ctx, topic, num_records, record_size, partitions, replication_factor, arrow, batch_records,
                 as_json, embedded, throughput, acks, linger_ms, batch_size):
    """Producer throughput and send-to-ack latency (like kafka-producer-perf-test)."""
    with session(ctx, _embedded(ctx, embedded)):
        ensure_topic(topic, partitions, replication_factor)
        stats = run_produce(topic, num_records, record_size, throughput=throughput,
                            acks=acks if acks == "all" else int(acks), linger_ms=linger_ms, batch_size=batch_size,
                            arrow=arrow, batch_records=batch_records)
    if as_json:
        click.echo(json.dumps(stats))
    else:
        unit = f" ({stats['latency_samples']} tables of <= {batch_records} rows)" if arrow else ""
        click.echo(f"{stats['records']} records sent, {stats['records_per_sec']:.1f} records/sec "
                   f"({stats['mb_per_sec']:.2f} MB/sec), {stats['avg_latency_ms']:.2f} ms avg latency, "
                   f"{stats['max_latency_ms']:.2f} ms max latency, {stats['p50_ms']:.2f} ms 50th, "
                   f"{stats['p95_ms']:.2f} ms 95th, {stats['p99_ms']:.2f} ms 99th, "
                   f"{stats['p99_9_ms']:.2f} ms 99.9th{unit}.")
    if stats["errors"]:
        raise click.ClickException(f"{stats['errors']} record(s) failed; first: {stats['first_error']}")


@perf_test.command("consume")
@_topic_options
@click.option("--timeout-ms", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Stop after this long without a record.")
@click.option("--max-partition-fetch-bytes", type=click.IntRange(min=1), default=DATA_PATH_BYTES, show_default=True)
@click.option("--max-poll-records", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--fill/--no-fill", default=None,
              help="First write --num-records records (default: only into a topic this command created).")
@click.pass_context
@friendly_errors
def consume_perf(ctx, topic, num_records, record_size, partitions, replication_factor, arrow, batch_records,
                 as_json, embedded, timeout_ms, max_partition_fetch_bytes, max_poll_records, fill):
    """Consumer throughput (like kafka-consumer-perf-test), from the earliest offset."""
    with session(ctx, _embedded(ctx, embedded)):
        created = ensure_topic(topic, partitions, replication_factor)
        if fill or (fill is None and created):
            fill_topic(topic, num_records, record_size, partition_count(topic), rows=max(batch_records, 10_000))
        stats = run_consume(topic, num_records, arrow=arrow, timeout_ms=timeout_ms,
                            consumer_config={"max_partition_fetch_bytes": max_partition_fetch_bytes,
                                             "max_poll_records": max_poll_records})
    if as_json:
        click.echo(json.dumps(stats))
    else:
        fetch_ms = stats["elapsed_s"] * 1000
        click.echo("start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, "
                   "rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec")
        click.echo(f"{stats['start_time']}, {stats['end_time']}, {stats['mb']:.4f}, {stats['mb_per_sec']:.4f}, "
                   f"{stats['records']}, {stats['records_per_sec']:.4f}, 0, {fetch_ms:.0f}, "
                   f"{stats['mb_per_sec']:.4f}, {stats['records_per_sec']:.4f}")
    if stats["records"] < num_records:
        click.echo(f"WARNING: consumed {stats['records']} of {num_records} records before the "
                   f"{timeout_ms} ms timeout", err=True)
