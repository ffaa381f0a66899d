"""One partition of the fake cluster: the real core's decisions (:mod:`raystream.core.partition`) over a real
:class:`raystream.storage.log.Log` and a real ``ProducerStateManager``, as a replica actor makes them.

The log is shared by every broker of the fake (replication is instant), while each broker has its own
:class:`~raystream.core.partition.Partition`: the leader's with itself as the only replica (so its high
watermark follows its log end offset), the others followers — a request to a follower fails in the core
exactly as on a real follower replica. What the actor does with asyncio is done synchronously here: no
reorder wait for a batch ahead of its sequence (it is answered OutOfOrderSequenceError at once), and the
acks=all and long-poll waits are the fake transport's (held high watermark, waiters woken on advance).

Not thread-safe: the fake transport's lock serialises every call.
"""

from __future__ import annotations

import pyarrow as pa

from raystream.config import TopicConfig
from raystream.core.partition import APPEND, Partition, dedup_outcome
from raystream.core.producer_state import ProducerStateManager
from raystream.errors import RequestTimeoutError
from raystream.protocol import (
    FetchRequest,
    FetchResult,
    ListOffsetsRequest,
    ProduceRequest,
    ProduceResult,
    Role,
)
from raystream.record import ATTR_TRANSACTIONAL, MAX_SEQUENCE, OFFSET_COLUMN, TIMESTAMP_COLUMN
from raystream.storage.log import Log


