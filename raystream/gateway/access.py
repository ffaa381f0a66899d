"""Authorization of every request before its handler runs, as Kafka's broker checks each API.

With an authorizer in the gateway's :class:`~raystream.gateway.security.SecurityConfig`, each API has a
rule in :data:`RULES` (a test checks every served API has one; at run time a request of an API without a
rule closes the connection, so a new API is refused rather than served unchecked). A rule looks at the
request and asks the connection's :class:`~raystream.gateway.sasl_apis.Session` (its principal and host)
what it may do; its :class:`Plan` either answers the whole request itself (e.g. JoinGroup for a group the
principal may not Read: GROUP_AUTHORIZATION_FAILED, the handler never runs), or runs the handler on the
request with the refused resources taken out and adds them to the answer with their error code
(e.g. Produce to a topic without Write: that topic's partitions get TOPIC_AUTHORIZATION_FAILED, the others
are written), or filters the answer (Metadata lists only the topics the principal may Describe, ListGroups
only the groups). The checks are Kafka's (``KafkaApis``):

=====================================  ===================================================================
Produce                                Write on each topic; a transactional one Write on its transactional id
Fetch                                  Read on each topic
ListOffsets, Metadata                  Describe on each topic (Metadata: others are left out of a full
                                       listing; asked-for ones get TOPIC_AUTHORIZATION_FAILED)
OffsetCommit, TxnOffsetCommit          Read on the group, Read on each topic (Txn: Write on the txn id)
OffsetFetch                            Describe on the group, Describe on each topic
FindCoordinator                        Describe on the group or transactional id
JoinGroup, SyncGroup, Heartbeat,       Read on the group
LeaveGroup
DescribeGroups, ListGroups             Describe on each group (ListGroups: Describe on the cluster lists all)
DeleteGroups                           Delete on each group
CreateTopics                           Create on the cluster, else Create on each topic
DeleteTopics, DeleteRecords            Delete on each topic
CreatePartitions                       Alter on each topic
DescribeConfigs / AlterConfigs,        DescribeConfigs / AlterConfigs on each topic, or on the cluster
IncrementalAlterConfigs                for broker resources
InitProducerId                         Write on the transactional id; without one, IdempotentWrite on the
                                       cluster or Write on any topic (KIP-679)
AddPartitionsToTxn                     Write on the transactional id and on each topic
AddOffsetsToTxn, EndTxn                Write on the transactional id (AddOffsetsToTxn: Read on the group)
DescribeCluster                        Describe on the cluster
ApiVersions, SaslHandshake,            none
SaslAuthenticate
=====================================  ===================================================================

Pure functions of a request and a session; they run on the connection's task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kio.index import load_response_schema
from kio.schema.errors import ErrorCode

from raystream.core.acl import CLUSTER_NAME, Operation, ResourceType
from raystream.errors import InvalidRequestError
from raystream.gateway import apis
from raystream.gateway.admin_apis import ZERO_UUID
from raystream.gateway.entities import build
from raystream.gateway.framing import Request

TOPIC, GROUP, CLUSTER, TXN = (ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER,
                              ResourceType.TRANSACTIONAL_ID)
READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE = (Operation.READ, Operation.WRITE, Operation.CREATE,
                                                Operation.DELETE, Operation.ALTER, Operation.DESCRIBE)
TOPIC_DENIED, GROUP_DENIED = ErrorCode.topic_authorization_failed, ErrorCode.group_authorization_failed
CLUSTER_DENIED, TXN_DENIED = ErrorCode.cluster_authorization_failed, ErrorCode.transactional_id_authorization_failed
NO_AUTHORIZED_OPERATIONS = apis.NO_AUTHORIZED_OPERATIONS
CONFIG_TOPIC, CONFIG_BROKER = 2, 4  # DescribeConfigs/AlterConfigs resource types


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do with one request: answer ``respond`` without the handler, or run the handler on ``body``
    (the request's, or one with refused resources taken out) and pass its answer through ``merge``."""

    body: Any = None
    respond: Mapping[str, Any] | None = None
    merge: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None


