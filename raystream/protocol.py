"""Request/response value types shared by clients and actors, and the public value objects of the API.

Everything here is a frozen dataclass (pickles across Ray) or an enum. No behaviour beyond small derived
properties.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, NamedTuple

import pyarrow as pa

ACTOR_NAMESPACE = "raystream"
#: Offset specs for ListOffsets (as Kafka's -2 / -1).
EARLIEST = -2
LATEST = -1


class Role(enum.Enum):
    LEADER = "leader"
    FOLLOWER = "follower"
    OFFLINE = "offline"


@dataclasses.dataclass(frozen=True, order=True)
class TopicPartition:
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


@dataclasses.dataclass(frozen=True)
class RecordMetadata:
    topic: str
    partition: int
    offset: int
    timestamp: int


@dataclasses.dataclass(frozen=True)
class BatchMetadata:
    """Result of ``send_batch`` of many rows to one partition: offsets ``[base_offset, base_offset + count)``."""

    topic: str
    partition: int
    base_offset: int
    count: int
    timestamp: int


class Record(NamedTuple):
    """One consumed record. A NamedTuple, not a dataclass: ``poll`` builds hundreds of thousands a second
    and a tuple costs a third of a frozen dataclass. ``headers`` is a tuple of (key, value) pairs."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: Any
    value: Any
    headers: tuple[tuple[str, bytes | None], ...]


@dataclasses.dataclass(frozen=True)
class PartitionInfo:
    partition: int
    leader: str | None  # Ray node id (hex) of the leader's node
    leader_epoch: int
    replicas: list[str]
    isr: list[str]
    log_start_offset: int = -1
    high_watermark: int = -1
    log_end_offset: int = -1


@dataclasses.dataclass(frozen=True)
class TopicDescription:
    name: str
    partitions: list[PartitionInfo]
    config: dict[str, Any]
    schema: pa.Schema | None
    #: The column keyed partitioning and compaction use, for an Arrow-native topic.
    key_column: str | None = None


# -- metadata (controller → clients and replicas) -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PartitionState:
    """The controller's record of one partition. Replicas are broker ids (stable across Ray restarts)."""

    topic: str
    partition: int
    replicas: tuple[int, ...]
    leader: int  # broker id, -1 when offline
    leader_epoch: int
    isr: tuple[int, ...]
    partition_epoch: int = 0  # bumped on every ISR or leader change (Kafka's partition epoch)

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclasses.dataclass(frozen=True)
class TopicMetadata:
    name: str
    partitions: tuple[PartitionState, ...]
    config: dict[str, Any]
    schema_bytes: bytes | None = None
    key_column: str | None = None

    @property
    def schema(self) -> pa.Schema | None:
        if self.schema_bytes is None:
            return None
        return pa.ipc.read_schema(pa.py_buffer(self.schema_bytes))


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """The settings a controller runs with, under Kafka's names: ``broker`` (``raystream.config.BrokerConfig``)
    and ``topic_defaults``, what a new topic gets for each config it does not set."""

    broker: dict[str, Any]
    topic_defaults: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    broker_id: int
    node_id: str  # current Ray node id (hex)
    data_dir: str  # the node's data dir (its RAYSTREAM_DATA_DIR, else the cluster's data_dir)
    log_dir: str  # the broker's directory, holding its partition directories (raystream.storage.broker_dirs)
    alive: bool = True


# -- produce / fetch ---------------------------------------------------------------------------------------
# Requests to a partition replica actor (one object per call, the Ray boundary of RayTransport). Frozen and
# slotted: built once per request on the client, pickled once.
@dataclasses.dataclass(frozen=True, slots=True)
class ProduceRequest:
    """Append ``batch`` as the leader (Kafka's ProduceRequest for one partition). ``leader_epoch`` None
    skips the epoch check; an idempotent producer passes ``producer_id >= 0`` with its epoch and the
    batch's first sequence; ``replay``: a replay producer's batch; ``transactional``: a batch of the
    producer's open transaction."""

    batch: pa.RecordBatch | pa.Table
    acks: int
    timeout_ms: int
    leader_epoch: int | None = None
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    replay: bool = False
    transactional: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class FetchRequest:
    """A consumer's long-poll read from ``offset`` (Kafka's FetchRequest for one partition): ``columns``
    projects, ``row_filter`` (a ``pyarrow.compute.Expression``) filters on the replica;
    ``read_committed`` reads below the last stable offset only."""

    offset: int
    max_bytes: int
    max_wait_ms: int
    min_bytes: int
    columns: list[str] | None = None
    leader_epoch: int | None = None
    row_filter: Any = None
    read_committed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class ListOffsetsRequest:
    """Kafka's ListOffsets for one partition: ``spec`` is EARLIEST, LATEST or a timestamp (ms)."""

    spec: int
    read_committed: bool = False