class FakePartition:
    def __init__(self, name: str, directory: str, schema: pa.Schema, key_column: str | None,
                 max_message_bytes: int, brokers: list[int], leader: int, now_ms: int) -> None:
        self.name = name
        self.log = Log(directory, TopicConfig.from_dict({"max.message.bytes": max_message_bytes}), schema=schema,
                       key_column=key_column or "key", now=now_ms)
        self.producers = ProducerStateManager(name)
        self.replicas = {b: Partition(f"{name} broker={b}", b, self.log.high_watermark) for b in brokers}
        self.elect(leader, 0, now_ms)

    # -- roles ---------------------------------------------------------------------------------------------
    def elect(self, leader: int, epoch: int, now_ms: int) -> None:
        """``leader`` leads at ``epoch`` (-1: offline); every other broker follows it."""
        for broker, state in self.replicas.items():
            if broker == leader:
                state.become_leader(epoch, (broker,), (broker,), 0, self.log.log_end_offset,
                                    self.log.high_watermark, now_ms)
            else:
                state.become_follower(epoch, leader, tuple(self.replicas))

    def _state(self, broker: int) -> Partition:
        state = self.replicas.get(broker)
        if state is None:  # not a replica at all: as a broker without this replica, "not the leader"
            state = Partition(f"{self.name} broker={broker}", broker)
        return state

    # -- offsets (the leader's view) -----------------------------------------------------------------------
    @property
    def log_start_offset(self) -> int:
        return self.log.log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    @property
    def high_watermark(self) -> int:
        leader = next((s for s in self.replicas.values() if s.role is Role.LEADER), None)
        return self.log.high_watermark if leader is None else leader.high_watermark

    def advance_high_watermark(self) -> bool:
        """The leader's core recomputes its high watermark (the log persists it); True if it moved."""
        moved = False
        for state in self.replicas.values():
            if state.update_high_watermark(self.log.log_end_offset):
                self.log.set_high_watermark(state.high_watermark)
                moved = True
        return moved

    # -- requests --------------------------------------------------------------------------------------------
    def produce(self, broker: int, request: ProduceRequest, now_ms: int, advance_hw: bool = True) -> ProduceResult:
        """PartitionReplica.produce, synchronously. With ``advance_hw`` False (a held high watermark) an
        acks=all request is answered without waiting for it."""
        state = self._state(broker)
        min_isr = self.log.config.min_insync_replicas
        state.check_produce(request.acks, request.leader_epoch, min_isr)
        decision = APPEND
        rows = request.batch.num_rows
        if request.producer_id >= 0 and rows:
            last_sequence = (request.base_sequence + rows - 1) % (MAX_SEQUENCE + 1)
            check = self.producers.check_and_prepare(request.producer_id, request.producer_epoch,
                                                     request.base_sequence, last_sequence, now_ms, request.replay)
            decision = dedup_outcome(check, rows, self.log.log_start_offset,
                                     self.log.config.message_timestamp_type == "LogAppendTime")
        if decision.append:
            result, last_offset = self._append(state, request, decision.skip, now_ms)
            if advance_hw:
                self.advance_high_watermark()
        else:
            result, last_offset = decision.result, decision.last_offset
        if request.acks == -1 and advance_hw and not state.ack_ready(last_offset, min_isr):
            raise RequestTimeoutError(f"[{self.name}] offset {last_offset} not replicated")  # pragma: no cover
        return result

    def _append(self, state: Partition, request: ProduceRequest, skip: int, now_ms: int
                ) -> tuple[ProduceResult, int]:
        batch, base_sequence = request.batch, request.base_sequence
        if skip:
            batch, base_sequence = batch.slice(skip), base_sequence + skip
        idempotent = request.producer_id >= 0
        info = self.log.append(
            batch, leader_epoch=state.leader_epoch, now=now_ms,
            producer_id=request.producer_id if idempotent else -1,
            producer_epoch=request.producer_epoch if idempotent else -1,
            base_sequence=base_sequence if idempotent else -1,
            attributes=ATTR_TRANSACTIONAL if request.transactional and idempotent else 0)
        self.producers.update(info.header, now_ms)
        return ProduceResult(info.base_offset, info.log_append_time, self.log.log_start_offset,
                             info.record_count, info.max_timestamp), info.last_offset

    def fetch(self, broker: int, request: FetchRequest) -> FetchResult:
        """One pass of PartitionReplica.fetch's loop (the fake transport does the long-poll wait)."""
        state = self._state(broker)
        state.check_leader(request.leader_epoch)
        columns = request.columns
        if columns is not None:
            columns = [OFFSET_COLUMN, TIMESTAMP_COLUMN] + [c for c in columns
                                                          if c not in (OFFSET_COLUMN, TIMESTAMP_COLUMN)]
        hw = state.high_watermark
        limit = state.fetch_limit(request.read_committed, self.producers.first_unstable_offset())
        state.check_fetch_position(request.offset, self.log.log_start_offset, self.log.log_end_offset, self.name)
        batches: list[pa.RecordBatch] = []
        position, skipped, size = request.offset, 0, 0
        if position < limit:
            read = self.log.read_filtered(position, request.max_bytes, limit, columns, request.row_filter,
                                          self.producers.is_aborted if request.read_committed else None)
            batches, position, skipped = read.batches, read.next_offset, read.batches_skipped
            size = sum(b.get_total_buffer_size() for b in batches)
        return FetchResult(batches, hw, self.log.log_start_offset, self.log.log_end_offset, position, size,
                           skipped)

    def list_offset(self, broker: int, request: ListOffsetsRequest) -> int:
        state = self._state(broker)
        state.check_leader(None)
        limit = state.fetch_limit(request.read_committed, self.producers.first_unstable_offset())
        return state.list_offset(request.spec, limit, self.log.log_start_offset, self.log.offset_for_timestamp)

    def delete_records(self, broker: int, offset: int, leader_epoch: int | None = None) -> int:
        """PartitionReplica.delete_records: the core's checks, the move, and the low watermark (the leader is
        the whole ISR here, so it is answered at once)."""
        state = self._state(broker)
        state.check_leader(leader_epoch)
        target = state.delete_records_offset(offset, self.log.log_start_offset)
        if target > self.log.log_start_offset:
            self.truncate_front(target)
        return state.low_watermark(self.log.log_start_offset)

    # -- test hooks --------------------------------------------------------------------------------------------
    def truncate_front(self, offset: int) -> None:
        """Kafka's DeleteRecords: the log start offset moves to ``offset``."""
        self.log.delete_records_before(offset)
        self.producers.drop_aborted_below(self.log.log_start_offset)

    def records(self) -> pa.Table:
        """Every stored record from the log start offset to the log end (above the high watermark too)."""
        start = self.log.log_start_offset
        batches = self.log.read(start, 1 << 62) if start < self.log.log_end_offset else []
        if not batches:
            return pa.Table.from_batches([], schema=stored_schema(self.log.schema))
        return pa.Table.from_batches(batches)

    def close(self) -> None:
        self.log.close()


def stored_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(OFFSET_COLUMN, pa.int64(), nullable=False),
                      pa.field(TIMESTAMP_COLUMN, pa.int64(), nullable=False)] + list(schema))