ALLOWED = Plan()
Rule = Callable[[Any, Any], Plan]


async def handle(request: Request, ctx: apis.GatewayContext, session: Any) -> Any:
    """The response entity for ``request`` from ``session``'s principal, or None for no response."""
    if session is None or session.security.authorizer is None:
        return await apis.handle(request, ctx)
    rule = RULES.get(request.api_key)
    if rule is None:
        raise InvalidRequestError(f"API key {request.api_key} has no authorization rule: refused",
                                  api_key=request.api_key)
    plan = rule(request.body, session)
    if plan.respond is not None:
        values: Mapping[str, Any] | None = plan.respond
    else:
        body = request.body if plan.body is None else plan.body
        values = await apis.HANDLERS[request.api_key][2](dataclasses.replace(request, body=body), ctx)
        if values is not None and plan.merge is not None:
            values = plan.merge(values)
    return None if values is None else build(load_response_schema(request.api_key, request.api_version), values)


# -- building blocks -----------------------------------------------------------------------------------------
def _split(items: Iterable[Any], allowed: Callable[[Any], bool]) -> tuple[list[Any], list[Any]]:
    kept, refused = [], []
    for item in items:
        (kept if allowed(item) else refused).append(item)
    return kept, refused


def _append(field: str, entries: list[Mapping[str, Any]]) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    def merge(values: Mapping[str, Any]) -> Mapping[str, Any]:
        return {**values, field: [*values.get(field, []), *entries]}
    return merge


def _per_resource(kind: ResourceType, operation: Operation, field: str, name: Callable[[Any], str],
                  answer_field: str, refused_entry: Callable[[Any, ErrorCode], Mapping[str, Any]],
                  code: ErrorCode) -> Rule:
    """A rule for a request listing resources in ``field``: the refused ones are taken out and answered in
    ``answer_field`` with ``code``."""
    def rule(body: Any, session: Any) -> Plan:
        kept, refused = _split(getattr(body, field) or (), lambda item: session.authorize(operation, kind, name(item)))
        if not refused:
            return ALLOWED
        return Plan(body=dataclasses.replace(body, **{field: tuple(kept)}),
                    merge=_append(answer_field, [refused_entry(item, code) for item in refused]))
    return rule


def _whole(kind: ResourceType, operation: Operation, name: Callable[[Any], str | None],
           answer: Callable[[Any, ErrorCode], Mapping[str, Any]], code: ErrorCode) -> Rule:
    """A rule for a request about one resource: refused, the whole request is answered with ``code``."""
    def rule(body: Any, session: Any) -> Plan:
        resource = name(body)
        if resource is None or session.authorize(operation, kind, resource):
            return ALLOWED
        return Plan(respond=answer(body, code))
    return rule


def _all_of(*rules: Rule) -> Rule:
    """The first rule that answers the whole request, else the first that changes it (rules whose
    resources are the same request fields must not be combined)."""
    def rule(body: Any, session: Any) -> Plan:
        plans = [r(body, session) for r in rules]
        return next((p for p in plans if p.respond is not None), next((p for p in plans if p is not ALLOWED),
                                                                      ALLOWED))
    return rule


def _error(code_field: str = "error_code", **extra: Any) -> Callable[[Any, ErrorCode], Mapping[str, Any]]:
    return lambda body, code: {"throttle_time": 0, code_field: code, **extra}


def _topic_partitions(name_field: str, partitions: Callable[[Any], Iterable[Mapping[str, Any]]], parts_field: str,
                      topic_field: str = "name") -> Callable[[Any, ErrorCode], Mapping[str, Any]]:
    """A refused topic's answer entry: every partition of it with the error code."""
    def entry(topic: Any, code: ErrorCode) -> Mapping[str, Any]:
        return {topic_field: getattr(topic, name_field),
                parts_field: [{**p, "error_code": code} for p in partitions(topic)]}
    return entry


