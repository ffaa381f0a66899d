"""The APIs the gateway serves, their versions, and their handlers.

A handler gets the decoded request and the :class:`GatewayContext` and returns the response's values as
a mapping for :func:`~raystream.gateway.entities.build` (which keeps what the request's version has), or
None for a request that gets no response (Produce with acks=0). Versions are the ranges served here; a
client picks the highest version both sides know from the ApiVersions answer.

Broker identity: this gateway is, to Kafka clients, the whole cluster: one broker (``node_id``, the
advertised listener) that leads every partition, and forwards each request to the partition's raystream
leader over Ray. Replica and ISR lists therefore show this broker only.

Concurrency: handlers are coroutines on the server's event loop; blocking client calls run in threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kio.index import load_response_schema
from kio.schema.errors import ErrorCode

from raystream.client.base import BaseTransport
from raystream.client.metadata import MetadataCache
from raystream.gateway import admin_apis, config_apis, data_apis, group_apis, membership_apis, txn_apis
from raystream.gateway.admin_apis import ZERO_UUID
from raystream.gateway.entities import build
from raystream.gateway.framing import Request

METADATA, API_VERSIONS = 3, 18
#: Kafka's "authorized operations not requested" marker (INT32_MIN).
NO_AUTHORIZED_OPERATIONS = -2147483648


@dataclasses.dataclass(frozen=True)
class GatewayContext:
    """What handlers need: the raystream cluster (through a client transport) and the broker identity
    the gateway advertises."""

    transport: BaseTransport
    metadata: MetadataCache
    node_id: int
    host: str
    port: int
    cluster_id: str


Handler = Callable[[Request, GatewayContext], Awaitable[Mapping[str, Any] | None]]


async def api_versions(request: Request, ctx: GatewayContext) -> Mapping[str, Any]:
    return api_versions_values(ErrorCode.none)


def api_versions_values(error: ErrorCode) -> Mapping[str, Any]:
    """ApiVersions' answer; with UNSUPPORTED_VERSION it is sent as version 0, as Kafka does."""
    return {"error_code": error, "throttle_time": 0,
            "api_keys": [{"api_key": key, "min_version": low, "max_version": high}
                         for key, (low, high) in sorted(SUPPORTED.items())]}


async def metadata(request: Request, ctx: GatewayContext) -> Mapping[str, Any]:
    wanted = request.body.topics
    if wanted is None:  # every topic: one controller call
        found = await asyncio.to_thread(ctx.transport.get_metadata, None)
        asked = sorted(found)
    else:  # named topics, unknown ones included (they get UNKNOWN_TOPIC_OR_PARTITION)
        asked = [t.name for t in wanted]
        known = set(await asyncio.to_thread(ctx.transport.list_topics))
        found = await asyncio.to_thread(ctx.transport.get_metadata, [n for n in asked if n in known])
    topics = []
    for name in asked:
        meta = found.get(name)
        if meta is None:
            topics.append({"error_code": ErrorCode.unknown_topic_or_partition, "name": name,
                           "topic_id": ZERO_UUID, "is_internal": False, "partitions": [],
                           "topic_authorized_operations": NO_AUTHORIZED_OPERATIONS})
            continue
        partitions = [{
            "error_code": ErrorCode.none if p.leader >= 0 else ErrorCode.leader_not_available,
            "partition_index": p.partition, "leader_id": ctx.node_id if p.leader >= 0 else -1,
            "leader_epoch": p.leader_epoch, "replica_nodes": [ctx.node_id], "isr_nodes": [ctx.node_id],
            "offline_replicas": []} for p in meta.partitions]
        topics.append({"error_code": ErrorCode.none, "name": name, "topic_id": ZERO_UUID, "is_internal": False,
                       "partitions": partitions, "topic_authorized_operations": NO_AUTHORIZED_OPERATIONS})
    return {"throttle_time": 0, "brokers": [{"node_id": ctx.node_id, "host": ctx.host, "port": ctx.port,
                                              "rack": None}],
            "cluster_id": ctx.cluster_id, "controller_id": ctx.node_id, "topics": topics,
            "cluster_authorized_operations": NO_AUTHORIZED_OPERATIONS}


#: API key -> (min version, max version) served, and the handler. Each API module lists its own APIs in a
#: ``HANDLERS`` table of the same shape (Kafka's API keys there); this one merges them.
HANDLERS: dict[int, tuple[int, int, Handler]] = {
    METADATA: (0, 12, metadata),
    API_VERSIONS: (0, 3, api_versions),
    **data_apis.HANDLERS,
    **group_apis.HANDLERS,
    **membership_apis.HANDLERS,
    **txn_apis.HANDLERS,
    **admin_apis.HANDLERS,
    **config_apis.HANDLERS,
}
SUPPORTED: dict[int, tuple[int, int]] = {key: (low, high) for key, (low, high, _) in HANDLERS.items()}


async def handle(request: Request, ctx: GatewayContext) -> Any:
    """The response entity for ``request`` (of the request's version), or None for no response."""
    values = await HANDLERS[request.api_key][2](request, ctx)
    if values is None:
        return None
    return build(load_response_schema(request.api_key, request.api_version), values)

