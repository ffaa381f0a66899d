"""Consumer-group offsets over the Kafka protocol: FindCoordinator, OffsetCommit, OffsetFetch, ListGroups.

One gateway is every group's coordinator (the lowest Kafka node id among the running gateways, see
:mod:`raystream.gateway.apis`; any gateway serves group requests all the same) and forwards them to
raystream's group coordinator, so offsets committed by Kafka clients and by raystream's own consumers
are the same offsets. Commits outside a generation (generation -1, member ""), which Kafka clients send for
manually assigned partitions with a group id, are accepted while the group has no members, as Kafka
does. Group membership is :mod:`raystream.gateway.membership_apis`.

Concurrency: coroutines on the gateway's event loop; coordinator calls run in threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from raystream.gateway.data_apis import error_code, partition_errors
from raystream.gateway.framing import Request
from raystream.protocol import TopicPartition


async def find_coordinator(request: Request, ctx: Any) -> Mapping[str, Any]:
    """The coordinator of a group (key type 0) or a transactional id (1): this gateway, which forwards to
    raystream's group and transaction coordinators in the controller."""
    node_id, host, port = ctx.coordinator()  # one gateway for every key: see raystream.gateway.apis
    return {"throttle_time": 0, "error_code": ErrorCode.none, "error_message": None, "node_id": node_id,
            "host": host, "port": port}


async def offset_commit(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    generation = int(getattr(body, "generation_id_or_member_epoch", getattr(body, "generation_id", -1)))
    offsets = {TopicPartition(t.name, p.partition_index): (int(p.committed_offset), p.committed_metadata or "")
               for t in body.topics for p in t.partitions}
    code = ErrorCode.none
    try:
        await asyncio.to_thread(ctx.transport.group_call, "commit_offsets", body.group_id, body.member_id or "",
                                generation, offsets)
    except Exception as exc:  # every partition of the request gets the commit's error code
        code = error_code(exc)
    return {"throttle_time": 0, "topics": partition_errors(body.topics, code)}


async def offset_fetch(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    asked = None if body.topics is None else [TopicPartition(t.name, p) for t in body.topics
                                               for p in t.partition_indexes]
    try:
        committed = await asyncio.to_thread(ctx.transport.group_call, "fetch_offsets", body.group_id, asked)
    except Exception as exc:  # answered as the top-level error code
        return {"throttle_time": 0, "topics": [], "error_code": error_code(exc)}
    wanted = asked if asked is not None else sorted(committed)
    by_topic: dict[str, list] = {}
    for tp in wanted:
        offset, metadata = committed.get(tp, (-1, ""))
        by_topic.setdefault(tp.topic, []).append({
            "partition_index": tp.partition, "committed_offset": offset, "committed_leader_epoch": -1,
            "metadata": metadata, "error_code": ErrorCode.none})
    return {"throttle_time": 0, "error_code": ErrorCode.none,
            "topics": [{"name": name, "partitions": parts} for name, parts in by_topic.items()]}


async def list_groups(request: Request, ctx: Any) -> Mapping[str, Any]:
    try:
        names = await asyncio.to_thread(ctx.transport.group_call, "list_groups")
    except Exception as exc:  # answered as the error code
        return {"throttle_time": 0, "error_code": error_code(exc), "groups": []}
    return {"throttle_time": 0, "error_code": ErrorCode.none,
            "groups": [{"group_id": name, "protocol_type": "consumer", "group_state": ""} for name in names]}


#: Kafka API key -> (min version, max version, handler) served by this module.
HANDLERS = {
    8: (2, 8, offset_commit),  # OffsetCommit
    9: (1, 7, offset_fetch),  # OffsetFetch
    10: (0, 3, find_coordinator),  # FindCoordinator
    16: (0, 4, list_groups),  # ListGroups
}