# -- per-API rules -------------------------------------------------------------------------------------------
#: A refused partition's Produce and Fetch answers (every field a version may need).
_PRODUCED = {"base_offset": -1, "log_append_time": -1, "log_start_offset": -1, "record_errors": [],
             "error_message": None}
_FETCHED = {"high_watermark": -1, "last_stable_offset": -1, "log_start_offset": -1, "aborted_transactions": None,
            "preferred_read_replica": -1, "records": b""}


def _produce(body: Any, session: Any) -> Plan:
    txn = getattr(body, "transactional_id", None)
    if txn is not None and not session.authorize(WRITE, TXN, txn):
        return Plan(respond={"throttle_time": 0, "responses": [
            {"name": t.name, "partition_responses": [{**_PRODUCED, "index": p.index, "error_code": TXN_DENIED}
                                                     for p in t.partition_data]} for t in body.topic_data]})
    return _per_resource(TOPIC, WRITE, "topic_data", lambda t: t.name, "responses", _topic_partitions(
        "name", lambda t: [{**_PRODUCED, "index": p.index} for p in t.partition_data], "partition_responses"),
        TOPIC_DENIED)(body, session)


_fetch = _per_resource(TOPIC, READ, "topics", lambda t: t.topic, "responses", _topic_partitions(
    "topic", lambda t: [{**_FETCHED, "partition_index": p.partition} for p in t.partitions], "partitions",
    topic_field="topic"), TOPIC_DENIED)
_list_offsets = _per_resource(TOPIC, DESCRIBE, "topics", lambda t: t.name, "topics", _topic_partitions(
    "name", lambda t: [{"partition_index": p.partition_index, "offset": -1, "timestamp": -1, "leader_epoch": -1,
                        "old_style_offsets": []} for p in t.partitions], "partitions"), TOPIC_DENIED)


def _metadata(body: Any, session: Any) -> Plan:
    asked = body.topics is not None

    def merge(values: Mapping[str, Any]) -> Mapping[str, Any]:
        topics = []
        for topic in values["topics"]:
            if session.authorize(DESCRIBE, TOPIC, topic["name"]):
                topics.append(topic)
            elif asked:  # named by the client: refused without saying whether it exists
                topics.append({"error_code": TOPIC_DENIED, "name": topic["name"], "topic_id": ZERO_UUID,
                               "is_internal": False, "partitions": [],
                               "topic_authorized_operations": NO_AUTHORIZED_OPERATIONS})
        return {**values, "topics": topics}
    return Plan(merge=merge)


_commit_partitions = _topic_partitions("name", lambda t: [{"partition_index": p.partition_index}
                                                          for p in t.partitions], "partitions")
_offset_commit = _all_of(
    _whole(GROUP, READ, lambda b: b.group_id, lambda b, code: {"throttle_time": 0, "topics": [
        _commit_partitions(t, code) for t in b.topics]}, GROUP_DENIED),
    _per_resource(TOPIC, READ, "topics", lambda t: t.name, "topics", _commit_partitions, TOPIC_DENIED))


def _offset_fetch(body: Any, session: Any) -> Plan:
    if not session.authorize(DESCRIBE, GROUP, body.group_id):
        return Plan(respond={"throttle_time": 0, "error_code": GROUP_DENIED, "topics": [  # v1: per partition
            {"name": t.name, "partitions": [{"partition_index": p, "committed_offset": -1, "metadata": "",
                                             "committed_leader_epoch": -1, "error_code": GROUP_DENIED}
                                            for p in t.partition_indexes]} for t in body.topics or ()]})
    if body.topics is None:  # every committed topic: the refused ones are left out
        return Plan(merge=lambda values: {**values, "topics": [
            t for t in values["topics"] if session.authorize(DESCRIBE, TOPIC, t["name"])]})
    return _per_resource(TOPIC, DESCRIBE, "topics", lambda t: t.name, "topics", _topic_partitions(
        "name", lambda t: [{"partition_index": p, "committed_offset": -1, "committed_leader_epoch": -1,
                            "metadata": ""} for p in t.partition_indexes], "partitions"), TOPIC_DENIED)(body, session)


