"""Kafka's consumer protocol: the bytes consumers put in JoinGroup's metadata and SyncGroup's assignments.

A Kafka consumer describes itself in each JoinGroup protocol's ``metadata`` as a versioned
ConsumerProtocolSubscription (topics, user data, owned partitions, their generation, rack) and gets its
partitions in SyncGroup's ``assignment`` as a ConsumerProtocolAssignment. The coordinator works with
:class:`~raystream.core.assignors.Subscription` and tuples of partitions; this module converts, with kio's
classes generated from Kafka's JSON specs. Newer versions than kio knows are read as the newest one it
knows, ignoring the trailing fields, as Kafka's own clients do for forward compatibility.

Pure functions; thread-safe.
"""

from __future__ import annotations

import importlib
import io
import struct
from collections.abc import Iterable

from kio.serial import entity_reader, entity_writer

from raystream.core.assignors import NO_GENERATION, Subscription
from raystream.errors import InvalidRequestError
from raystream.protocol import TopicPartition

#: The newest versions kio has classes for.
SUBSCRIPTION_VERSION = 3
ASSIGNMENT_VERSION = 3
_VERSION = struct.Struct(">h")


def _schema(name: str, version: int) -> type:
    """kio's class of ``name`` (consumer_protocol_subscription or _assignment) at ``version``."""
    module = importlib.import_module(f"kio.schema.{name}.v{version}.data")
    return getattr(module, "".join(word.title() for word in name.split("_")))


def _read(name: str, newest: int, data: bytes | None):
    if not data or len(data) < _VERSION.size:
        raise InvalidRequestError(f"empty or truncated {name} ({len(data or b'')} bytes)")
    (version,) = _VERSION.unpack_from(data, 0)
    if version < 0:
        raise InvalidRequestError(f"{name} has version {version}")
    try:
        entity, _ = entity_reader(_schema(name, min(version, newest)))(data, _VERSION.size)
    except Exception as exc:  # kio raises ValueError, IndexError, struct.error, UnicodeDecodeError, ...
        raise InvalidRequestError(f"malformed {name} v{version}: {type(exc).__name__}: {exc}") from None
    return version, entity


def _write(name: str, version: int, **fields) -> bytes:
    module = importlib.import_module(f"kio.schema.{name}.v{version}.data")
    cls = _schema(name, version)
    known = cls.__dataclass_fields__
    for key in ("owned_partitions", "assigned_partitions"):
        if key in fields and key in known:
            fields[key] = tuple(module.TopicPartition(topic=t, partitions=tuple(ps)) for t, ps in fields[key])
    buffer = io.BytesIO()
    buffer.write(_VERSION.pack(version))
    entity_writer(cls)(buffer, cls(**{k: v for k, v in fields.items() if k in known}))
    return buffer.getvalue()


def _grouped(tps: Iterable[TopicPartition]) -> list[tuple[str, list[int]]]:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(set(tps)):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return list(by_topic.items())


def decode_subscription(data: bytes | None, group_instance_id: str | None = None) -> Subscription:
    """A JoinGroup protocol's metadata as the coordinator's Subscription (InvalidRequestError if malformed)."""
    version, entity = _read("consumer_protocol_subscription", SUBSCRIPTION_VERSION, data)
    owned = [TopicPartition(tp.topic, int(p)) for tp in getattr(entity, "owned_partitions", ()) for p in tp.partitions]
    generation = int(getattr(entity, "generation_id", NO_GENERATION)) if version >= 2 else NO_GENERATION
    return Subscription(sorted(set(entity.topics)), owned, generation, group_instance_id, entity.user_data)


def encode_subscription(subscription: Subscription, version: int = SUBSCRIPTION_VERSION) -> bytes:
    """The ConsumerProtocolSubscription bytes a Kafka leader reads for a member (any member: a Python
    handle's subscription is described to a Kafka leader the same way)."""
    return _write("consumer_protocol_subscription", version, topics=tuple(subscription.topics),
                  user_data=subscription.user_data, owned_partitions=_grouped(subscription.owned_partitions),
                  generation_id=subscription.generation_id)


def decode_assignment(data: bytes | None) -> tuple[TopicPartition, ...]:
    """A leader's SyncGroup assignment for one member; empty bytes mean no partitions, as in Kafka."""
    if not data:
        return ()
    _, entity = _read("consumer_protocol_assignment", ASSIGNMENT_VERSION, data)
    return tuple(sorted({TopicPartition(tp.topic, int(p)) for tp in entity.assigned_partitions
                         for p in tp.partitions}))


def encode_assignment(tps: Iterable[TopicPartition], version: int = ASSIGNMENT_VERSION) -> bytes:
    """The ConsumerProtocolAssignment bytes of a member's partitions (no user data)."""
    return _write("consumer_protocol_assignment", version, assigned_partitions=_grouped(tps), user_data=None)
