"""Ray Data integration: ``rs.data.read_topic`` / ``rs.data.write_topic`` / ``rs.data.iter_topic_batches``.

An integration module like :mod:`raystream.api` (it imports Ray and Ray Data; ``import raystream`` loads it
only on first use of ``rs.data``).

* :func:`read_topic` is a :class:`ray.data.Datasource`. The offset range of every partition is resolved once,
  when ``read_topic`` is called (a consistent snapshot: rows produced later are not read, however late the
  dataset is consumed). Planning splits each partition's ``[start, end)`` into read tasks of at most
  ``rows_per_task`` offsets (by default: enough tasks for the requested parallelism, never below
  ``_MIN_ROWS_PER_TASK``). A read task runs in a Ray worker: it finds the cluster's controller by name,
  asks it for the partition's leader, and fetches its range straight from the leader replica actor
  (``columns`` are projected inside the replica, so only they cross Ray), trimming the last batch to
  ``end``; on a leader change (or a dead leader) it asks the controller again and resumes where it was.
  Output blocks have the columns of ``Consumer.poll_arrow``: ``topic``, ``partition``, ``offset``,
  ``timestamp``, then the user columns.
* :func:`write_topic` is a :class:`ray.data.Datasink`: each write task produces its blocks with an
  idempotent ``acks="all"`` producer and returns once everything is acknowledged.
* :func:`iter_topic_batches` is a plain generator of Arrow tables over a :class:`raystream.Consumer`.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import Datasink, Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from raystream import errors
from raystream.client.convert import arrow_table, output_schema, requested_columns, to_arrow, user_schema
from raystream.client.list_offsets import ListOffsets, MetadataLeaders
from raystream.client.offset_spec import OffsetSpec, parse_offset_spec
from raystream.client.transport import RayTransport
from raystream.protocol import EARLIEST, LATEST, TopicMetadata, TopicPartition
from raystream.record import OFFSET_COLUMN

#: A read task is never planned smaller than this many offsets unless ``rows_per_task`` asks for it.
_MIN_ROWS_PER_TASK = 50_000
#: Bytes per fetch request of a read task (one output block per fetch).
DEFAULT_FETCH_MAX_BYTES = 16 * 1024 * 1024
#: How long a read task keeps retrying a partition without a leader / a fetch that fails retriably.
DEFAULT_RETRY_TIMEOUT_S = 60.0
_RETRY_BACKOFF_S = 0.1
_SYSTEM_OUTPUT_NAMES = ("topic", "partition", "offset", "timestamp")


# -- cluster ---------------------------------------------------------------------------------------------------
def _cluster_name(cluster: Any) -> str:
    """The cluster name to use: ``cluster`` (a name or the handle ``rs.init`` returned), else the current
    handle's, else ``"default"`` (what ``rs.init()`` names a cluster)."""
    if cluster is None:
        from raystream import api

        handle = api.current()
        return handle.cluster if handle is not None else "default"
    if isinstance(cluster, str):
        return cluster
    name = getattr(cluster, "cluster", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"cluster must be a cluster name or the handle raystream.init() returned, "
                    f"got {type(cluster).__name__}")


def _connect(cluster: str) -> RayTransport:
    """A transport to ``cluster`` found by name from any process of the Ray cluster (driver or task)."""
    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=False)
    return RayTransport.connect(cluster)


def _topic_metadata(transport: RayTransport, topic: str) -> TopicMetadata:
    meta = transport.get_metadata([topic]).get(topic)
    if meta is None:
        raise errors.UnknownTopicOrPartitionError(f"unknown topic {topic!r}")
    return meta


