"""``Admin``: topic management (create, list, describe, alter config, add partitions, delete).

Arguments are checked here, before any remote call; the controller validates topic names and configs
again and raises the raystream errors (``TopicAlreadyExistsError``, ``InvalidConfigurationError``, ...).
Consumer-group administration arrives with consumer groups. Thread-safe (holds no mutable state besides
the closed flag).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from raystream.client import context
from raystream.client.base import BaseTransport
from raystream.core.names import validate_topic_name
from raystream.errors import ClosedError
from raystream.protocol import TopicDescription
from raystream.storage.records import check_user_schema

_GROUPS = "consumer groups arrive in a later release"


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"topic name must be a str, got {type(name).__name__}")
    return validate_topic_name(name)  # Kafka's rules; InvalidTopicError, before any remote call


def _check_count(what: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return value


def _check_config(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise TypeError("config must be a mapping of Kafka config names (e.g. 'retention.ms') to values")
    return dict(config)


class Admin:
    def __init__(self, *, request_timeout_ms: int = 60_000, cluster: Any = None,
                 transport: BaseTransport | None = None) -> None:
        if not isinstance(request_timeout_ms, int) or isinstance(request_timeout_ms, bool) or request_timeout_ms < 1:
            raise ValueError(f"request_timeout_ms must be an int >= 1, got {request_timeout_ms!r}")
        self._transport = context.resolve(cluster, transport)
        self._timeout_s = request_timeout_ms / 1000
        self._closed = False

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                     config: Mapping[str, Any] | None = None, schema: pa.Schema | None = None,
                     key_column: str | None = None) -> None:
        """Create a topic. With ``schema`` (a ``pyarrow.Schema``) it is Arrow-native: producers send tables
        of that schema; ``key_column`` names the column keyed partitioning and compaction use."""
        self._check_open()
        _check_name(name)
        _check_count("partitions", partitions)
        _check_count("replication_factor", replication_factor)
        config = _check_config(config)
        schema_bytes = None
        if schema is not None:
            check_user_schema(schema)  # TypeError / SchemaMismatchError for reserved column names
            schema_bytes = schema.serialize().to_pybytes()
        if key_column is not None:
            if not isinstance(key_column, str):
                raise TypeError("key_column must be a str or None")
            names = schema.names if schema is not None else ["key"]
            if key_column not in names:
                raise ValueError(f"key_column {key_column!r} is not a column of {names}")
        self._transport.create_topic(name, partitions, replication_factor, config, schema_bytes, key_column,
                                     timeout_s=self._timeout_s)

    def list_topics(self) -> list[str]:
        self._check_open()
        return sorted(self._transport.list_topics(timeout_s=self._timeout_s))

    def describe_topic(self, name: str) -> TopicDescription:
        self._check_open()
        return self._transport.describe_topic(_check_name(name), timeout_s=self._timeout_s)

    def alter_topic_config(self, name: str, config: Mapping[str, Any]) -> None:
        """Set the given topic configs (others keep their values)."""
        self._check_open()
        _check_name(name)
        config = _check_config(config)
        if config is None:
            raise TypeError("config must be a mapping")
        self._transport.alter_topic_config(name, config, timeout_s=self._timeout_s)

    def create_partitions(self, name: str, total: int) -> None:
        """Grow the topic to ``total`` partitions (Kafka cannot shrink a topic, nor can we)."""
        self._check_open()
        _check_name(name)
        _check_count("total", total)
        self._transport.create_partitions(name, total, timeout_s=self._timeout_s)

    def delete_topic(self, name: str) -> None:
        self._check_open()
        self._transport.delete_topic(_check_name(name), timeout_s=self._timeout_s)

    def list_groups(self) -> list[str]:
        raise NotImplementedError(_GROUPS)

    def describe_group(self, group_id: str) -> Any:
        raise NotImplementedError(_GROUPS)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("admin client is closed")

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