def _find_coordinator(body: Any, session: Any) -> Plan:
    is_txn = int(getattr(body, "key_type", 0)) == 1
    if session.authorize(DESCRIBE, TXN if is_txn else GROUP, body.key):
        return ALLOWED
    return Plan(respond={"throttle_time": 0, "error_code": TXN_DENIED if is_txn else GROUP_DENIED,
                         "error_message": None, "node_id": -1, "host": "", "port": -1})


def _group_id(body: Any) -> str:
    return body.group_id


_join_group = _whole(GROUP, READ, _group_id, _error(generation_id=-1, protocol_type=None, protocol_name=None,
                                                    leader="", skip_assignment=False, member_id="", members=[]),
                     GROUP_DENIED)
_sync_group = _whole(GROUP, READ, _group_id, _error(protocol_type=None, protocol_name=None, assignment=b""),
                     GROUP_DENIED)
_heartbeat = _whole(GROUP, READ, _group_id, _error(), GROUP_DENIED)
_leave_group = _whole(GROUP, READ, _group_id, _error(members=[]), GROUP_DENIED)
_describe_groups = _per_resource(GROUP, DESCRIBE, "groups", lambda g: g, "groups", lambda g, code: {
    "error_code": code, "error_message": None, "group_id": g, "group_state": "", "protocol_type": "",
    "protocol_data": "", "members": [], "authorized_operations": NO_AUTHORIZED_OPERATIONS}, GROUP_DENIED)
_delete_groups = _per_resource(GROUP, DELETE, "groups_names", lambda g: g, "results",
                               lambda g, code: {"group_id": g, "error_code": code}, GROUP_DENIED)


def _list_groups(body: Any, session: Any) -> Plan:
    if session.authorize(DESCRIBE, CLUSTER, CLUSTER_NAME):
        return ALLOWED
    return Plan(merge=lambda values: {**values, "groups": [
        g for g in values["groups"] if session.authorize(DESCRIBE, GROUP, g["group_id"])]})


def _create_topics(body: Any, session: Any) -> Plan:
    if session.authorize(CREATE, CLUSTER, CLUSTER_NAME):
        return ALLOWED
    return _per_resource(TOPIC, CREATE, "topics", lambda t: t.name, "topics", lambda t, code: {
        "name": t.name, "topic_id": ZERO_UUID, "error_code": code, "error_message": None, "num_partitions": -1,
        "replication_factor": -1, "configs": [], "topic_config_error_code": 0}, TOPIC_DENIED)(body, session)


_delete_topics = _per_resource(TOPIC, DELETE, "topic_names", lambda n: n, "responses",
                               lambda n, code: {"name": n, "error_code": code, "error_message": None}, TOPIC_DENIED)
_delete_records = _per_resource(TOPIC, DELETE, "topics", lambda t: t.name, "topics", _topic_partitions(
    "name", lambda t: [{"partition_index": p.partition_index, "low_watermark": -1} for p in t.partitions],
    "partitions"), TOPIC_DENIED)
_create_partitions = _per_resource(TOPIC, ALTER, "topics", lambda t: t.name, "results",
                                   lambda t, code: {"name": t.name, "error_code": code, "error_message": None},
                                   TOPIC_DENIED)


def _configs(operation: Operation, answer_field: str) -> Rule:
    """DescribeConfigs/AlterConfigs/IncrementalAlterConfigs: topics by name, broker resources on the cluster."""
    def allowed(resource: Any, session: Any) -> bool:
        if int(resource.resource_type) == CONFIG_TOPIC:
            return session.authorize(operation, TOPIC, resource.resource_name)
        return session.authorize(operation, CLUSTER, CLUSTER_NAME)

    def rule(body: Any, session: Any) -> Plan:
        kept, refused = _split(body.resources, lambda r: allowed(r, session))
        if not refused:
            return ALLOWED
        return Plan(body=dataclasses.replace(body, resources=tuple(kept)), merge=_append(answer_field, [{
            "error_code": TOPIC_DENIED if int(r.resource_type) == CONFIG_TOPIC else CLUSTER_DENIED,
            "error_message": None, "resource_type": r.resource_type, "resource_name": r.resource_name,
            "configs": []} for r in refused]))
    return rule


