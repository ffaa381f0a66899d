"""Consumer-group membership over the Kafka protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
DescribeGroups, DeleteGroups.

Kafka clients join the same groups as raystream's Python consumers, under the same rules (raystream's
group coordinator, :mod:`raystream.actors.groups`): generations, session and rebalance timeouts, static
members, cooperative rebalancing. Who assigns depends on the protocol the group settles on, as Kafka's
protocol selection picks it (the protocol every member supports that most members prefer):

* one of raystream's assignors (``range``, ``roundrobin``, ``sticky``, ``cooperative-sticky``; the defaults
  of librdkafka, kafka-python, aiokafka and the Java client all include one): the coordinator assigns, for
  Kafka clients and Python handles alike. Every Kafka client is told it is a follower (JoinGroup's leader is
  none of them), sends an empty SyncGroup and gets its partitions from the coordinator, so a group may mix
  Kafka clients and Python handles freely.
* any other protocol (a Kafka client's own assignor): the leader assigns, as in Kafka. The leader gets every
  member's metadata verbatim, and its SyncGroup assignment is what each member's SyncGroup returns (a
  follower's SyncGroup waits for it). Python handles cannot join such a group: they know no such assignor
  (INCONSISTENT_GROUP_PROTOCOL, as in Kafka).

What differs from Kafka: only ``protocol_type`` "consumer" is served (Kafka Connect's "connect" groups get
INCONSISTENT_GROUP_PROTOCOL); a new member gets its id in the first JoinGroup answer, without Kafka's
MEMBER_ID_REQUIRED round trip (clients accept both); assignments are re-encoded from the partitions, so a
custom assignor's per-member user data in SyncGroup is not passed on.

Concurrency: coroutines on the gateway's event loop; coordinator calls are awaited futures (joins and syncs
long-poll the coordinator while a rebalance runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from raystream.core.assignors import Subscription
from raystream.core.group_results import ClassicJoinResult
from raystream.gateway.consumer_protocol import (
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)
from raystream.gateway.data_apis import error_code
from raystream.gateway.framing import Request
from raystream.protocol import TopicPartition

CONSUMER_PROTOCOL_TYPE = "consumer"
#: JoinGroup's leader when the coordinator assigns: no member's id, so every Kafka client is a follower.
NO_LEADER = ""


def _millis(value: Any) -> int:
    return int(value.total_seconds() * 1000)


async def _coordinator(ctx: Any, method: str, *args: Any) -> Any:
    return await asyncio.wrap_future(ctx.transport.group_submit(method, *args))


async def join_group(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    out: dict[str, Any] = {"throttle_time": 0, "error_code": ErrorCode.none, "generation_id": -1,
                           "protocol_type": CONSUMER_PROTOCOL_TYPE, "protocol_name": None, "leader": NO_LEADER,
                           "skip_assignment": False, "member_id": body.member_id or "", "members": []}
    if body.protocol_type != CONSUMER_PROTOCOL_TYPE or not body.protocols:
        out["error_code"] = ErrorCode.inconsistent_group_protocol
        return out
    session_ms = _millis(body.session_timeout)
    rebalance_ms = _millis(body.rebalance_timeout) if hasattr(body, "rebalance_timeout") else session_ms
    instance = getattr(body, "group_instance_id", None)
    try:
        subscription = decode_subscription(body.protocols[0].metadata, instance)
    except Exception:  # metadata that is no consumer subscription: not a consumer of this protocol type
        out["error_code"] = ErrorCode.inconsistent_group_protocol
        return out
    subscription = Subscription(
        subscription.topics, subscription.owned_partitions, subscription.generation_id, instance,
        subscription.user_data, tuple((p.name, bytes(p.metadata)) for p in body.protocols))
    try:
        result: ClassicJoinResult = await _coordinator(
            ctx, "join_group_classic", body.group_id, body.member_id or None, instance, request.client_id or "",
            [p.name for p in body.protocols], subscription, session_ms, rebalance_ms)
    except Exception as exc:  # answered as Kafka's error code
        out["error_code"] = error_code(exc)
        return out
    out.update(generation_id=result.generation_id, protocol_name=result.protocol, member_id=result.member_id,
               leader=result.leader_id if result.leader_id is not None else NO_LEADER,
               members=[{"member_id": member_id, "group_instance_id": instance_id,
                         "metadata": _metadata_for(subscription, result.protocol)}
                        for member_id, instance_id, subscription in result.members])
    return out


def _metadata_for(subscription: Any, protocol: str | None) -> bytes:
    """A member's metadata for the chosen protocol as it sent it, or its subscription encoded (a member
    that is no Kafka client)."""
    for name, metadata in subscription.protocol_metadata:
        if name == protocol:
            return metadata
    return encode_subscription(subscription)


async def sync_group(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    out: dict[str, Any] = {"throttle_time": 0, "error_code": ErrorCode.none,
                           "protocol_type": getattr(body, "protocol_type", None),
                           "protocol_name": getattr(body, "protocol_name", None), "assignment": b""}
    try:
        assignments = ({a.member_id: list(decode_assignment(a.assignment)) for a in body.assignments}
                       if body.assignments else None)
        partitions: tuple[TopicPartition, ...] = await _coordinator(
            ctx, "sync_group_classic", body.group_id, body.member_id, int(body.generation_id), assignments)
    except Exception as exc:  # answered as Kafka's error code
        out["error_code"] = error_code(exc)
        return out
    out["assignment"] = encode_assignment(partitions, version=0)  # version 0: every client reads it
    return out


async def heartbeat(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    try:
        rebalancing = await _coordinator(ctx, "heartbeat_group", body.group_id, body.member_id,
                                         int(body.generation_id), 0)
    except Exception as exc:  # answered as Kafka's error code
        return {"throttle_time": 0, "error_code": error_code(exc)}
    return {"throttle_time": 0,
            "error_code": ErrorCode.rebalance_in_progress if rebalancing else ErrorCode.none}


async def leave_group(request: Request, ctx: Any) -> Mapping[str, Any]:
    body = request.body
    leaving = ([(m.member_id, m.group_instance_id) for m in body.members] if hasattr(body, "members")
               else [(body.member_id, None)])
    members = []
    for member_id, instance_id in leaving:
        code = ErrorCode.none
        try:
            await _coordinator(ctx, "leave_group", body.group_id, member_id, instance_id)
        except Exception as exc:  # that member's error code
            code = error_code(exc)
        members.append({"member_id": member_id, "group_instance_id": instance_id, "error_code": code})
    top = members[0]["error_code"] if len(members) == 1 and not hasattr(body, "members") else ErrorCode.none
    return {"throttle_time": 0, "error_code": top, "members": members}


async def describe_groups(request: Request, ctx: Any) -> Mapping[str, Any]:
    groups = await asyncio.gather(*[_describe_group(ctx, g) for g in request.body.groups])
    return {"throttle_time": 0, "groups": groups}


async def _describe_group(ctx: Any, group_id: str) -> Mapping[str, Any]:
    out: dict[str, Any] = {"error_code": ErrorCode.none, "error_message": None, "group_id": group_id,
                           "group_state": "Dead", "protocol_type": "", "protocol_data": "", "members": []}
    try:
        described = await _coordinator(ctx, "describe_group_state", group_id)
    except Exception as exc:  # an unknown group is Dead without an error (up to v5), as in Kafka
        code = error_code(exc)
        if code is not ErrorCode.group_id_not_found:
            out.update(error_code=code, error_message=str(exc)[:500])
        return out
    out.update(group_state=described.state, protocol_type=CONSUMER_PROTOCOL_TYPE,
               protocol_data=described.protocol or "", members=[{
                   "member_id": m["member_id"], "group_instance_id": m["group_instance_id"],
                   "client_id": m["client_id"], "client_host": "",
                   "member_metadata": encode_subscription(Subscription(list(m["topics"]))),
                   "member_assignment": encode_assignment(m["assignment"], version=0)}
                   for m in described.members])
    return out


async def delete_groups(request: Request, ctx: Any) -> Mapping[str, Any]:
    results = []
    for group_id in request.body.groups_names:
        code = ErrorCode.none
        try:
            await _coordinator(ctx, "delete_group", group_id)
        except Exception as exc:  # that group's error code
            code = error_code(exc)
        results.append({"group_id": group_id, "error_code": code})
    return {"throttle_time": 0, "results": results}


#: Kafka API key -> (min version, max version, handler) served by this module.
HANDLERS = {
    11: (0, 9, join_group),  # JoinGroup
    12: (0, 4, heartbeat),  # Heartbeat
    13: (0, 5, leave_group),  # LeaveGroup
    14: (0, 5, sync_group),  # SyncGroup
    15: (0, 5, describe_groups),  # DescribeGroups
    42: (0, 2, delete_groups),  # DeleteGroups
}
