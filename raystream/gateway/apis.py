"""The APIs the gateway serves, their versions, and their handlers.

A handler gets the decoded request and the :class:`GatewayContext` and returns the response's values as
a mapping for :func:`~raystream.gateway.entities.build` (which keeps what the request's version has), or
None for a request that gets no response (Produce with acks=0). Versions are the ranges served here; a
client picks the highest version both sides know from the ApiVersions answer.

Broker identity: Kafka clients see the running gateways as the cluster's brokers. A gateway started per
Ray node (:mod:`raystream.actors.gateway_actor`) has its node's broker id as Kafka node id and knows the
other gateways (``GatewayContext.peers``), so Metadata names every gateway as a broker, each partition's
leader as the gateway on the leader replica's node, and the replicas and ISR as the gateways on those
nodes: a client sends each partition's produce and fetch to the leader's own node. A replica whose node has
no gateway (none started there yet, or it left Metadata) is shown as this gateway. Alone (``raystream
gateway``, no peers) a gateway is the whole cluster: one broker that leads every partition. Either way a
gateway forwards every request, for any partition, to the partition's raystream leader over Ray, so a client
with stale metadata is still served. The coordinator of every group and transactional id, and the
``controller_id`` of Metadata and DescribeCluster, is the gateway with the lowest node id (every gateway
forwards group and transaction requests to the controller, so the choice only has to be stable).

Concurrency: handlers are coroutines on the server's event loop; blocking client calls run in threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from kio.index import load_response_schema
from kio.schema.errors import ErrorCode

from raystream.client.base import BaseTransport
from raystream.client.metadata import MetadataCache
from raystream.gateway import (
    admin_apis,
    config_apis,
    data_apis,
    group_apis,
    membership_apis,
    sasl_apis,
    txn_apis,
)
from raystream.gateway.admin_apis import ZERO_UUID
from raystream.gateway.entities import build
from raystream.gateway.framing import Request

METADATA, API_VERSIONS = 3, 18
#: Kafka's "authorized operations not requested" marker (INT32_MIN).
NO_AUTHORIZED_OPERATIONS = -2147483648


#: The other gateways of the cluster: Kafka node id -> advertised (host, port). Returns at once.
Peers = Callable[[], Mapping[int, tuple[str, int]]]


def no_peers() -> Mapping[int, tuple[str, int]]:
    return {}


@dataclasses.dataclass(frozen=True)
class GatewayContext:
    """What handlers need: the raystream cluster (through a client transport), the broker identity the
    gateway advertises, and the other gateways (``peers``; read on the event loop, never blocks)."""

    transport: BaseTransport
    metadata: MetadataCache
    node_id: int
    host: str
    port: int
    cluster_id: str
    peers: Peers = no_peers
    #: This connection's produce requests per partition on their way to the leader, in the order the client
    #: sent them (requests are handled concurrently: see raystream.gateway.produce_queue).
    produce_order: dict[Any, Any] = dataclasses.field(default_factory=dict, compare=False)

    def brokers(self) -> dict[int, tuple[str, int]]:
        """Every gateway a client may reach, by Kafka node id: the known peers and this gateway."""
        found = dict(self.peers())
        found[self.node_id] = (self.host, self.port)
        return dict(sorted(found.items()))

    def coordinator(self, brokers: Mapping[int, tuple[str, int]] | None = None) -> tuple[int, str, int]:
        """(node id, host, port) of the gateway that clients use as coordinator: the lowest node id."""
        brokers = self.brokers() if brokers is None else brokers
        node_id = min(brokers)
        return node_id, *brokers[node_id]

    def gateways_of(self, broker_ids: Iterable[int], brokers: Mapping[int, tuple[str, int]]) -> list[int]:
        """The gateways (Kafka node ids, in order, no repeats) of raystream brokers: a broker's own gateway,
        or this gateway for a broker that has none."""
        out: list[int] = []
        for broker_id in broker_ids:
            node = broker_id if broker_id in brokers else self.node_id
            if node not in out:
                out.append(node)
        return out


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
    brokers = ctx.brokers()
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
            "partition_index": p.partition,
            "leader_id": ctx.gateways_of([p.leader], brokers)[0] if p.leader >= 0 else -1,
            "leader_epoch": p.leader_epoch, "replica_nodes": ctx.gateways_of(p.replicas, brokers),
            "isr_nodes": ctx.gateways_of(p.isr, brokers), "offline_replicas": []} for p in meta.partitions]
        topics.append({"error_code": ErrorCode.none, "name": name, "topic_id": ZERO_UUID, "is_internal": False,
                       "partitions": partitions, "topic_authorized_operations": NO_AUTHORIZED_OPERATIONS})
    return {"throttle_time": 0, "brokers": [{"node_id": node, "host": host, "port": port, "rack": None}
                                             for node, (host, port) in brokers.items()],
            "cluster_id": ctx.cluster_id, "controller_id": ctx.coordinator(brokers)[0], "topics": topics,
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
    **sasl_apis.HANDLERS,
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

