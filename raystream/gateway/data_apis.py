"""Produce, Fetch and ListOffsets: Kafka's data path, translated into calls on the partition leaders.

Produce: each partition's Kafka batches are decoded (:mod:`~raystream.gateway.records`) and appended as
one raystream produce per batch, in order, with the request's acks and timeout; the answer carries the
first batch's base offset, as Kafka's does. acks=0 gets no response, as in Kafka. Fetch: each partition is
read from its leader (a long-poll of ``max_wait`` when nothing is there yet), and each stored batch goes
back as one Kafka batch; ``max_bytes``/``partition_max_bytes`` bound the data as Kafka's do (at least one
batch per partition). ListOffsets: earliest (-2), latest (-1) or by timestamp.

Idempotent producers: InitProducerId (:mod:`~raystream.gateway.txn_apis`) hands out a raystream producer
id, and a batch's producer id, epoch and base sequence go to the leader with the append, which deduplicates
retries and refuses out-of-order sequences as raystream's own idempotent producers get.

Transactional producers' batches are appended as transactional (the partition's open transaction until
the coordinator's marker); read_committed fetches get only committed data, below the last stable offset
(:func:`_fetch_partition`). Arrow-native (schema) topics take and give each row as a JSON object value
(:mod:`~raystream.gateway.json_values`).

Concurrency: coroutines on the gateway's event loop; metadata lookups run in threads, produce and fetch
are awaited futures of the client transport.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from kio.schema.errors import ErrorCode

from raystream.errors import (
    CommitFailedError,
    CorruptRecordError,
    DuplicateSequenceError,
    GroupIdNotFoundError,
    GroupNotEmptyError,
    IllegalGenerationError,
    InconsistentGroupProtocolError,
    InvalidConfigurationError,
    InvalidPartitionsError,
    InvalidProducerEpochError,
    InvalidRecordError,
    InvalidReplicationFactorError,
    InvalidTopicError,
    InvalidTxnStateError,
    LeaderNotAvailableError,
    NotEnoughReplicasError,
    NotLeaderError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    ProducerFencedError,
    RaystreamError,
    RebalanceInProgressError,
    RecordTooLargeError,
    RequestTimeoutError,
    SchemaMismatchError,
    TopicAlreadyExistsError,
    UnknownMemberIdError,
    UnknownTopicOrPartitionError,
)
from raystream.gateway.control_records import encode_control_batch
from raystream.gateway.framing import Request
from raystream.gateway.json_values import records_from_rows, rows_from_records
from raystream.gateway.produce_queue import PartitionQueue
from raystream.gateway.records import (
    CONTROL,
    TRANSACTIONAL,
    UnsupportedCompressionError,
    decode_batches,
    encode_batch,
)
from raystream.protocol import TopicMetadata, TopicPartition
from raystream.record import OFFSET_COLUMN

_ERROR_CODES: list[tuple[type[BaseException], ErrorCode]] = [
    (UnsupportedCompressionError, ErrorCode.unsupported_compression_type),
    (CorruptRecordError, ErrorCode.corrupt_message),
    (SchemaMismatchError, ErrorCode.invalid_record),
    (InvalidRecordError, ErrorCode.invalid_record),
    (RecordTooLargeError, ErrorCode.message_too_large),
    (UnknownTopicOrPartitionError, ErrorCode.unknown_topic_or_partition),
    (NotLeaderError, ErrorCode.not_leader_or_follower),
    (LeaderNotAvailableError, ErrorCode.leader_not_available),
    (NotEnoughReplicasError, ErrorCode.not_enough_replicas),
    (OffsetOutOfRangeError, ErrorCode.offset_out_of_range),
    (OutOfOrderSequenceError, ErrorCode.out_of_order_sequence_number),
    (DuplicateSequenceError, ErrorCode.duplicate_sequence_number),
    (InvalidProducerEpochError, ErrorCode.invalid_producer_epoch),
    (ProducerFencedError, ErrorCode.producer_fenced),
    (InvalidTxnStateError, ErrorCode.invalid_txn_state),
    (TopicAlreadyExistsError, ErrorCode.topic_already_exists),
    (InvalidTopicError, ErrorCode.invalid_topic_exception),
    (InvalidPartitionsError, ErrorCode.invalid_partitions),
    (InvalidReplicationFactorError, ErrorCode.invalid_replication_factor),
    (InvalidConfigurationError, ErrorCode.invalid_config),
    (UnknownMemberIdError, ErrorCode.unknown_member_id),
    (GroupIdNotFoundError, ErrorCode.group_id_not_found),
    (GroupNotEmptyError, ErrorCode.non_empty_group),
    (InconsistentGroupProtocolError, ErrorCode.inconsistent_group_protocol),
    (IllegalGenerationError, ErrorCode.illegal_generation),
    (RebalanceInProgressError, ErrorCode.rebalance_in_progress),
    (CommitFailedError, ErrorCode.illegal_generation),
    (ValueError, ErrorCode.invalid_request),
    (RequestTimeoutError, ErrorCode.request_timed_out),
    (TimeoutError, ErrorCode.request_timed_out),
    (asyncio.TimeoutError, ErrorCode.request_timed_out),  # a distinct class before Python 3.11
]


def partition_errors(topics: Any, code: ErrorCode) -> list[Mapping[str, Any]]:
    """The same error code for every partition of a request's ``topics`` (name, partitions with
    partition_index): the answer of OffsetCommit and TxnOffsetCommit, which commit all or nothing."""
    return [{"name": t.name, "partitions": [{"partition_index": p.partition_index, "error_code": code}
                                            for p in t.partitions]} for t in topics]


def error_code(exc: BaseException) -> ErrorCode:
    """Kafka's error code for an exception (UNKNOWN_SERVER_ERROR for anything unmapped)."""
    for cls, code in _ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return ErrorCode.unknown_server_error