def _init_producer_id(body: Any, session: Any) -> Plan:
    txn = body.transactional_id
    if txn is not None:
        allowed, code = session.authorize(WRITE, TXN, txn), TXN_DENIED
    else:  # an idempotent producer: IdempotentWrite on the cluster, or Write on some topic (KIP-679)
        allowed = session.authorize(Operation.IDEMPOTENT_WRITE, CLUSTER, CLUSTER_NAME) or session.authorize_any(
            WRITE, TOPIC)
        code = CLUSTER_DENIED
    if allowed:
        return ALLOWED
    return Plan(respond={"throttle_time": 0, "error_code": code, "producer_id": -1, "producer_epoch": -1})


def _add_partitions_to_txn(body: Any, session: Any) -> Plan:
    topics = body.v3_and_below_topics
    txn_ok = session.authorize(WRITE, TXN, body.v3_and_below_transactional_id)
    refused = {t.name for t in topics if not session.authorize(WRITE, TOPIC, t.name)}
    if txn_ok and not refused:
        return ALLOWED

    def code(name: str) -> ErrorCode:  # as Kafka: the refused ones say why, the others were not attempted
        return TXN_DENIED if not txn_ok else TOPIC_DENIED if name in refused else ErrorCode.operation_not_attempted
    return Plan(respond={"throttle_time": 0, "results_by_topic_v3_and_below": [
        {"name": t.name, "results_by_partition": [{"partition_index": p, "partition_error_code": code(t.name)}
                                                  for p in t.partitions]} for t in topics]})


def _txn_id(body: Any) -> str:
    return body.transactional_id


_end_txn = _whole(TXN, WRITE, _txn_id, _error(), TXN_DENIED)
_add_offsets_to_txn = _all_of(_whole(TXN, WRITE, _txn_id, _error(), TXN_DENIED),
                              _whole(GROUP, READ, _group_id, _error(), GROUP_DENIED))
_txn_offset_commit = _all_of(
    _whole(TXN, WRITE, _txn_id, lambda b, code: {"throttle_time": 0, "topics": [
        _commit_partitions(t, code) for t in b.topics]}, TXN_DENIED),
    _offset_commit)
_describe_cluster = _whole(CLUSTER, DESCRIBE, lambda b: CLUSTER_NAME, _error(
    error_message=None, endpoint_type=1, cluster_id="", controller_id=-1,
    brokers=[], cluster_authorized_operations=NO_AUTHORIZED_OPERATIONS), CLUSTER_DENIED)


def _unchecked(body: Any, session: Any) -> Plan:
    return ALLOWED


#: Kafka API key -> the rule checked before its handler runs (see the module docstring).
RULES: dict[int, Rule] = {
    0: _produce, 1: _fetch, 2: _list_offsets, 3: _metadata, 8: _offset_commit, 9: _offset_fetch,
    10: _find_coordinator, 11: _join_group, 12: _heartbeat, 13: _leave_group, 14: _sync_group,
    15: _describe_groups, 16: _list_groups, 17: _unchecked, 18: _unchecked, 19: _create_topics,
    20: _delete_topics, 21: _delete_records, 22: _init_producer_id, 24: _add_partitions_to_txn,
    25: _add_offsets_to_txn, 26: _end_txn, 28: _txn_offset_commit, 32: _configs(Operation.DESCRIBE_CONFIGS, "results"),
    33: _configs(Operation.ALTER_CONFIGS, "responses"), 36: _unchecked, 37: _create_partitions,
    42: _delete_groups, 44: _configs(Operation.ALTER_CONFIGS, "responses"), 60: _describe_cluster,
}
