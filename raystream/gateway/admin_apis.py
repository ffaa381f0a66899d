"""Topic administration over the Kafka protocol: CreateTopics, DeleteTopics, CreatePartitions.

Each maps to the raystream admin call of the same meaning (the controller validates names, counts and
configs as for raystream's own Admin), one topic at a time, each topic with its own error code as in
Kafka. Not mapped: manual replica assignments (INVALID_REPLICA_ASSIGNMENT: raystream places replicas
itself) and ``validate_only`` (INVALID_REQUEST: raystream has no dry run yet). A partition or replication
count of -1 means the cluster default, as in Kafka.

Concurrency: coroutines on the gateway's event loop; controller calls run in threads.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from raystream.gateway.data_apis import error_code
from raystream.gateway.framing import Request

ZERO_UUID = uuid.UUID(int=0)  # raystream topics have no Kafka topic id


def _refusal(body: Any, assignments: bool) -> tuple[ErrorCode, str] | None:
    if getattr(body, "validate_only", False):
        return ErrorCode.invalid_request, "validate_only is not supported by the gateway"
    if assignments:
        return ErrorCode.invalid_replica_assignment, "raystream places replicas itself: give no assignments"
    return None


async def create_topics(request: Request, ctx: Any) -> Mapping[str, Any]:
    results = []
    for topic in request.body.topics:
        out: dict[str, Any] = {"name": topic.name, "topic_id": ZERO_UUID, "error_code": ErrorCode.none,
                               "error_message": None, "num_partitions": -1, "replication_factor": -1,
                               "configs": [], "topic_config_error_code": 0}
        refused = _refusal(request.body, bool(topic.assignments))
        if refused is not None:
            out.update(error_code=refused[0], error_message=refused[1])
            results.append(out)
            continue
        partitions = None if topic.num_partitions < 0 else int(topic.num_partitions)
        replication = None if topic.replication_factor < 0 else int(topic.replication_factor)
        config = {c.name: c.value for c in topic.configs} or None
        try:
            meta = await asyncio.to_thread(ctx.transport.create_topic, topic.name, partitions, replication, config)
            out.update(num_partitions=len(meta.partitions),
                       replication_factor=len(meta.partitions[0].replicas) if meta.partitions else -1)
        except Exception as exc:  # this topic's error code
            out.update(error_code=error_code(exc), error_message=str(exc)[:500])
        results.append(out)
    return {"throttle_time": 0, "topics": results}


async def delete_topics(request: Request, ctx: Any) -> Mapping[str, Any]:
    results = []
    for name in request.body.topic_names:
        code = ErrorCode.none
        try:
            await asyncio.to_thread(ctx.transport.delete_topic, name)
        except Exception as exc:  # this topic's error code
            code = error_code(exc)
        results.append({"name": name, "error_code": code, "error_message": None})
    return {"throttle_time": 0, "responses": results}


async def create_partitions(request: Request, ctx: Any) -> Mapping[str, Any]:
    results = []
    for topic in request.body.topics:
        out: dict[str, Any] = {"name": topic.name, "error_code": ErrorCode.none, "error_message": None}
        refused = _refusal(request.body, bool(topic.assignments))
        if refused is not None:
            out.update(error_code=refused[0], error_message=refused[1])
        else:
            try:
                await asyncio.to_thread(ctx.transport.create_partitions, topic.name, int(topic.count))
                await asyncio.to_thread(ctx.metadata.refresh, [topic.name])
            except Exception as exc:  # this topic's error code
                out.update(error_code=error_code(exc), error_message=str(exc)[:500])
        results.append(out)
    return {"throttle_time": 0, "results": results}


#: Kafka API key -> (min version, max version, handler) served by this module.
HANDLERS = {
    19: (2, 7, create_topics),  # CreateTopics
    20: (1, 5, delete_topics),  # DeleteTopics
    37: (0, 3, create_partitions),  # CreatePartitions
}
