"""``Producer``: sends records to topics, batching them per partition on a background thread.

``send`` appends a record to its partition's batch in the accumulator and returns a light future at once
(it blocks only to fetch a topic's metadata the first time, or while ``buffer_memory`` is full); the
sender thread ships batches (see :mod:`raystream.client.sender`). Partitioning is Kafka's: an explicit
``partition``; else ``murmur2(key) % partitions`` (identical to Kafka's Java client); else the topic's
sticky partition, kept until its batch is sent.

Idempotence is on by default, as in Kafka >= 3.0 (``enable_idempotence=None`` means "Kafka's default"): the
producer takes a producer id from the controller and numbers each partition's records, so a retried batch
is written at most once and records stay in order across retries with up to 5 requests in flight. Left at
its default it is silently off when the other settings cannot support it (``acks`` other than ``"all"``,
``retries=0``, or ``max_in_flight_requests_per_connection > 5``); ``enable_idempotence=True`` with such a
setting raises ValueError. :attr:`Producer.enable_idempotence` tells which it is.

Defaults are Kafka's except the sizes, which are Ray's: ``batch_size`` 1 MiB (Kafka 16 KiB),
``max_request_size`` 16 MiB (Kafka 1 MiB) and ``buffer_memory`` 128 MiB (Kafka 32 MiB), because every
request is one actor call with a fixed cost of milliseconds (see :data:`raystream.config.DATA_PATH_BYTES`).

Thread-safe: any number of threads may send, flush and close concurrently.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.client import context
from raystream.client.accumulator import RECORDS, ROWS, RecordAccumulator
from raystream.client.base import BaseTransport
from raystream.client.batches import key_partitions, record_table, split_by_partition
from raystream.client.futures import BatchFuture, RecordFuture, ResultTimeoutError
from raystream.client.metadata import MetadataCache
from raystream.client.sender import Sender
from raystream.client.serde import RECORD_OVERHEAD_BYTES, normalize_headers, record_size, row_size, serialize
from raystream.client.transaction_manager import TransactionManager, producer_mode
from raystream.clock import now_ms as _now_ms
from raystream.config import DATA_PATH_BYTES
from raystream.core.partitioner import partition_for_key
from raystream.errors import (
    ClosedError,
    InvalidTxnStateError,
    RecordTooLargeError,
    SchemaMismatchError,
    UnknownTopicOrPartitionError,
)
from raystream.protocol import TopicMetadata, TopicPartition

log = logging.getLogger(__name__)

_ACKS = {0: 0, 1: 1, -1: -1, "all": -1, "0": 0, "1": 1, "-1": -1}
_instances = 0


def _check_int(name: str, value: Any, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_config(linger_ms: int, request_timeout_ms: int, delivery_timeout_ms: int,
                  ints: dict[str, Any], positive_ints: dict[str, Any],
                  serializers: dict[str, Callable[[Any], Any] | None]) -> None:
    """The Producer's argument checks (TypeError/ValueError, before anything is started)."""
    for name, value in ints.items():
        _check_int(name, value)
    for name, value in positive_ints.items():
        _check_int(name, value, 1)
    if delivery_timeout_ms < linger_ms + request_timeout_ms:
        raise ValueError(f"delivery_timeout_ms ({delivery_timeout_ms}) must be >= linger_ms + "
                         f"request_timeout_ms ({linger_ms + request_timeout_ms}), as in Kafka")
    for name, fn in serializers.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable")