async def _leader(ctx: Any, topic: str, partition: int) -> tuple[TopicMetadata, int, int]:
    """(metadata, leader broker, leader epoch) of a partition, refreshing a stale cache once."""
    for attempt in range(2):
        # The cache answers without a thread hop on the data path; only a miss asks the controller.
        meta = ctx.metadata.cached(topic) or await asyncio.to_thread(ctx.metadata.get, topic)
        if not 0 <= partition < len(meta.partitions):
            raise UnknownTopicOrPartitionError(f"unknown partition {topic}-{partition}", topic=topic)
        state = meta.partitions[partition]
        if state.leader >= 0:
            return meta, state.leader, state.leader_epoch
        if attempt == 0:
            await asyncio.to_thread(ctx.metadata.refresh, [topic])
    raise LeaderNotAvailableError(f"{topic}-{partition} has no leader")


async def _forget_on_stale(ctx: Any, topic: str, exc: BaseException) -> None:
    """After an error that means the cached leaders are stale, refresh them (off the event loop)."""
    if isinstance(exc, RaystreamError) and exc.invalid_metadata:
        try:
            await asyncio.to_thread(ctx.metadata.refresh, [topic])
        except RaystreamError:
            pass


async def produce(request: Request, ctx: Any) -> Mapping[str, Any] | None:
    body = request.body
    acks, timeout_ms = int(body.acks), int(body.timeout.total_seconds() * 1000)
    if acks not in (-1, 0, 1):
        answer = [{"name": t.name, "partition_responses": [
            {"index": p.index, "error_code": ErrorCode.invalid_required_acks, "base_offset": -1}
            for p in t.partition_data]} for t in body.topic_data]
        return {"responses": answer, "throttle_time": 0}
    tasks = [[asyncio.ensure_future(_produce_partition(ctx, t.name, p.index, p.records, acks, timeout_ms))
              for p in t.partition_data] for t in body.topic_data]
    responses = []
    for topic, partition_tasks in zip(body.topic_data, tasks, strict=True):
        results = await asyncio.gather(*partition_tasks)
        responses.append({"name": topic.name, "partition_responses": results})
    return None if acks == 0 else {"responses": responses, "throttle_time": 0}


