"""The one module of the client that knows Ray: calls to the controller and to partition replicas, with
Ray's exceptions mapped to :mod:`raystream.errors` in :func:`map_ray_error` — nowhere else.

Mapping:

* an error raised inside an actor (``RayTaskError``) → the original exception (``.cause``), e.g.
  ``NotLeaderError``; its ``retriable`` / ``invalid_metadata`` flags drive the clients' retry loops;
* a dead or unreachable actor (``ActorDiedError``, ``ActorUnavailableError``, any ``RayActorError``) or a
  replica actor that does not exist → ``LeaderNotAvailableError`` (retriable, invalid metadata);
* ``ray.get`` timing out → ``RequestTimeoutError``;
* any other Ray error → ``RaystreamError`` naming it.

Replica handles are looked up by name (:func:`raystream.protocol.replica_actor_name`) and cached; an entry
is dropped whenever a call through it fails, so the next call looks the actor up again.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Any

import pyarrow as pa
import ray
import ray.exceptions as rex

from raystream import errors, handles
from raystream.client.base import BaseTransport, failed_future
from raystream.protocol import (
    BrokerInfo,
    ClusterConfig,
    DeleteRecordsRequest,
    FetchRequest,
    FetchResult,
    ListOffsetsRequest,
    ProduceRequest,
    ProduceResult,
    TopicDescription,
    TopicMetadata,
    TopicPartition,
)


def map_ray_error(exc: BaseException, what: str) -> BaseException:
    """The raystream error for an exception a Ray call raised (``what`` names the call for messages)."""
    if isinstance(exc, errors.RaystreamError) and not isinstance(exc, rex.RayError):
        return exc
    if isinstance(exc, rex.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            return cause
        return errors.RaystreamError(f"{what} failed: {exc}")
    if isinstance(exc, rex.RayActorError):  # ActorDiedError, ActorUnavailableError
        return errors.LeaderNotAvailableError(f"{what}: actor unavailable ({type(exc).__name__}: {exc})")
    if isinstance(exc, rex.GetTimeoutError):
        return errors.RequestTimeoutError(f"{what} timed out")
    if isinstance(exc, rex.RayError):
        return errors.RaystreamError(f"{what} failed: {type(exc).__name__}: {exc}")
    return exc


class RayTransport(BaseTransport):
    """Requests to one raystream cluster over Ray. Thread-safe (the handle cache has its own lock)."""

    def __init__(self, controller: Any, cluster: str) -> None:
        self.controller = controller
        self.cluster = cluster
        self._replicas: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, cluster: str) -> RayTransport:
        """Find the controller of a running cluster (Ray must already be initialised in this process)."""
        if not ray.is_initialized():
            raise errors.ClusterNotFoundError("call raystream.init() first")
        try:
            controller = handles.get_controller(cluster)
        except ValueError as exc:
            raise errors.ClusterNotFoundError(f"no raystream cluster named {cluster!r} is running") from exc
        return cls(controller, cluster)

    # -- controller ------------------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        what = f"controller.{method}"
        try:
            return ray.get(getattr(self.controller, method).remote(*args), timeout=timeout_s)
        except Exception as exc:
            mapped = map_ray_error(exc, what)
            if mapped is exc:
                raise
            raise mapped from None

    def get_metadata(self, topics: list[str] | None = None,
                     timeout_s: float | None = None) -> dict[str, TopicMetadata]:
        return self._call("get_metadata", topics, timeout_s=timeout_s)

    def get_brokers(self, timeout_s: float | None = None) -> dict[int, BrokerInfo]:
        return self._call("get_brokers", timeout_s=timeout_s)

    def create_topic(self, name: str, partitions: int | None, replication_factor: int | None,
                     config: dict[str, Any] | None = None, schema_bytes: bytes | None = None,
                     key_column: str | None = None, timeout_s: float | None = None,
                     creation_id: str | None = None) -> TopicMetadata:
        return self._call("create_topic", name, partitions, replication_factor, config, schema_bytes, key_column,
                          creation_id, timeout_s=timeout_s)

    def delete_topic(self, name: str, timeout_s: float | None = None) -> None:
        self._call("delete_topic", name, timeout_s=timeout_s)

    def list_topics(self, timeout_s: float | None = None) -> list[str]:
        return self._call("list_topics", timeout_s=timeout_s)

    def describe_topic(self, name: str, timeout_s: float | None = None) -> TopicDescription:
        return self._call("describe_topic", name, timeout_s=timeout_s)

    def alter_topic_config(self, name: str, config: dict[str, Any], timeout_s: float | None = None) -> Any:
        return self._call("alter_topic_config", name, config, timeout_s=timeout_s)

    def create_partitions(self, name: str, total: int, timeout_s: float | None = None) -> Any:
        return self._call("create_partitions", name, total, timeout_s=timeout_s)

    def alter_topic_schema(self, name: str, schema_bytes: bytes, timeout_s: float | None = None) -> Any:
        return self._call("alter_topic_schema", name, schema_bytes, timeout_s=timeout_s)

    def get_cluster_config(self, timeout_s: float | None = None) -> ClusterConfig:
        return self._call("get_cluster_config", timeout_s=timeout_s)

    def init_producer_id(self, timeout_s: float | None = None, replay_id: str | None = None) -> tuple[int, int]:
        args = () if replay_id is None else (replay_id,)
        producer_id, producer_epoch = self._call("init_producer_id", *args, timeout_s=timeout_s)
        return int(producer_id), int(producer_epoch)

    _GROUP_METHODS = frozenset({"join_group", "join_group_classic", "sync_group_classic", "heartbeat_group",
                                "leave_group", "commit_offsets", "fetch_offsets", "list_groups",
                                "describe_group_state", "reset_group_offsets", "delete_group"})

    _TXN_METHODS = frozenset({"init_transactions", "add_partitions_to_txn", "add_offsets_to_txn", "end_txn"})

    def txn_call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        if method not in self._TXN_METHODS:
            raise ValueError(f"not a transaction coordinator method: {method!r}")
        return self._call(method, *args, timeout_s=timeout_s)

    def txn_submit(self, method: str, *args: Any) -> Future:
        if method not in self._TXN_METHODS:
            raise ValueError(f"not a transaction coordinator method: {method!r}")
        return _as_future(lambda: getattr(self.controller, method).remote(*args), f"controller.{method}")

    def group_call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        if method not in self._GROUP_METHODS:
            raise ValueError(f"not a group coordinator method: {method!r}")
        return self._call(method, *args, timeout_s=timeout_s)

    def group_submit(self, method: str, *args: Any) -> Future:
        if method not in self._GROUP_METHODS:
            raise ValueError(f"not a group coordinator method: {method!r}")
        return _as_future(lambda: getattr(self.controller, method).remote(*args), f"controller.{method}")

    # -- replicas --------------------------------------------------------------------------------------------
    def _replica(self, key: tuple[str, int, int]) -> Any:
        with self._lock:
            handle = self._replicas.get(key)
        if handle is None:
            topic, partition, broker = key
            try:
                handle = handles.get_replica(self.cluster, topic, partition, broker)
            except ValueError as exc:
                raise errors.LeaderNotAvailableError(
                    f"no replica of {topic}-{partition} on broker {broker}") from exc
            with self._lock:
                self._replicas[key] = handle
        return handle

    def _forget(self, key: tuple[str, int, int]) -> None:
        with self._lock:
            self._replicas.pop(key, None)

    def _submit(self, tp: TopicPartition, broker_id: int, method: str, request: Any) -> Future:
        """Send one request object (:mod:`raystream.protocol`) to the replica's remote ``method``."""
        key = (tp.topic, tp.partition, broker_id)
        return _as_future(lambda: getattr(self._replica(key), method).remote(request),
                          f"{method} {tp} on broker {broker_id}", on_error=lambda: self._forget(key))

    def produce(self, tp: TopicPartition, broker_id: int, batch: pa.RecordBatch, acks: int, timeout_ms: int,
                leader_epoch: int | None = None, producer_id: int = -1, producer_epoch: int = -1,
                base_sequence: int = -1, replay: bool = False, transactional: bool = False
                ) -> Future[ProduceResult]:
        return self._submit(tp, broker_id, "produce", ProduceRequest(
            batch, acks, timeout_ms, leader_epoch, producer_id, producer_epoch, base_sequence, replay,
            transactional))

    def fetch(self, tp: TopicPartition, broker_id: int, offset: int, max_bytes: int, max_wait_ms: int,
              min_bytes: int, columns: list[str] | None = None,
              leader_epoch: int | None = None, row_filter: Any = None,
              read_committed: bool = False) -> Future[FetchResult]:
        return self._submit(tp, broker_id, "fetch", FetchRequest(
            offset, max_bytes, max_wait_ms, min_bytes, columns, leader_epoch, row_filter, read_committed))

    def list_offset(self, tp: TopicPartition, broker_id: int, spec: int,
                    read_committed: bool = False) -> Future[int]:
        return self._submit(tp, broker_id, "list_offset", ListOffsetsRequest(spec, read_committed))

    def delete_records(self, tp: TopicPartition, broker_id: int, offset: int, timeout_ms: int,
                       leader_epoch: int | None = None) -> Future[int]:
        return self._submit(tp, broker_id, "delete_records", DeleteRecordsRequest(offset, timeout_ms, leader_epoch))


def _as_future(call, what: str, on_error=None) -> Future:
    """Run ``call`` (which returns an ObjectRef) and give its answer as a ``concurrent.futures.Future`` that
    fails with raystream errors only (:func:`map_ray_error`); ``on_error`` runs first on any failure."""
    try:
        ref = call()
        ray_future = ref.future()
    except Exception as exc:
        if on_error is not None:
            on_error()
        return failed_future(map_ray_error(exc, what))
    out: Future = Future()
    out._raystream_ref = ref  # type: ignore[attr-defined]  # keep the object alive until resolved

    def resolve(done: Future) -> None:
        exc = done.exception()
        if exc is not None and on_error is not None:
            on_error()
        # The caller may have cancelled ``out`` meanwhile (asyncio.wrap_future does when a gateway request is
        # abandoned): then nobody hears the answer.
        with contextlib.suppress(InvalidStateError):
            if exc is None:
                out.set_result(done.result())
            else:
                out.set_exception(map_ray_error(exc, what))

    ray_future.add_done_callback(resolve)
    return out


#: The name the design notes use; one class.
Transport = RayTransport
