"""The partition replica actor: one per (topic, partition, broker), owning that replica's segment log.

Roles, produce, fetch, admin and housekeeping live here; replication (push, driven by the leader) in
:class:`raystream.actors.replication.ReplicationMixin`. The decisions are the pure core's
(:class:`raystream.core.partition.Partition`: roles, leader/epoch, acks and min-ISR checks, idempotent
outcomes, acks=all readiness, fetch limits, ISR proposals, the high watermark): methods here decode the
request (:mod:`raystream.protocol`), ask the core and the log, and perform the effects (append, signal,
wait, send).

Concurrency: an async actor. All log access happens on its event loop (the log is also lock-protected),
except compaction, which runs in a worker thread (see ``raystream.storage.cleaner``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import ray

from raystream import handles, metrics
from raystream.actors import logs
from raystream.actors.producer_ids import (
    PRODUCER_ID_EXPIRATION_CHECK_INTERVAL_MS,
    REORDER_WAIT_MS,
    ReplicaProducerState,
)
from raystream.actors.replication import ReplicationMixin
from raystream.clock import now_ms as _now_ms
from raystream.config import BrokerConfig, TopicConfig
from raystream.core.partition import APPEND, Partition, ProduceDecision, dedup_outcome
from raystream.errors import RequestTimeoutError
from raystream.protocol import (
    DeleteRecordsRequest,
    FetchRequest,
    FetchResult,
    ListOffsetsRequest,
    ProduceRequest,
    ProduceResult,
    ReplicaDescription,
    Role,
)
from raystream.record import ATTR_TRANSACTIONAL, OFFSET_COLUMN, TIMESTAMP_COLUMN
from raystream.storage.cleaner import compact
from raystream.storage.log import Log
from raystream.storage.schema_evolution import compatibility_problems, evolve

log = logging.getLogger(__name__)



class _NoPandas:
    """A meta-path finder that reports pandas as not installed (see :func:`_keep_pandas_out`)."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"pandas is kept out of raystream replica processes ({name})")
        return None


def _keep_pandas_out() -> None:
    """Make ``import pandas`` fail in this (replica-only) process.

    pyarrow asks its pandas shim whether an input is a pandas object on nearly every conversion
    (``pa.array``, ``to_numpy``, compute calls with scalars), and the first question imports pandas when it
    is installed: ~0.25 s of CPU, more under load, paid by every replica process on its first produce and
    during topic start-up. Nothing a replica runs needs pandas, and Ray gives each actor a process of its
    own, so a finder that reports pandas missing (the shim then records "no pandas") touches no user code.
    Never call this outside an actor's own process.
    """
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())  # type: ignore[arg-type]