async def _produce_partition(ctx: Any, topic: str, partition: int, records: bytes | None, acks: int,
                             timeout_ms: int) -> Mapping[str, Any]:
    out: dict[str, Any] = {"index": partition, "error_code": ErrorCode.none, "base_offset": -1,
                           "log_append_time": -1, "log_start_offset": -1, "record_errors": [],
                           "error_message": None}
    # Its place in the partition's queue is taken before the first await, so in the order the requests
    # arrived (tasks start in creation order): see raystream.gateway.produce_queue.
    tp = TopicPartition(topic, partition)
    queue = ctx.produce_order.get(tp)
    if queue is None:
        queue = ctx.produce_order[tp] = PartitionQueue(functools.partial(_submit_produce, ctx, tp))
    entry = queue.reserve()
    try:
        meta, leader, epoch = await _leader(ctx, topic, partition)
        batches = decode_batches(records or b"")
        if any(b.attributes & CONTROL for b in batches):
            raise InvalidRecordError("clients do not write control batches: only transaction coordinators do")
        if batches:
            first_batch = batches[0]
            if any((b.producer_id, b.producer_epoch, b.attributes & TRANSACTIONAL) != (
                    first_batch.producer_id, first_batch.producer_epoch, first_batch.attributes & TRANSACTIONAL)
                   for b in batches):
                raise InvalidRecordError("one partition's batches in a request come from different producers")
            # One append for the partition's whole request: it lands entirely or not at all, as in Kafka;
            # an idempotent producer's batches carry consecutive sequences, so the first one's is the base.
            data = (first_batch.records if len(batches) == 1 else
                    pa.Table.from_batches([b.records for b in batches]).combine_chunks().to_batches()[0])
            if meta.schema_bytes is not None:  # an Arrow-native topic: each value is a row as JSON
                data = rows_from_records(data, meta.schema, topic)
            entry.fill(data, leader=leader, leader_epoch=epoch, acks=acks, timeout_ms=timeout_ms,
                       producer_id=first_batch.producer_id, producer_epoch=first_batch.producer_epoch,
                       base_sequence=first_batch.base_sequence if first_batch.producer_id >= 0 else -1,
                       transactional=bool(first_batch.attributes & TRANSACTIONAL))
            queue.pump()
            result = await entry.result
            out.update(base_offset=result.base_offset, log_append_time=result.log_append_time,
                       log_start_offset=result.log_start_offset)
    except Exception as exc:  # one partition's failure is that partition's error code
        await _forget_on_stale(ctx, topic, exc)
        out.update(error_code=error_code(exc), error_message=str(exc)[:500])
    finally:
        if not entry.filled:  # nothing to send (no records, or refused): it holds up no later request
            entry.fill(None)
            queue.pump()
        if queue.idle and ctx.produce_order.get(tp) is queue:
            del ctx.produce_order[tp]
    return out


def _submit_produce(ctx: Any, tp: TopicPartition, records: pa.RecordBatch, *, leader: int, acks: int,
                    timeout_ms: int, **fields: Any) -> Any:
    """One append at the partition's leader (a future of its ProduceResult)."""
    return ctx.transport.produce(tp, leader, records, acks, timeout_ms, **fields)