#: DeleteRecords' offset meaning "up to the high watermark" (Kafka's -1).
HIGH_WATERMARK = -1


@dataclasses.dataclass(frozen=True, slots=True)
class DeleteRecordsRequest:
    """Kafka's DeleteRecords for one partition: move the log start offset to ``offset`` (HIGH_WATERMARK: to
    the high watermark); answered once every in-sync replica has, or RequestTimeoutError after
    ``timeout_ms``. ``leader_epoch`` None skips the epoch check."""

    offset: int
    timeout_ms: int
    leader_epoch: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaDescription:
    """A partition replica's ``describe()``: its role and offsets as it knows them."""

    role: str
    leader_epoch: int
    isr: list[int]
    log_start_offset: int
    high_watermark: int
    log_end_offset: int
    size_bytes: int
    log_dir: str


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A follower's answer to the leader's KIP-101/279 handshake: its log end, its leader-epoch cache
    entries ``(epoch, start offset)``, its log start offset and high watermark."""

    log_end_offset: int
    latest_epoch: int
    epochs: list[tuple[int, int]]
    log_start_offset: int
    high_watermark: int


@dataclasses.dataclass(frozen=True)
class ProduceResult:
    base_offset: int  # -1 with acks=0
    log_append_time: int
    log_start_offset: int
    record_count: int
    max_timestamp: int


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """Records in ``[fetch_offset, next_offset)`` as Arrow batches (only the requested columns)."""

    batches: list[pa.RecordBatch]
    high_watermark: int
    log_start_offset: int
    log_end_offset: int
    next_offset: int
    bytes: int = 0
    batches_skipped: int = 0  # batches a row filter's statistics check skipped without reading them
    last_stable_offset: int = -1  # Kafka's LSO when the fetch was answered (-1: not reported)


def replica_actor_name(cluster: str, topic: str, partition: int, broker_id: int) -> str:
    """Ray actor name of one partition replica ('/' cannot occur in cluster or topic names)."""
    return f"{cluster}/replica/{topic}/{partition}/{broker_id}"


def broker_agent_name(cluster: str, node_id: str) -> str:
    """Ray actor name of the broker agent of one Ray node (``raystream.actors.broker``)."""
    return f"{cluster}/broker/{node_id}"


def controller_actor_name(cluster: str) -> str:
    return f"{cluster}/controller"


@dataclasses.dataclass(frozen=True, slots=True)
class JoinGroupResult:
    """The group coordinator's answer to ``join_group`` (Kafka's JoinGroup and SyncGroup in one call):
    the member's id and generation, the chosen assignor, its assignment, the partitions it must revoke
    first, and ``rejoin`` (a cooperative follow-up rebalance is due: rejoin after revoking)."""

    member_id: str
    generation_id: int
    protocol: str | None
    assignment: tuple[TopicPartition, ...]
    revoked: tuple[TopicPartition, ...]
    rejoin: bool


@dataclasses.dataclass(frozen=True, slots=True)
class DescribeGroupResult:
    """The group coordinator's answer to ``describe_group_state``; ``members`` as in GroupDescription,
    ``committed`` the (offset, metadata) per partition with a commit. The admin client adds the lag."""

    group_id: str
    state: str
    generation_id: int
    protocol: str | None
    members: list[dict[str, Any]]
    committed: dict[TopicPartition, tuple[int, str]]


@dataclasses.dataclass(frozen=True)
class GroupDescription:
    """``Admin.describe_group``: ``members`` are dicts (member_id, group_instance_id, client_id, topics,
    assignment); ``offsets`` the committed offset per partition; ``lag`` high watermark − committed offset
    (None where the partition's leader could not be asked)."""

    group_id: str
    state: str  # Empty | PreparingRebalance | CompletingRebalance | Stable | Dead
    generation_id: int
    members: list[dict[str, Any]]
    offsets: dict[TopicPartition, int]
    lag: dict[TopicPartition, int | None]
    protocol: str | None = None