class PartitionReplica(ReplicationMixin):
    def __init__(self, cluster: str, topic: str, partition: int, broker_id: int, log_dir: str,
                 config: dict[str, Any], schema_bytes: bytes | None, key_column: str | None,
                 controller_name: str, broker_config: dict[str, Any], schema_id: int = 0) -> None:
        _keep_pandas_out()
        logs.configure()
        self.cluster, self.topic, self.partition, self.broker_id = cluster, topic, partition, broker_id
        self.name = f"{topic}-{partition} broker={broker_id}"
        self.metrics = metrics.ReplicaMetrics(topic, partition, broker_id)  # see raystream.metrics
        self.broker_config = BrokerConfig(**broker_config)
        schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes)) if schema_bytes else None
        reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        lost_data = reconstructed and not os.path.isdir(log_dir)  # a lost disk: must not lead or count as ISR
        self.log = Log(log_dir, TopicConfig.from_dict(config), schema=schema, key_column=key_column or "key",
                       now=_now_ms())
        self.schema_id = schema_id  # of the topic's current schema (0: never evolved)
        if schema is not None and schema_id > 0 and not self.log.schema.equals(schema):
            self.log.change_schema(schema)  # evolved while this replica was down
        self.producers = ReplicaProducerState(self.log, self.name)  # idempotence: snapshot + replay on open
        self.state = Partition(self.name, broker_id, high_watermark=self.log.high_watermark)
        self.controller_name = controller_name
        self._replicators: dict[int, asyncio.Task] = {}
        self._housekeeping: asyncio.Task | None = None
        self._data_event: asyncio.Event | None = None
        self._hw_event: asyncio.Event | None = None
        self._shared_refs: OrderedDict[tuple[int, int], ray.ObjectRef] = OrderedDict()
        self._push_positions: dict[int, int] = {}  # follower broker -> where its next push starts
        self._isr_tasks: set[asyncio.Task] = set()  # ISR expansions in flight (held: tasks are weakly kept)
        self._rejoin: asyncio.Task | None = None
        if reconstructed:
            # A new incarnation of this replica (Ray restarted the process): it holds no role, and if it
            # led, its followers' progress is gone. Ask the controller at once instead of waiting to be
            # noticed (see raystream.actors.failover).
            self._rejoin = asyncio.get_running_loop().create_task(self._rejoin_loop(lost_data))
        rep = self.log.recovery_report
        log.info("[%s] opened log %s (clean=%s, truncated=%d bytes)", self.name, self.log, rep.clean_shutdown,
                 rep.truncated_bytes)

    # -- events (created lazily: they must belong to the actor's event loop) -----------------------------
    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self._data_event is None:
            self._data_event, self._hw_event = asyncio.Event(), asyncio.Event()
        return self._data_event, self._hw_event

    def _signal(self, which: str) -> None:
        """Wake everyone waiting on new data or a new high watermark (events are one-shot, then renewed)."""
        data, hw = self._events()
        if which == "data":
            self._data_event = asyncio.Event()
            data.set()
        else:
            self._hw_event = asyncio.Event()
            hw.set()

    @metrics.long_poll_wait  # not fetch latency
    async def _wait(self, which: str, timeout_s: float) -> None:
        data, hw = self._events()
        event = data if which == "data" else hw
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout_s, 0))
        except asyncio.TimeoutError:
            pass

    # -- roles ---------------------------------------------------------------------------------------------
    async def become_leader(self, epoch: int, replicas: list[int], isr: list[int], partition_epoch: int) -> int:
        if self.state.role is Role.LEADER and epoch == self.state.leader_epoch:
            # Same epoch: only the ISR changed (the controller fenced a failed follower). Keep replicating.
            self.state.apply_isr(tuple(isr), partition_epoch)
            self._advance_high_watermark()
            self._signal("hw")
            return self.log.log_end_offset
        self.state.become_leader(epoch, tuple(replicas), tuple(isr), partition_epoch, self.log.log_end_offset,
                                 self.log.high_watermark, _now_ms())
        self._stop_replicators()
        for broker in replicas:
            if broker != self.broker_id:
                self._replicators[broker] = asyncio.get_running_loop().create_task(
                    self._replicate_loop(broker, epoch))
        self._advance_high_watermark()
        self._start_housekeeping()
        log.info("[%s] became leader at epoch %d (isr %s)", self.name, epoch, isr)
        return self.log.log_end_offset

    async def become_follower(self, epoch: int, leader: int, replicas: list[int]) -> int:
        self.state.become_follower(epoch, leader, tuple(replicas))
        self._stop_replicators()
        self._signal("hw")  # acks=all waiters re-check their role and fail with NotLeaderError
        self._start_housekeeping()
        log.info("[%s] became follower of broker %d at epoch %d", self.name, leader, epoch)
        return self.log.log_end_offset

    def _stop_replicators(self) -> None:
        for task in self._replicators.values():
            task.cancel()
        self._replicators.clear()
        self._shared_refs.clear()
        self._push_positions.clear()

    async def _rejoin_loop(self, lost_data: bool) -> None:
        """Ask the controller for this replica's role until it answers (it may be restarting too)."""
        backoff_s = self.broker_config.replica_retry_backoff_ms / 1000
        while self.state.role is Role.OFFLINE:
            try:
                controller = handles.get_named(self.controller_name)
                ps = await controller.rejoin.remote(self.topic, self.partition, self.broker_id, lost_data)
                if ps is None:
                    log.warning("[%s] no longer a replica of this partition; staying offline", self.name)
                    return
                if self.state.role is Role.OFFLINE or ps.leader_epoch > self.state.leader_epoch:
                    await self._apply_partition_state(ps)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # controller restarting: retry
                log.info("[%s] rejoin failed (%s); retrying", self.name, type(exc).__name__)
                await asyncio.sleep(backoff_s)

    async def _apply_partition_state(self, ps) -> None:
        if ps.leader == self.broker_id:
            await self.become_leader(ps.leader_epoch, list(ps.replicas), list(ps.isr), ps.partition_epoch)
        elif self.broker_id in ps.replicas:
            await self.become_follower(ps.leader_epoch, ps.leader, list(ps.replicas))

    async def _ensure_role(self) -> None:
        """A request that reaches a just-restarted replica waits (briefly) for its rejoin to finish."""
        if self.state.role is Role.OFFLINE and self._rejoin is not None and not self._rejoin.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._rejoin),
                                       self.broker_config.replica_session_timeout_ms / 1000)
            except asyncio.TimeoutError:
                pass  # check_leader answers NotLeaderError: the client refreshes metadata and retries

    # -- produce -------------------------------------------------------------------------------------------
    @metrics.produce_request
    async def produce(self, request: ProduceRequest) -> ProduceResult:
        """Append ``request.batch`` as the leader; with acks=all, answer once the high watermark covers it.

        The decisions are the core's (:mod:`raystream.core.partition`): leader/epoch, acks and
        min.insync.replicas checks, the idempotent outcome (``dedup_outcome``: append, append a replay's
        tail, or answer a duplicate with its original offsets after the same acks=all wait) and the acks=all
        answer (``Partition.ack_ready``). Ray starts an async actor's requests as their arguments arrive, so
        a producer's pipelined requests can arrive out of order: a batch whose sequence is *ahead* of the
        expected one waits (up to ``REORDER_WAIT_MS``) for the batches before it, then is checked again.
        Concurrency: the final check, the append and the state update run with no ``await`` between them,
        so each producer's batches are checked and applied one at a time, in sequence order.
        """
        await self._ensure_role()
        min_isr = self.log.config.min_insync_replicas
        self.state.check_produce(request.acks, request.leader_epoch, min_isr)
        decision = await self._check_producer(request)
        if decision.append:
            result, last_offset = self._append(request, decision.skip)
        else:
            result, last_offset = decision.result, decision.last_offset
        if request.acks == -1:
            await self._await_replicated(last_offset, request.timeout_ms, min_isr, "offset")
        return result

    async def _check_producer(self, request: ProduceRequest) -> ProduceDecision:
        """The idempotent check (a plain batch, or an empty one the append rejects, is just appended).
        Returns without suspending after its final check: the append follows with no await."""
        if request.producer_id < 0 or not request.batch.num_rows:
            return APPEND
        check = await self.producers.check_in_order(
            request.producer_id, request.producer_epoch, request.base_sequence, request.batch.num_rows,
            lambda s: self._wait("data", s), min(request.timeout_ms / 2, REORDER_WAIT_MS) / 1000,
            lambda: self.state.check_leader(request.leader_epoch), request.replay)
        return dedup_outcome(check, request.batch.num_rows, self.log.log_start_offset,
                             self.log.config.message_timestamp_type == "LogAppendTime")

    def _append(self, request: ProduceRequest, skip: int) -> tuple[ProduceResult, int]:
        """Append the batch (from record ``skip`` on) as the leader, record it, wake waiters."""
        batch, base_sequence = request.batch, request.base_sequence
        if skip:
            batch, base_sequence = batch.slice(skip), base_sequence + skip
        idempotent = request.producer_id >= 0
        info = self.log.append(
            self._current_schema(batch), leader_epoch=self.state.leader_epoch, now=_now_ms(),
            producer_id=request.producer_id if idempotent else -1,
            producer_epoch=request.producer_epoch if idempotent else -1,  # plain: no stray producer fields
            base_sequence=base_sequence if idempotent else -1, schema_id=self.schema_id,
            attributes=ATTR_TRANSACTIONAL if request.transactional and idempotent else 0)
        self.producers.record(info.header)
        self.metrics.produced(batch.nbytes, info.record_count)
        self._signal("data")
        self._advance_high_watermark()
        return ProduceResult(info.base_offset, info.log_append_time, self.log.log_start_offset,
                             info.record_count, info.max_timestamp), info.last_offset

    async def _await_replicated(self, last_offset: int, timeout_ms: int, min_isr: int | None, what: str) -> None:
        """The acks=all wait (produce, its duplicates, transaction markers): until the core says the write
        ending at ``last_offset`` is replicated (``Partition.ack_ready``, which also raises NotLeaderError
        and NotEnoughReplicasAfterAppendError), or RequestTimeoutError after ``timeout_ms``."""
        await self._wait_until(lambda: self.state.ack_ready(last_offset, min_isr), timeout_ms, lambda: (
            f"[{self.name}] {what} {last_offset} not replicated to ISR {list(self.state.isr)} within {timeout_ms} ms"))

    async def _wait_until(self, ready: Callable[[], bool], timeout_ms: int, timed_out: Callable[[], str]) -> None:
        """Wait until ``ready()`` (checked again at every replication signal: the high watermark moved, a
        follower answered with a new log start offset, the role changed), or raise RequestTimeoutError with
        the message ``timed_out()`` after ``timeout_ms``. ``ready`` may raise (NotLeaderError)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeoutError(timed_out())
            await self._wait("hw", remaining)

    def _advance_high_watermark(self) -> None:
        """Leader: the core recomputes the high watermark; the log persists the value it hands over."""
        if self.state.update_high_watermark(self.log.log_end_offset):
            self.log.set_high_watermark(self.state.high_watermark)
            self._signal("hw")

    # -- fetch ---------------------------------------------------------------------------------------------
    @metrics.fetch_request  # latency (without long-poll waits), records and bytes out
    async def fetch(self, request: FetchRequest) -> FetchResult:
        """Long-poll read for consumers: waits up to ``max_wait_ms`` for ``min_bytes`` below the HW.
        ``columns`` (projection) and ``row_filter`` (a ``pyarrow.compute.Expression``) are applied here, so
        unselected columns and rows never cross Ray; ``next_offset`` still moves past filtered-out rows.
        ``read_committed``: only below the last stable offset, without aborted transactions' batches."""
        await self._ensure_role()
        self.state.check_leader(request.leader_epoch)
        columns = request.columns
        if columns is not None:
            columns = [OFFSET_COLUMN, TIMESTAMP_COLUMN] + [c for c in columns if c not in
                                                          (OFFSET_COLUMN, TIMESTAMP_COLUMN)]
        exclude = self.producers.manager.is_aborted if request.read_committed else None
        deadline = time.monotonic() + request.max_wait_ms / 1000
        batches: list[pa.RecordBatch] = []
        skipped = size = 0
        position = request.offset  # moves past what was scanned, so a wait does not re-read rejected rows
        while True:
            hw = self.state.high_watermark
            limit = self.last_stable_offset() if request.read_committed else hw
            self.state.check_fetch_position(position, self.log.log_start_offset, self.log.log_end_offset,
                                            f"{self.topic}-{self.partition}")
            if position < limit:
                # A filter that does not fit the topic's columns raises ValueError naming the partition.
                read = self.log.read_filtered(position, request.max_bytes, limit, columns, request.row_filter,
                                              exclude)
                batches.extend(read.batches)
                position, skipped = read.next_offset, skipped + read.batches_skipped
                size = sum(b.get_total_buffer_size() for b in batches)
            remaining = deadline - time.monotonic()
            if size >= request.min_bytes or remaining <= 0:
                break
            await self._wait("hw", remaining)
            self.state.check_leader(request.leader_epoch)
        # The batches are zero-copy views of segment files; Ray serialises them into the object store as
        # this coroutine returns. Only a follower truncates its log, and fetch is served by leaders, so the
        # views stay valid (a demotion racing this return is the one window; see storage.segment).
        return FetchResult(batches, hw, self.log.log_start_offset, self.log.log_end_offset, position, size,
                           skipped, self.last_stable_offset())

    def last_stable_offset(self) -> int:
        """Kafka's LSO: the high watermark, or the first offset of the oldest open transaction if lower."""
        return self.state.fetch_limit(True, self.producers.manager.first_unstable_offset())

    async def write_txn_marker(self, producer_id: int, producer_epoch: int, commit: bool,
                               timeout_ms: int) -> int:
        """The transaction coordinator ends ``producer_id``'s transaction here: append a COMMIT or ABORT
        marker (when the producer has an open transaction; a repeated marker request is a no-op, -1) and
        answer once the ISR has it. Raises NotLeaderError on a follower."""
        await self._ensure_role()
        self.state.check_leader(None)
        entry = self.producers.manager.entry(producer_id)
        if entry is None or entry.current_txn_first_offset is None:
            return -1
        info = self.log.append_marker(producer_id, producer_epoch, commit, leader_epoch=self.state.leader_epoch,
                                      now=_now_ms())
        self.producers.record(info.header)
        self._signal("data")
        self._advance_high_watermark()
        self._signal("hw")  # the last stable offset may have moved even if the high watermark did not
        await self._await_replicated(info.last_offset, timeout_ms, None, "transaction marker at")
        return info.base_offset

    async def list_offset(self, request: ListOffsetsRequest) -> int:
        """Kafka's ListOffsets: EARLIEST, LATEST (the high watermark; the LSO for ``read_committed``) or
        the first offset whose timestamp is >= ``spec`` (-1 if none below that bound)."""
        await self._ensure_role()
        self.state.check_leader(None)
        limit = self.last_stable_offset() if request.read_committed else self.state.high_watermark
        return self.state.list_offset(request.spec, limit, self.log.log_start_offset,
                                      self.log.offset_for_timestamp)

    async def delete_records(self, request: DeleteRecordsRequest) -> int:
        """Kafka's DeleteRecords on the leader: move the log start offset to ``request.offset`` (-1: the high
        watermark; above it: OffsetOutOfRangeError), deleting the segments wholly below it, and answer the low
        watermark (``Partition.low_watermark``) once every in-sync replica's log start offset has reached the
        offset, or RequestTimeoutError after ``timeout_ms`` (this log has moved all the same; a retry is a
        no-op here and waits again). Followers learn the new log start offset from the leader's next push
        (``replicate``), which this call starts at once; their answers wake the wait below.
        Concurrency: the check and the move run with no ``await`` between them."""
        await self._ensure_role()
        self.state.check_leader(request.leader_epoch)
        target = self.state.delete_records_offset(request.offset, self.log.log_start_offset)
        if target > self.log.log_start_offset:
            self.log.delete_records_before(target)
            self.producers.after_retention()
            log.info("[%s] deleted records before %d (DeleteRecords)", self.name, target)
            self._signal("data")  # wakes the idle replicators: their next push carries the new log start

        def low() -> int:  # raises NotLeaderError if leadership is lost meanwhile
            return self.state.low_watermark(self.log.log_start_offset)

        await self._wait_until(lambda: low() >= target, request.timeout_ms, lambda: (
            f"[{self.name}] records before {target} deleted here, but not yet on every in-sync replica "
            f"{list(self.state.isr)} within {request.timeout_ms} ms (low watermark {low()})"))
        return low()

    # -- admin ---------------------------------------------------------------------------------------------
    async def describe(self) -> ReplicaDescription:
        return ReplicaDescription(self.state.role.value, self.state.leader_epoch, list(self.state.isr),
                                  self.log.log_start_offset, self.state.high_watermark, self.log.log_end_offset,
                                  self.log.size_bytes, str(self.log.directory))

    async def update_config(self, config: dict[str, Any]) -> None:
        self.log.config = TopicConfig.from_dict(config)

    async def update_schema(self, schema_bytes: bytes, schema_id: int) -> None:
        """The topic's schema evolved (the controller checked compatibility): new appends use it; older
        batches are read in it (``Log.read``)."""
        if schema_id >= self.schema_id:
            self.log.change_schema(pa.ipc.read_schema(pa.py_buffer(schema_bytes)))
            self.schema_id = schema_id

    def _current_schema(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
        """A producer whose metadata predates a schema change may still send the previous schema: batches
        of an older, compatible schema are brought to the current one rather than refused."""
        if self.schema_id == 0 or batch.schema.equals(self.log.schema):
            return batch
        user = pa.schema([f for f in batch.schema if f.name != TIMESTAMP_COLUMN])
        if compatibility_problems(user, self.log.schema):
            return batch  # Log.append names every differing field (SchemaMismatchError)
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else batch
        evolved = evolve(batch.select(user.names), self.log.schema)
        if TIMESTAMP_COLUMN in batch.schema.names:
            evolved = evolved.append_column(batch.schema.field(TIMESTAMP_COLUMN), batch.column(TIMESTAMP_COLUMN))
        return evolved

    async def ping(self) -> int:
        return self.broker_id

    async def heartbeat(self) -> tuple[str, int]:
        """The controller's liveness check: (role, leader epoch) as this replica knows them."""
        return self.state.role.value, self.state.leader_epoch

    async def shutdown(self, delete: bool = False) -> None:
        """Stop serving; flush and close the log (``delete``: remove its directory too)."""
        self.state.stop()
        self._stop_replicators()
        if self._housekeeping:
            self._housekeeping.cancel()
        if delete:
            self.log.delete()
            return
        try:
            self.producers.snapshot()  # the next open then replays no batch headers
        except Exception:  # the log must still close cleanly; the next open replays more
            log.exception("[%s] producer state snapshot at shutdown failed", self.name)
        self.log.close()

    # -- housekeeping ----------------------------------------------------------------------------------------
    def _start_housekeeping(self) -> None:
        if self._housekeeping is None or self._housekeeping.done():
            self._housekeeping = asyncio.get_running_loop().create_task(self._housekeeping_loop())

    async def _housekeeping_loop(self) -> None:
        """ISR shrink checks (leader); retention, compaction and idle producer-id expiry (every replica, as in
        Kafka)."""
        cfg = self.broker_config
        last_cleanup, last_expiry = 0.0, time.monotonic()
        expiry_interval_s = min(cfg.producer_id_expiration_ms, PRODUCER_ID_EXPIRATION_CHECK_INTERVAL_MS) / 1000
        while True:
            await asyncio.sleep(min(cfg.replica_lag_time_max_ms / 2, 1000) / 1000)
            try:
                self.metrics.log_size(self.log.size_bytes)
                if self.state.role is Role.LEADER:
                    proposal = self.state.start_isr_proposal(
                        self.state.isr_to_shrink(_now_ms(), cfg.replica_lag_time_max_ms))
                    if proposal is not None:
                        await self._send_isr_proposal(proposal)
                if time.monotonic() - last_cleanup >= cfg.log_retention_check_interval_ms / 1000:
                    last_cleanup = time.monotonic()
                    if self.log.apply_retention(now=_now_ms(), high_watermark=self.state.high_watermark):
                        self.producers.after_retention()
                    if self.log.config.compact:
                        await asyncio.get_running_loop().run_in_executor(None, compact, self.log, _now_ms())
                if time.monotonic() - last_expiry >= expiry_interval_s:
                    last_expiry = time.monotonic()
                    self.producers.expire(cfg.producer_id_expiration_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("[%s] housekeeping failed", self.name)