class Producer:
    """A Kafka-style producer. Configuration uses Kafka's names with underscores (``linger_ms``) and
    Kafka's defaults, except ``batch_size`` (1 MiB: Arrow batches pay off when large). ``enable_idempotence``
    defaults to Kafka's behaviour (on unless acks/retries/in-flight settings rule it out; see the module
    docstring). ``leader_recheck_ms`` (raystream's own): a request unanswered for that long makes the
    producer re-check its partition's leader, and retry on the new one if leadership moved (a dead node's
    actors may stay silent far longer than the controller takes to elect a new leader).

    ``replay_id`` (raystream's own) makes a *replay producer*: every producer created with the same
    ``replay_id`` is the same idempotent producer to the brokers (one producer id, recorded by the
    controller), and its sequence numbers count records from its start. Run again from the start — a
    retried Ray task — it must send the same records in the same order to the same partitions (batching
    may differ); the brokers then drop every record they already hold, so each is written once however
    often the run is repeated. Needs idempotence; two runs at once are safe (each record lands once).
    Used by ``rs.data.write_topic``, one replay id per write task."""

    def __init__(self, *, acks: int | str = "all", linger_ms: int = 5, batch_size: int = 1_048_576,
                 buffer_memory: int = 8 * DATA_PATH_BYTES, max_block_ms: int = 60_000,
                 max_request_size: int = DATA_PATH_BYTES, delivery_timeout_ms: int = 120_000,
                 request_timeout_ms: int = 30_000, retries: int = 2_147_483_647, retry_backoff_ms: int = 100,
                 max_in_flight_requests_per_connection: int = 5, metadata_max_age_ms: int = 300_000,
                 leader_recheck_ms: int = 1000,
                 key_serializer: Callable[[Any], Any] | None = None,
                 value_serializer: Callable[[Any], Any] | None = None, enable_idempotence: bool | None = None,
                 transactional_id: str | None = None, client_id: str | None = None, cluster: Any = None,
                 transport: BaseTransport | None = None, replay_id: str | None = None,
                 transaction_timeout_ms: int = 60_000) -> None:
        if acks not in _ACKS or isinstance(acks, bool):
            raise ValueError(f"acks must be 0, 1 or 'all', got {acks!r}")
        _check_config(linger_ms, request_timeout_ms, delivery_timeout_ms,
                      {"linger_ms": linger_ms, "max_block_ms": max_block_ms,
                       "request_timeout_ms": request_timeout_ms, "retries": retries,
                       "retry_backoff_ms": retry_backoff_ms, "delivery_timeout_ms": delivery_timeout_ms,
                       "metadata_max_age_ms": metadata_max_age_ms},
                      {"batch_size": batch_size, "buffer_memory": buffer_memory,
                       "max_request_size": max_request_size,
                       "max_in_flight_requests_per_connection": max_in_flight_requests_per_connection,
                       "leader_recheck_ms": leader_recheck_ms},
                      {"key_serializer": key_serializer, "value_serializer": value_serializer})
        if transactional_id is not None and (not isinstance(transactional_id, str) or not transactional_id):
            raise TypeError("transactional_id must be a non-empty str or None")
        _check_int("transaction_timeout_ms", transaction_timeout_ms, 1)
        mode = producer_mode(enable_idempotence, _ACKS[acks], retries, max_in_flight_requests_per_connection,
                             transactional_id, replay_id)
        self._transport = context.resolve(cluster, transport)
        global _instances
        _instances += 1
        self.client_id = client_id or f"producer-{_instances}"
        self.acks = _ACKS[acks]
        self.max_request_size = max_request_size
        self.max_block_ms = max_block_ms
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self._key_serializer = key_serializer
        self._value_serializer = value_serializer
        self._plain = key_serializer is None and value_serializer is None  # send's fast path applies
        self._fast_limit = min(max_request_size, buffer_memory)  # larger records take the general path
        self._rng = random.Random()
        self._metadata = MetadataCache(self._transport, request_timeout_ms=request_timeout_ms,
                                       retry_backoff_ms=retry_backoff_ms, max_age_ms=metadata_max_age_ms)
        self._acc = RecordAccumulator(batch_size=batch_size, linger_ms=linger_ms, buffer_memory=buffer_memory,
                                      max_block_ms=max_block_ms, delivery_timeout_ms=delivery_timeout_ms,
                                      rng=self._rng)
        self._txn = TransactionManager(mode, retry_backoff_ms=retry_backoff_ms,
                                       request_timeout_ms=request_timeout_ms, replay_id=replay_id,
                                       transactional_id=transactional_id)
        self._sender = Sender(self._acc, self._metadata, self._transport, self._txn, acks=self.acks,
                              retries=retries, retry_backoff_ms=retry_backoff_ms,
                              request_timeout_ms=request_timeout_ms, delivery_timeout_ms=delivery_timeout_ms,
                              name=f"raystream-{self.client_id}-sender",
                              max_in_flight=max_in_flight_requests_per_connection,
                              leader_recheck_ms=leader_recheck_ms)
        self._close_lock = threading.Lock()
        self._closed = False
        self._sender.start()

    # -- sending ---------------------------------------------------------------------------------------------
    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None,
             partition: int | None = None, timestamp: int | None = None) -> RecordFuture:
        """Queue one record; returns a future of its :class:`~raystream.protocol.RecordMetadata`.

        ``value``/``key``: bytes, str (UTF-8) or None, or anything the serializers accept. For a topic
        with a schema (Arrow-native), ``value`` is a mapping of column → value (one row) and the key, if
        not given, is taken from the topic's key column. ``headers``: mapping or list of (str, bytes|str).
        Raises RecordTooLargeError for a record above ``max_request_size``."""
        # Fast path — the common case: bytes/None key and value, no headers, partition, timestamp or
        # serializers, a cached schema-less topic. Same checks and outcome as the general path below.
        if (headers is None and partition is None and timestamp is None and type(topic) is str
                and (value is None or type(value) is bytes) and (key is None or type(key) is bytes)
                and self._plain and not self._closed):
            meta = self._metadata.cached(topic)
            if meta is not None and meta.schema_bytes is None:
                size = RECORD_OVERHEAD_BYTES + (len(key) if key else 0) + (len(value) if value else 0)
                if size <= self._fast_limit:
                    ts = time.time_ns() // 1_000_000
                    if key is None:
                        future = self._acc.append_sticky(topic, value, ts, size)
                        if future is not None:
                            return future
                    return self._acc.append(
                        topic, None if key is None else partition_for_key(key, len(meta.partitions)), meta,
                        RECORDS, key, value, None, ts, size)
        self._check_open()
        self._txn.check_send()
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty str, got {topic!r}")
        if partition is not None:
            _check_int("partition", partition)
        if timestamp is not None:
            _check_int("timestamp", timestamp)
        headers_list = normalize_headers(headers)
        meta = self._metadata.get(topic, timeout_s=self.max_block_ms / 1000)
        schema = meta.schema
        key_bytes = serialize(self._key_serializer, key, "key")
        if schema is None:
            kind, data = RECORDS, serialize(self._value_serializer, value, "value")
            size = record_size(key_bytes, data, headers_list)
        else:
            kind, data = ROWS, self._value_serializer(value) if self._value_serializer else value
            if not isinstance(data, Mapping):
                raise TypeError(f"topic {topic!r} has a schema: value must be a mapping of column -> value "
                                f"(or use send_batch), got {type(data).__name__}")
            if headers_list:
                raise ValueError(f"topic {topic!r} has a schema: its records carry no headers")
            data = dict(data)
            if key_bytes is None and meta.key_column is not None:
                raw = data.get(meta.key_column)  # hashed as its string form, as send_batch does
                key_bytes = None if raw is None else serialize(None, raw if isinstance(raw, (bytes, str))
                                                               else str(raw), "key")
            size = row_size(data)
        if size > self.max_request_size:
            raise RecordTooLargeError(f"record of about {size} bytes for {topic!r} exceeds "
                                      f"max_request_size={self.max_request_size}", size=size,
                                      limit=self.max_request_size)
        if size > self._acc.buffer_memory:
            raise RecordTooLargeError(f"record of about {size} bytes exceeds buffer_memory="
                                      f"{self._acc.buffer_memory}", size=size, limit=self._acc.buffer_memory)
        n_partitions = len(meta.partitions)
        if partition is not None:
            meta = self._check_partition(meta, partition)
        elif key_bytes is not None:
            partition = partition_for_key(key_bytes, n_partitions)
        ts = _now_ms() if timestamp is None else timestamp
        return self._acc.append(topic, partition, meta, kind, key_bytes, data, headers_list, ts, size, schema)

    def send_batch(self, topic: str, table: pa.Table | pa.RecordBatch, partition: int | None = None,
                   key_column: str | None = None) -> BatchFuture:
        """Send many rows at once, without converting them to Python. Returns a future of
        ``list[BatchMetadata]`` (one entry per produce request, in order).

        A topic without a schema takes a table with a ``value`` column and optional ``key``, ``timestamp``
        (int64 ms or an Arrow timestamp) and ``headers`` columns; a topic with a schema takes tables of
        that schema (plus an optional int64 ``_timestamp``). Rows go to ``partition`` if given; else by
        murmur2 of ``key_column`` (default: ``key``, or the topic's key column), vectorised; else all to
        one (sticky) partition. Large tables are cut into requests of at most ``max_request_size`` bytes."""
        self._check_open()
        self._txn.check_send()
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty str, got {topic!r}")
        if isinstance(table, list) or type(table).__name__ == "DataFrame":
            table = self._table_from_rows(topic, table)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise TypeError(f"table must be a pyarrow.Table or RecordBatch, got {type(table).__name__}")
        if partition is not None:
            _check_int("partition", partition)
        if key_column is not None and not isinstance(key_column, str):
            raise TypeError("key_column must be a str or None")
        meta = self._metadata.get(topic, timeout_s=self.max_block_ms / 1000)
        if meta.schema is None:
            data = record_table(table)
            key_column = key_column or ("key" if "key" in table.column_names else None)
            if key_column is not None and key_column not in ("key",):
                raise ValueError(f"topic {topic!r} has no schema: its key column is 'key', not {key_column!r}")
        else:
            data = table
            key_column = key_column or meta.key_column
        if key_column is not None and key_column not in data.column_names:
            raise ValueError(f"key_column {key_column!r} is not a column of the table {data.column_names}")
        if data.num_rows == 0:
            return BatchFuture([])
        if partition is not None:
            meta = self._check_partition(meta, partition)
            partitions: np.ndarray | int = partition
        elif key_column is not None:
            partitions = self._partitions_for(meta, data.column(key_column))
        else:
            partitions = self._acc.pick_partition(meta)
        pieces = split_by_partition(data, partitions, self.max_request_size)
        return BatchFuture([self._acc.append_arrow(TopicPartition(topic, p), piece) for p, piece in pieces])

    def _table_from_rows(self, topic: str, rows: Any) -> pa.Table:
        """A pandas DataFrame or a list of dicts as a table of the topic's schema (a mismatch is the
        SchemaMismatchError send_batch raises anyway, naming the fields)."""
        schema = self._metadata.get(topic, timeout_s=self.max_block_ms / 1000).schema
        try:
            if isinstance(rows, list):
                return pa.Table.from_pylist(rows, schema=schema)
            return pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
            raise SchemaMismatchError(f"rows do not fit the schema of {topic!r}: {exc}", fields=[]) from None

    def _partitions_for(self, meta: TopicMetadata, keys: pa.ChunkedArray) -> np.ndarray:
        parts = key_partitions(keys, len(meta.partitions))
        nulls = parts < 0
        if nulls.any():
            parts[nulls] = self._acc.pick_partition(meta)
        return parts

    def _check_partition(self, meta: TopicMetadata, partition: int) -> TopicMetadata:
        if partition < len(meta.partitions):
            return meta
        self._metadata.refresh([meta.name], timeout_s=self.max_block_ms / 1000, strict=True)
        meta = self._metadata.get(meta.name)
        if partition >= len(meta.partitions):
            raise UnknownTopicOrPartitionError(
                f"partition {partition} of topic {meta.name!r} does not exist ({len(meta.partitions)} "
                f"partitions)", topic=meta.name, partition=partition)
        return meta

    def partitions_for(self, topic: str) -> set[int]:
        """The partition numbers of ``topic`` (kafka-python's ``partitions_for``)."""
        self._check_open()
        return set(range(len(self._metadata.get(topic, timeout_s=self.max_block_ms / 1000).partitions)))

    # -- flush and close -------------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Send every record queued so far now (ignoring ``linger_ms``) and wait until each is acknowledged
        or failed (failures are reported on the records' futures). ``timeout`` (s) expiring raises
        ResultTimeoutError."""
        self._acc.begin_flush()
        try:
            left = self._acc.await_flush_completion(timeout)
            if left:
                raise ResultTimeoutError(f"flush did not complete within {timeout} s ({left} batch(es) pending)")
        finally:
            self._acc.end_flush()

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued, wait for it (up to ``timeout`` s; None waits as long as delivery takes),
        stop the sender thread. Records still unsent at the timeout fail with ClosedError. Idempotent."""
        with self._close_lock:
            first = not self._closed
            self._closed = True
        if first:
            self._sender.initiate_close()
        if threading.current_thread() is self._sender.thread:
            return  # called from a callback: the sender finishes on its own
        self._sender.thread.join(timeout)
        if self._sender.thread.is_alive():
            log.warning("producer %s: close timed out; failing unsent records", self.client_id)
            self._sender.force_close()
            self._sender.thread.join()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"producer {self.client_id} is closed")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def enable_idempotence(self) -> bool:
        """Whether this producer is idempotent (read-only: fixed by the configuration, see the module
        docstring)."""
        return self._txn.mode.sequenced

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- transactions --------------------------------------------------------------------------------------
    def init_transactions(self) -> None:
        """Register ``transactional_id`` with the transaction coordinator: aborts what an older producer
        with this id left open and fences it (its later requests fail with ProducerFencedError)."""
        self._check_open()
        if self.transactional_id is None:
            raise InvalidTxnStateError("init_transactions needs Producer(transactional_id=...)")
        producer_id, producer_epoch = self._transport.txn_call(
            "init_transactions", self.transactional_id, self.transaction_timeout_ms,
            timeout_s=self.max_block_ms / 1000)
        self._txn.initialized(producer_id, producer_epoch)

    def begin_transaction(self) -> None:
        self._check_open()
        self._txn.begin_transaction()

    def send_offsets_to_transaction(self, offsets: Mapping[TopicPartition, Any], group_id: str) -> None:
        """Commit ``offsets`` (tp → next offset to consume, or ``OffsetAndMetadata``) for ``group_id`` with
        the open transaction: they take effect if and only if it commits (consume-transform-produce)."""
        self._check_txn_open("send_offsets_to_transaction")
        if not isinstance(group_id, str) or not group_id:
            raise TypeError(f"group_id must be a non-empty str, got {group_id!r}")
        converted = {}
        for tp, value in dict(offsets).items():
            offset, metadata = (value, "") if isinstance(value, int) else (value.offset, value.metadata or "")
            converted[tp] = (offset, metadata)
        self._transport.txn_call("add_offsets_to_txn", *self._txn.coordinator_args(), group_id, converted,
                                 timeout_s=self.max_block_ms / 1000)

    def commit_transaction(self) -> None:
        """Flush, then commit: every record sent in the transaction becomes visible to read_committed
        consumers at once, with the offsets given to send_offsets_to_transaction. Raises the first error of
        a failed batch instead (then only abort_transaction is allowed)."""
        self._check_txn_open("commit_transaction")
        self.flush()
        self._txn.check_committable()
        self._end_transaction(commit=True)

    def abort_transaction(self) -> None:
        """Abort: read_committed consumers never see what the transaction wrote."""
        self._check_txn_open("abort_transaction")
        try:
            self.flush()
        except Exception as exc:  # what failed is aborted anyway
            log.info("flush before abort failed: %s", exc)
        self._end_transaction(commit=False)

    def _end_transaction(self, commit: bool) -> None:
        self._transport.txn_call("end_txn", *self._txn.coordinator_args(), commit,
                                 timeout_s=self.max_block_ms / 1000)
        self._txn.ended()

    def _check_txn_open(self, what: str) -> None:
        self._check_open()
        self._txn.check_open(what)
