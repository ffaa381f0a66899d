"""Producer ids and transactions over the Kafka protocol: InitProducerId, AddPartitionsToTxn,
AddOffsetsToTxn, TxnOffsetCommit, EndTxn.

Each maps to raystream's transaction coordinator (:mod:`raystream.actors.transactions`, in the
controller), the one raystream's own transactional producers use, so Kafka clients get the same
guarantees: a newer InitProducerId for a transactional id fences the older producer (PRODUCER_FENCED at
the coordinator, INVALID_PRODUCER_EPOCH at the partition leaders), an open transaction past its
``transaction.timeout.ms`` is aborted, and a commit's markers and group offsets land together.

Kafka splits sending offsets in two calls (AddOffsetsToTxn to the transaction coordinator, then
TxnOffsetCommit to the group coordinator); raystream's coordinator takes the group and its offsets in one
``add_offsets_to_txn``. So AddOffsetsToTxn registers the group with no offsets (it starts the transaction
and checks the producer's epoch, as Kafka's does), and TxnOffsetCommit adds the offsets. Not checked
(Kafka does, since KIP-447): TxnOffsetCommit's group generation and member id.

Concurrency: coroutines on the gateway's event loop; coordinator calls are awaited futures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from raystream.gateway.data_apis import error_code, partition_errors
from raystream.gateway.framing import Request
from raystream.protocol import TopicPartition

#: Kafka's transaction.timeout.ms default, for InitProducerId requests without one.
DEFAULT_TRANSACTION_TIMEOUT_MS = 60_000


async def _coordinator(ctx: Any, method: str, *args: Any) -> Any:
    return await asyncio.wrap_future(ctx.transport.txn_submit(method, *args))


async def init_producer_id(request: Request, ctx: Any) -> Mapping[str, Any]:
    """An idempotent producer's id, or a transactional id's producer id and next epoch (fencing older ones)."""
    body = request.body
    try:
        if body.transactional_id is None:
            producer_id, producer_epoch = await asyncio.to_thread(ctx.transport.init_producer_id)
        else:
            timeout_ms = int(body.transaction_timeout.total_seconds() * 1000) or DEFAULT_TRANSACTION_TIMEOUT_MS
            producer_id, producer_epoch = await _coordinator(ctx, "init_transactions", body.transactional_id,
                                                             timeout_ms)
    except Exception as exc:  # answered as Kafka's error code
        return {"throttle_time": 0, "error_code": error_code(exc), "producer_id": -1, "producer_epoch": -1}
    return {"throttle_time": 0, "error_code": ErrorCode.none, "producer_id": producer_id,
            "producer_epoch": producer_epoch}


async def add_partitions_to_txn(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body  # versions 0-3: the client's form, its fields named v3_and_below_* in Kafka's spec
    topics = body.v3_and_below_topics
    partitions = [TopicPartition(t.name, int(p)) for t in topics for p in t.partitions]
    code = ErrorCode.none
    try:
        await _coordinator(ctx, "add_partitions_to_txn", body.v3_and_below_transactional_id,
                           int(body.v3_and_below_producer_id), int(body.v3_and_below_producer_epoch), partitions)
    except Exception as exc:  # every partition of the request gets the coordinator's error code
        code = error_code(exc)
    return {"throttle_time": 0, "results_by_topic_v3_and_below": [
        {"name": t.name, "results_by_partition": [{"partition_index": p, "partition_error_code": code}
                                                  for p in t.partitions]} for t in topics]}


async def add_offsets_to_txn(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    try:
        await _coordinator(ctx, "add_offsets_to_txn", body.transactional_id, int(body.producer_id),
                           int(body.producer_epoch), body.group_id, {})
    except Exception as exc:  # answered as Kafka's error code
        return {"throttle_time": 0, "error_code": error_code(exc)}
    return {"throttle_time": 0, "error_code": ErrorCode.none}


async def txn_offset_commit(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    offsets = {TopicPartition(t.name, p.partition_index): (int(p.committed_offset), p.committed_metadata or "")
               for t in body.topics for p in t.partitions}
    code = ErrorCode.none
    try:
        await _coordinator(ctx, "add_offsets_to_txn", body.transactional_id, int(body.producer_id),
                           int(body.producer_epoch), body.group_id, offsets)
    except Exception as exc:  # every partition of the request gets the coordinator's error code
        code = error_code(exc)
    return {"throttle_time": 0, "topics": partition_errors(body.topics, code)}


async def end_txn(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    try:
        await _coordinator(ctx, "end_txn", body.transactional_id, int(body.producer_id), int(body.producer_epoch),
                           bool(body.committed))
    except Exception as exc:  # answered as Kafka's error code
        return {"throttle_time": 0, "error_code": error_code(exc)}
    return {"throttle_time": 0, "error_code": ErrorCode.none}


#: Kafka API key -> (min version, max version, handler) served by this module. AddPartitionsToTxn v4+ is
#: the brokers' batched form (KIP-890), which clients do not send.
HANDLERS = {
    22: (0, 4, init_producer_id),  # InitProducerId
    24: (0, 3, add_partitions_to_txn),  # AddPartitionsToTxn
    25: (0, 3, add_offsets_to_txn),  # AddOffsetsToTxn
    26: (0, 3, end_txn),  # EndTxn
    28: (0, 3, txn_offset_commit),  # TxnOffsetCommit
}