async def fetch(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    max_wait_ms = int(body.max_wait.total_seconds() * 1000)
    budget = int(getattr(body, "max_bytes", 2_147_483_647))  # the response's bytes, spent topic by topic
    read_committed = int(getattr(body, "isolation_level", 0)) == 1
    responses = []
    for topic in body.topics:
        partitions = await asyncio.gather(*[
            _fetch_partition(ctx, topic.topic, p.partition, p.fetch_offset,
                             min(int(p.partition_max_bytes), budget), max_wait_ms, int(body.min_bytes),
                             read_committed)
            for p in topic.partitions])
        budget = max(1, budget - sum(len(p["records"] or b"") for p in partitions))
        responses.append({"topic": topic.topic, "partitions": partitions})
    return {"throttle_time": 0, "error_code": ErrorCode.none, "session_id": 0, "responses": responses}


async def _fetch_partition(ctx: Any, topic: str, partition: int, offset: int, max_bytes: int, max_wait_ms: int,
                           min_bytes: int, read_committed: bool = False) -> Mapping[str, Any]:
    """One partition of a Fetch. read_committed: the leader leaves out aborted transactions' batches and
    stops at the last stable offset, so the answer lists no aborted transactions (there are none in it)."""
    out: dict[str, Any] = {"partition_index": partition, "error_code": ErrorCode.none, "high_watermark": -1,
                           "last_stable_offset": -1, "log_start_offset": -1, "aborted_transactions": [],
                           "records": b""}
    try:
        meta, leader, epoch = await _leader(ctx, topic, partition)
        result = await asyncio.wrap_future(ctx.transport.fetch(
            TopicPartition(topic, partition), leader, offset, max(1, max_bytes), max_wait_ms, max(1, min_bytes),
            leader_epoch=epoch, read_committed=read_committed))
        data = bytearray()
        after_last = offset  # where the client fetches next after what this answer holds
        for batch in result.batches:
            if batch.num_rows:
                # An Arrow-native topic's rows go out as JSON values (raystream.gateway.json_values).
                data += encode_batch(batch if meta.schema_bytes is None else
                                     records_from_rows(batch, meta.key_column), epoch)
                after_last = int(batch.column(OFFSET_COLUMN)[-1].as_py()) + 1
        if result.next_offset > after_last:  # skipped markers or aborted batches: step the client over them
            data += encode_control_batch(result.next_offset - 1, epoch)
        lso = result.last_stable_offset if result.last_stable_offset >= 0 else result.high_watermark
        out.update(high_watermark=result.high_watermark, last_stable_offset=lso,
                   log_start_offset=result.log_start_offset, records=bytes(data))
    except Exception as exc:  # one partition's failure is that partition's error code
        await _forget_on_stale(ctx, topic, exc)
        out.update(error_code=error_code(exc))
    return out


async def list_offsets(request: Request, ctx: Any) -> Mapping[str, Any]:
    topics = []
    read_committed = int(getattr(request.body, "isolation_level", 0)) == 1
    for topic in request.body.topics:
        partitions = await asyncio.gather(*[
            _list_offset(ctx, topic.name, p.partition_index, int(p.timestamp), read_committed)
            for p in topic.partitions])
        topics.append({"name": topic.name, "partitions": partitions})
    return {"throttle_time": 0, "topics": topics}


async def _list_offset(ctx: Any, topic: str, partition: int, timestamp: int,
                       read_committed: bool) -> Mapping[str, Any]:
    out: dict[str, Any] = {"partition_index": partition, "error_code": ErrorCode.none, "timestamp": -1,
                           "offset": -1, "leader_epoch": -1, "old_style_offsets": []}
    try:
        _, leader, epoch = await _leader(ctx, topic, partition)
        offset = await asyncio.wrap_future(ctx.transport.list_offset(
            TopicPartition(topic, partition), leader, timestamp, read_committed=read_committed))
        out.update(offset=offset, leader_epoch=epoch)
    except Exception as exc:  # one partition's failure is that partition's error code
        await _forget_on_stale(ctx, topic, exc)
        out.update(error_code=error_code(exc))
    return out


#: Kafka API key -> (min version, max version, handler) served by this module.
HANDLERS = {
    0: (3, 9, produce),  # Produce
    1: (4, 12, fetch),  # Fetch
    2: (1, 7, list_offsets),  # ListOffsets
}