def _retrying(what: str, call: Any, timeout_s: float) -> Any:
    """``call()`` until it does not raise a retriable raystream error, for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except errors.RaystreamError as exc:
            if not exc.retriable or time.monotonic() >= deadline:
                raise
            time.sleep(_RETRY_BACKOFF_S)


def _list_offsets(transport: RayTransport, topic: str, partitions: list[int], spec: int,
                  timeout_s: float, read_committed: bool = False) -> dict[int, int]:
    """ListOffsets of ``spec`` (EARLIEST, LATEST or a timestamp) on each partition's current leader,
    retried for up to ``timeout_s``; the last retriable error (or RequestTimeoutError) when time is up."""
    leaders = MetadataLeaders(lambda topics: {topic: _retrying(f"metadata of {topic}",
                                                              lambda: _topic_metadata(transport, topic), timeout_s)})
    lister = ListOffsets(transport, leaders, retry_backoff_s=_RETRY_BACKOFF_S)
    result = lister.run({TopicPartition(topic, p): spec for p in partitions}, timeout_s, read_committed)
    error = result.first_error() or next((e for e in result.unanswered.values() if e is not None), None)
    if error is None and result.unanswered:
        error = errors.RequestTimeoutError(f"offsets of {sorted(map(str, result.unanswered))} not found "
                                           f"within {timeout_s:.3f} s")
    if error is not None:
        raise error
    return {tp.partition: offset for tp, offset in result.offsets.items()}


# -- read ------------------------------------------------------------------------------------------------------
def _resolve(transport: RayTransport, topic: str, partitions: list[int], spec: OffsetSpec, what: str,
             bounds: tuple[dict[int, int], dict[int, int]], timeout_s: float) -> dict[int, int]:
    """Offsets of ``spec`` for every partition, clamped to ``[log_start_offset, high_watermark]``."""
    log_start, hw = bounds
    if spec.kind == "earliest":
        raw = dict(log_start)
    elif spec.kind == "latest":
        raw = dict(hw)
    elif spec.kind == "timestamp":
        found = _list_offsets(transport, topic, partitions, spec.list_offsets_spec, timeout_s)
        raw = {p: (hw[p] if off < 0 else off) for p, off in found.items()}  # no record that late: the end
    elif spec.kind == "partitions":
        assert spec.offsets is not None
        raw = dict(spec.offsets)
        missing = [p for p in partitions if p not in raw]
        if missing:  # only when start and end dicts name different partitions
            raise ValueError(f"{what} names no offset for partitions {missing}")
    else:
        raw = dict.fromkeys(partitions, spec.offset)
    return {p: min(max(raw[p], log_start[p]), hw[p]) for p in partitions}


def _split(ranges: list[tuple[int, int, int]], rows_per_task: int) -> list[tuple[int, int, int]]:
    out = []
    for partition, start, end in ranges:
        pieces = max(1, math.ceil((end - start) / rows_per_task))
        step = math.ceil((end - start) / pieces)
        out.extend((partition, lo, min(lo + step, end)) for lo in range(start, end, step))
    return out


def _read_range(cluster: str, topic: str, partition: int, start: int, end: int,
                columns: tuple[str, ...] | None, schema: pa.Schema, fetch_max_bytes: int,
                retry_timeout_s: float, row_filter: Any = None,
                read_committed: bool = False) -> Iterator[pa.Table]:
    """Runs in a Ray worker: the records of ``[start, end)`` of one partition, a table per fetch."""
    transport = _connect(cluster)
    tp = TopicPartition(topic, partition)
    fetch_columns = None if columns is None else list(columns)
    committed = {"read_committed": True} if read_committed else {}
    leader: int | None = None
    epoch: int | None = None
    offset = start
    deadline = time.monotonic() + retry_timeout_s
    while offset < end:
        try:
            if leader is None:
                ps = next((s for s in _topic_metadata(transport, topic).partitions if s.partition == partition), None)
                if ps is None:
                    raise errors.UnknownTopicOrPartitionError(f"unknown partition {tp}")
                if ps.leader < 0:
                    raise errors.LeaderNotAvailableError(f"{tp} has no leader")
                leader, epoch = ps.leader, ps.leader_epoch
            try:
                result = transport.fetch(tp, leader, offset, fetch_max_bytes, 0, 0, fetch_columns,
                                         epoch, row_filter=row_filter, **committed).result(timeout=retry_timeout_s)
            except concurrent.futures.TimeoutError as exc:  # a hung leader: ask the controller again
                raise errors.LeaderNotAvailableError(f"fetch {tp} at {offset} from broker {leader} timed out") \
                    from exc
        except errors.RaystreamError as exc:
            if not exc.retriable or time.monotonic() >= deadline:
                raise
            if exc.invalid_metadata:
                leader = None  # leader moved or died: ask the controller again, resume at ``offset``
            time.sleep(_RETRY_BACKOFF_S)
            continue
        pieces = []
        for batch in result.batches:
            offsets = batch.column(OFFSET_COLUMN).to_numpy()
            if len(offsets) and offsets[-1] >= end:
                batch = batch.slice(0, int(np.searchsorted(offsets, end)))
            if batch.num_rows:
                pieces.append(to_arrow(tp, batch, columns))
        if result.next_offset <= offset:  # a new leader's high watermark can trail the old one's for a moment
            if time.monotonic() >= deadline:
                raise errors.RequestTimeoutError(f"{tp}: no records at offset {offset} below {end} "
                                                 f"(high watermark {result.high_watermark})")
            time.sleep(_RETRY_BACKOFF_S)
            continue
        deadline = time.monotonic() + retry_timeout_s  # progress: a fresh retry budget
        offset = result.next_offset
        if pieces:
            yield arrow_table(pieces, schema)


class TopicDatasource(Datasource):
    """A consistent snapshot of one topic: ``ranges`` are ``(partition, start, end)`` resolved at creation."""

    def __init__(self, cluster: str, meta: TopicMetadata, ranges: list[tuple[int, int, int]],
                 columns: tuple[str, ...] | None, rows_per_task: int | None = None,
                 fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
                 retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S, row_filter: Any = None,
                 read_committed: bool = False) -> None:
        self.cluster = cluster
        self.topic = meta.name
        self.ranges = [r for r in ranges if r[2] > r[1]]
        self.columns = columns
        self.schema = output_schema([meta], columns)
        self.rows_per_task = rows_per_task
        self.fetch_max_bytes = fetch_max_bytes
        self.retry_timeout_s = retry_timeout_s
        self.row_filter = row_filter
        self.read_committed = read_committed
        # Offsets are dense unless the topic is compacted (or rows are filtered): only then is an offset
        # range's row count unknown.
        self.exact_counts = row_filter is None and not read_committed and "compact" not in str(meta.config.get("cleanup.policy", "delete"))
        self.row_bytes = _row_bytes(self.schema)

    @property
    def num_offsets(self) -> int:
        return sum(end - start for _, start, end in self.ranges)

    def estimate_inmemory_data_size(self) -> int | None:
        return None if self.row_bytes is None else self.num_offsets * self.row_bytes

    def get_name(self) -> str:
        return "RaystreamTopic"

    def plan(self, parallelism: int) -> list[tuple[int, int, int]]:
        """The read tasks' ``(partition, start, end)``: one per partition, split further when the requested
        parallelism (or ``rows_per_task``) asks for more."""
        if self.rows_per_task is not None:
            return _split(self.ranges, self.rows_per_task)
        parallelism = max(parallelism, 1)
        per_task = max(math.ceil(self.num_offsets / parallelism), _MIN_ROWS_PER_TASK)
        return _split(self.ranges, per_task)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        tasks = []
        for partition, start, end in self.plan(parallelism):
            args = (self.cluster, self.topic, partition, start, end, self.columns, self.schema,
                    self.fetch_max_bytes, self.retry_timeout_s, self.row_filter, self.read_committed)
            rows = end - start
            metadata = BlockMetadata(num_rows=rows if self.exact_counts else None,
                                     size_bytes=None if self.row_bytes is None else rows * self.row_bytes,
                                     exec_stats=None, input_files=None)
            tasks.append(ReadTask(lambda args=args: _read_range(*args), metadata, schema=self.schema,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def _row_bytes(schema: pa.Schema) -> int | None:
    """Bytes per row when every column has a fixed width (the dictionary-encoded topic: its int32 index)."""
    total = 0
    for field in schema:
        t = field.type
        if pa.types.is_dictionary(t):
            t = t.index_type
        try:
            total += t.bit_width // 8
        except ValueError:
            return None
    return total


def read_topic(topic: str, start: Any = "earliest", end: Any = "latest", columns: list[str] | None = None,
               cluster: Any = None, *, filter: Any = None, isolation_level: str = "read_uncommitted",
               rows_per_task: int | None = None, override_num_blocks: int | None = None,
               parallelism: int | None = None, fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
               retry_timeout_s: float = DEFAULT_RETRY_TIMEOUT_S, **read_args: Any) -> ray.data.Dataset:
    """A :class:`ray.data.Dataset` of the records of ``topic`` in ``[start, end)``, per partition.

    ``start`` / ``end``: ``"earliest"``, ``"latest"`` (the high watermark), an offset (every partition),
    ``{"timestamp": ms}`` (the first offset whose timestamp is >= ms; ``end`` is exclusive), or a dict
    partition -> offset (only those partitions are read). Offsets are clamped to each partition's
    ``[log_start_offset, high_watermark]`` and fixed now: records produced later are not part of the
    dataset. ``columns`` selects user columns (``topic``, ``partition``, ``offset``, ``timestamp`` are
    always there); only they leave the partition replicas. ``filter`` (a ``pyarrow.compute.Expression``
    over the user columns, ``_offset`` and ``_timestamp``) also runs in the replicas: only matching rows
    leave them, and batches whose min/max statistics exclude it are skipped unread. ``isolation_level=
    "read_committed"``: ``latest`` is the last stable offset and aborted transactions are left out.
    ``rows_per_task`` caps the offsets of one read
    task (default: split partitions so that the requested parallelism is met); ``override_num_blocks``
    (or the older ``parallelism``) and other ``read_args`` go to :func:`ray.data.read_datasource`.
    ``cluster``: a cluster name or an ``rs.init`` handle (default: the current one)."""
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"topic must be a non-empty str, got {topic!r}")
    if rows_per_task is not None and (not isinstance(rows_per_task, int) or rows_per_task < 1):
        raise ValueError(f"rows_per_task must be an int >= 1, got {rows_per_task!r}")
    if isolation_level not in ("read_uncommitted", "read_committed"):
        raise ValueError(f"isolation_level must be 'read_uncommitted' or 'read_committed', got {isolation_level!r}")
    read_committed = isolation_level == "read_committed"
    if filter is not None and not isinstance(filter, pc.Expression):
        raise TypeError(f"filter must be a pyarrow.compute.Expression, got {type(filter).__name__}")
    name = _cluster_name(cluster)
    transport = _connect(name)
    meta = _topic_metadata(transport, topic)
    selection = _selection(meta, columns)
    all_partitions = sorted(ps.partition for ps in meta.partitions)
    partitions = all_partitions
    specs = [parse_offset_spec(spec, what, per_partition=True) for spec, what in ((start, "start"), (end, "end"))]
    for spec in specs:
        if spec.offsets is not None:
            chosen = sorted(spec.offsets)
            unknown = [p for p in chosen if p not in all_partitions]
            if unknown:
                raise errors.UnknownTopicOrPartitionError(f"topic {topic!r} has no partitions {unknown}")
            partitions = [p for p in partitions if p in chosen]
    timeout_s = retry_timeout_s
    bounds = (_list_offsets(transport, topic, partitions, EARLIEST, timeout_s),
              _list_offsets(transport, topic, partitions, LATEST, timeout_s, read_committed))
    starts = _resolve(transport, topic, partitions, specs[0], "start", bounds, timeout_s)
    ends = _resolve(transport, topic, partitions, specs[1], "end", bounds, timeout_s)
    ranges = [(p, starts[p], ends[p]) for p in partitions]
    if override_num_blocks is None and parallelism is not None:
        override_num_blocks = parallelism
    if override_num_blocks is None and rows_per_task is None:
        # Ray's default asks for ~200 blocks however small the topic is (and splits blocks to get them);
        # plan enough read tasks for every CPU instead (a partition is split only when it holds more than
        # _MIN_ROWS_PER_TASK offsets per task), and ask Ray for exactly that many blocks.
        cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        offsets = sum(e - s for _, s, e in ranges)
        rows_per_task = max(math.ceil(offsets / cpus), _MIN_ROWS_PER_TASK)
    source = TopicDatasource(name, meta, ranges, selection, rows_per_task, fetch_max_bytes, retry_timeout_s,
                             filter, read_committed)
    if override_num_blocks is None:
        override_num_blocks = max(len(source.plan(1)), 1)
    return ray.data.read_datasource(source, override_num_blocks=override_num_blocks, **read_args)


def _selection(meta: TopicMetadata, columns: Any) -> tuple[str, ...] | None:
    wanted = requested_columns(columns)
    if wanted is None:
        return None
    names = user_schema(meta).names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ValueError(f"unknown columns {unknown}; topic {meta.name!r} has {names}")
    return wanted


# -- write -----------------------------------------------------------------------------------------------------
class TopicDatasink(Datasink):
    """Appends a dataset's blocks to a topic: each write task with its own replay producer
    (``Producer(replay_id=...)``, ``acks="all"``), so a retried write task — Ray re-runs a task whose worker
    died — writes each row once: the brokers drop the rows its earlier attempts already wrote. That needs
    every attempt to send the same rows to the same partitions in the same order: rows with a key go by
    murmur2 of the key; keyless blocks of a task all go to partition ``task_idx % partitions``. (Blocks
    recomputed from a non-deterministic upstream are not the same rows; they are written as new rows.)"""

    def __init__(self, topic: str, cluster: str, key_column: str | None = None,
                 producer_config: Mapping[str, Any] | None = None, num_partitions: int = 1,
                 topic_key_column: str | None = None) -> None:
        self.topic = topic
        self.cluster = cluster
        self.key_column = key_column
        self.routing_column = key_column or topic_key_column or "key"
        self.num_partitions = num_partitions
        self.write_id = uuid.uuid4().hex  # one per write_topic call: a new write is new data
        self.producer_config = {"acks": "all", "linger_ms": 0, **dict(producer_config or {})}
        self.rows_written = 0

    def get_name(self) -> str:
        return "RaystreamTopic"

    def write(self, blocks: Iterable[Any], ctx: Any) -> int:
        from raystream.client import Producer

        _connect(self.cluster)
        rows = 0
        task_idx = getattr(ctx, "task_idx", 0)
        with Producer(cluster=self.cluster, replay_id=f"write_topic/{self.write_id}/{task_idx}",
                      **self.producer_config) as producer:
            futures = []
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                if table.num_rows == 0:
                    continue
                keyed = self.routing_column in table.column_names
                partition = None if keyed else task_idx % self.num_partitions
                futures.append(producer.send_batch(self.topic, table, key_column=self.key_column,
                                                   partition=partition))
                rows += table.num_rows
            producer.flush()
            for future in futures:
                future.result()  # raises the first failed batch's error
        return rows

    def on_write_complete(self, write_result: Any) -> None:
        self.rows_written = sum(int(r) for r in write_result.write_returns if r is not None)


def write_topic(ds: ray.data.Dataset, topic: str, key_column: str | None = None, cluster: Any = None,
                producer_config: Mapping[str, Any] | None = None, **write_args: Any) -> int:
    """Append every row of ``ds`` to ``topic``; returns the number of rows once all are acknowledged.

    A topic with a schema takes rows of that schema; one without takes a ``value`` column and optional
    ``key``, ``timestamp``, ``headers`` columns (as ``Producer.send_batch``). ``key_column`` partitions rows
    by murmur2 of that column (default: the topic's key column / ``key``), else each write task sends its
    blocks to one partition. A retried write task does not duplicate rows (see :class:`TopicDatasink`).
    ``producer_config`` overrides Producer arguments (``acks="all"`` by default; it must stay idempotent);
    ``write_args`` go to :meth:`ray.data.Dataset.write_datasink`."""
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"topic must be a non-empty str, got {topic!r}")
    name = _cluster_name(cluster)
    meta = _topic_metadata(_connect(name), topic)  # fails fast on an unknown topic
    sink = TopicDatasink(topic, name, key_column, producer_config, len(meta.partitions), meta.key_column)
    ds.write_datasink(sink, **write_args)
    return sink.rows_written


# -- streaming -------------------------------------------------------------------------------------------------
def iter_topic_batches(topic: str, group_id: str | None = None, columns: list[str] | None = None,
                       timeout_s: float | None = 10.0, cluster: Any = None, *, poll_timeout_s: float = 0.5,
                       auto_offset_reset: str = "earliest", max_batches: int | None = None,
                       consumer_config: Mapping[str, Any] | None = None) -> Iterator[pa.Table]:
    """Arrow tables of ``topic`` as they arrive (``Consumer.poll_arrow``'s columns).

    Without ``group_id`` every partition is read from ``auto_offset_reset``. With ``group_id`` the
    consumer subscribes and commits a batch's offsets when the next batch is requested (after the
    caller's step: at-least-once; a batch the caller abandons is not committed). Ends after
    ``timeout_s`` without new records (None: never) or after ``max_batches``."""
    from raystream.client import Consumer

    config = {"auto_offset_reset": auto_offset_reset, **dict(consumer_config or {})}
    if group_id is not None:
        config["enable_auto_commit"] = False
    consumer = Consumer(group_id=group_id, cluster=_cluster_name(cluster), **config)
    try:
        if group_id is not None:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))])
        yielded = 0
        idle_since = time.monotonic()
        while max_batches is None or yielded < max_batches:
            table = consumer.poll_arrow(timeout=poll_timeout_s, columns=columns)
            if table.num_rows == 0:
                if not consumer.assignment():  # still joining the group: not idle yet
                    idle_since = time.monotonic()
                elif timeout_s is not None and time.monotonic() - idle_since >= timeout_s:
                    return
                continue
            yield table
            yielded += 1
            idle_since = time.monotonic()
            if group_id is not None:  # the caller asked for the next batch: this one is done
                consumer.commit(_next_offsets(topic, table))
    finally:
        consumer.close()


def _next_offsets(topic: str, table: pa.Table) -> dict[TopicPartition, int]:
    partitions = table.column("partition").to_numpy()
    offsets = table.column("offset").to_numpy()
    out = {}
    for p in np.unique(partitions):
        out[TopicPartition(topic, int(p))] = int(offsets[partitions == p].max()) + 1
    return out


__all__ = ["TopicDatasink", "TopicDatasource", "iter_topic_batches", "read_topic", "write_topic"]
