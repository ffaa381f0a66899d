"""The transport interface every client programs against — and nothing about Ray.

A transport carries requests to the controller (blocking calls: metadata and admin) and to partition
replicas (asynchronous calls returning :class:`concurrent.futures.Future`, so a producer can keep one
request in flight per partition and a consumer can prefetch). Implementations must deliver failures as
:mod:`raystream.errors` exceptions (or the ``TypeError``/``ValueError`` a replica raised), never as
transport-specific ones: :class:`raystream.client.transport.RayTransport` maps Ray's exceptions in one place,
and the unit tests use an in-process fake.
"""

from __future__ import annotations

import abc
import threading
from concurrent.futures import Future
from typing import Any

import pyarrow as pa

from raystream.protocol import (
    BrokerInfo,
    ClusterConfig,
    FetchResult,
    ProduceResult,
    TopicDescription,
    TopicMetadata,
    TopicPartition,
)


class BaseTransport(abc.ABC):
    """Requests to one raystream cluster. Implementations are thread-safe (producers call from their sender
    thread, consumers from the user's thread, both at once)."""

    cluster: str

    # -- controller (blocking; ``timeout_s=None`` waits forever; expiry raises RequestTimeoutError) -----------
    @abc.abstractmethod
    def get_metadata(self, topics: list[str] | None = None,
                     timeout_s: float | None = None) -> dict[str, TopicMetadata]: ...

    @abc.abstractmethod
    def get_brokers(self, timeout_s: float | None = None) -> dict[int, BrokerInfo]: ...

    @abc.abstractmethod
    def create_topic(self, name: str, partitions: int | None, replication_factor: int | None,
                     config: dict[str, Any] | None = None, schema_bytes: bytes | None = None,
                     key_column: str | None = None, timeout_s: float | None = None,
                     creation_id: str | None = None) -> TopicMetadata:
        """Create a topic; ``creation_id`` makes the call idempotent: the same id again (a retry) answers
        with the topic it created instead of TopicAlreadyExistsError."""

    @abc.abstractmethod
    def delete_topic(self, name: str, timeout_s: float | None = None) -> None: ...

    @abc.abstractmethod
    def list_topics(self, timeout_s: float | None = None) -> list[str]: ...

    @abc.abstractmethod
    def describe_topic(self, name: str, timeout_s: float | None = None) -> TopicDescription: ...

    @abc.abstractmethod
    def alter_topic_config(self, name: str, config: dict[str, Any], timeout_s: float | None = None) -> Any: ...

    @abc.abstractmethod
    def create_partitions(self, name: str, total: int, timeout_s: float | None = None) -> Any: ...

    def get_cluster_config(self, timeout_s: float | None = None) -> ClusterConfig:
        """The controller's broker settings and topic defaults (transports without it raise
        NotImplementedError)."""
        raise NotImplementedError(f"{type(self).__name__} cannot describe the cluster's configs")

    def alter_topic_schema(self, name: str, schema_bytes: bytes, timeout_s: float | None = None) -> Any:
        """Evolve an Arrow-native topic's schema (transports without it raise NotImplementedError)."""
        raise NotImplementedError(f"{type(self).__name__} cannot alter schemas")

    @abc.abstractmethod
    def init_producer_id(self, timeout_s: float | None = None, replay_id: str | None = None) -> tuple[int, int]:
        """A new idempotent-producer id from the controller: ``(producer_id, producer_epoch)`` (with
        ``replay_id``: the one recorded for that replay producer)."""

    def txn_call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call a transaction-coordinator method of the controller (``init_transactions``,
        ``add_partitions_to_txn``, ``add_offsets_to_txn``, ``end_txn``). Transports without transactions
        raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} has no transaction coordinator")

    def txn_submit(self, method: str, *args: Any) -> Future:
        """:meth:`txn_call` without blocking: a future of its answer (the producer's sender keeps its
        AddPartitionsToTxn in flight while other partitions send). Transports without transactions answer
        with a future failed with NotImplementedError; a transport with them implements both."""
        return failed_future(NotImplementedError(f"{type(self).__name__} has no transaction coordinator"))

    # -- consumer groups (the controller's group coordinator; see raystream.actors.groups) --------------------
    def group_call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call a group-coordinator method of the controller (``join_group``, ``heartbeat_group``,
        ``leave_group``, ``commit_offsets``, ``fetch_offsets``, ``list_groups``, ``describe_group_state``,
        ``reset_group_offsets``, ``delete_group``). Transports without groups raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} has no group coordinator")

    def group_submit(self, method: str, *args: Any) -> Future:
        """:meth:`group_call` without blocking: a future of its answer (a consumer's join stays in flight
        across polls). This default runs the blocking call on a thread of its own."""
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(self.group_call(method, *args))
            except BaseException as exc:  # delivered through the future
                future.set_exception(exc)

        threading.Thread(target=run, daemon=True, name=f"raystream-{method}").start()
        return future

    # -- partition replicas (asynchronous) --------------------------------------------------------------------
    @abc.abstractmethod
    def produce(self, tp: TopicPartition, broker_id: int, batch: pa.RecordBatch, acks: int, timeout_ms: int,
                leader_epoch: int | None = None, producer_id: int = -1, producer_epoch: int = -1,
                base_sequence: int = -1, replay: bool = False, transactional: bool = False
                ) -> Future[ProduceResult]:
        """Produce ``batch`` to the leader; an idempotent producer passes its id, epoch and the batch's first
        sequence number (a retry of a batch already written answers with the original offsets); ``replay``
        marks a replay producer's batch (records the log already holds are dropped); ``transactional`` a
        batch of the producer's open transaction."""

    @abc.abstractmethod
    def fetch(self, tp: TopicPartition, broker_id: int, offset: int, max_bytes: int, max_wait_ms: int,
              min_bytes: int, columns: list[str] | None = None,
              leader_epoch: int | None = None, row_filter: Any = None,
              read_committed: bool = False) -> Future[FetchResult]: ...

    @abc.abstractmethod
    def list_offset(self, tp: TopicPartition, broker_id: int, spec: int,
                    read_committed: bool = False) -> Future[int]: ...

    def delete_records(self, tp: TopicPartition, broker_id: int, offset: int, timeout_ms: int,
                       leader_epoch: int | None = None) -> Future[int]:
        """Kafka's DeleteRecords on the leader: move the log start offset to ``offset`` (-1: the high
        watermark); the future's answer is the partition's low watermark once every in-sync replica has moved
        (``PartitionReplica.delete_records``). Transports without it answer a future failed with
        NotImplementedError."""
        return failed_future(NotImplementedError(f"{type(self).__name__} cannot delete records"))


def failed_future(exc: BaseException) -> Future:
    """A future that already failed with ``exc`` (for errors found before a request could be sent)."""
    future: Future = Future()
    future.set_exception(exc)
    return future
