"""The consumer's configuration, checked once (Kafka's ``ConsumerConfig``): every argument of
``Consumer(...)`` but the cluster handle, with Kafka's names (underscores). The defaults stay in
``Consumer.__init__``'s signature, which is the public API (SPEC); this class only holds and checks the
values, raising TypeError / ValueError before anything connects. Immutable, so thread-safe.

Also the argument checks of the consumer's methods (ints, timeouts, partitions, commit offsets,
subscriptions).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from raystream.client.offset_spec import RESET_SPECS
from raystream.core.assignors import ASSIGNORS
from raystream.protocol import TopicPartition


def check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_timeout(name: str, value: Any) -> float | None:
    """A timeout in seconds (None: the caller's default)."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def check_poll_args(timeout: Any, max_records: Any) -> float | None:
    """A poll's ``timeout`` (seconds) and ``max_records`` (None or >= 1), checked; returns the timeout."""
    if max_records is not None:
        check_int("max_records", max_records, 1)
    return check_timeout("timeout", timeout)


def check_tp(tp: Any) -> TopicPartition:
    if not isinstance(tp, TopicPartition):
        raise TypeError(f"expected a TopicPartition, got {type(tp).__name__}")
    return tp


def tp_list(partitions: Any) -> list[TopicPartition]:
    """A TopicPartition or an iterable of them, as a list (TypeError for anything else)."""
    if isinstance(partitions, TopicPartition):
        return [partitions]
    if isinstance(partitions, (str, bytes)) or not isinstance(partitions, Iterable):
        raise TypeError("partitions must be a list of TopicPartition")
    return [check_tp(tp) for tp in partitions]


def commit_offsets(offsets: Mapping[TopicPartition, Any] | None,
                   positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, tuple[int, str]]:
    """``Consumer.commit``'s argument (tp -> offset or (offset, metadata)) as tp -> (offset, metadata);
    None: the current ``positions``."""
    if offsets is None:
        return {tp: (position, "") for tp, position in positions.items()}
    if not isinstance(offsets, Mapping):
        raise TypeError("offsets must be a dict of TopicPartition -> offset")
    out = {}
    for tp, value in offsets.items():
        tp = check_tp(tp)
        offset, metadata = value if isinstance(value, tuple) else (value, "")
        check_int(f"offset of {tp}", offset, 0)
        if not isinstance(metadata, str):
            raise TypeError("commit metadata must be a str")
        out[tp] = (offset, metadata)
    return out


def subscription_args(topics: Any, pattern: Any) -> tuple[set[str], re.Pattern | None]:
    """``Consumer.subscribe``'s ``topics`` / ``pattern`` as (topic names, compiled pattern); exactly one
    is given (a compiled pattern may come as ``topics``)."""
    if isinstance(topics, re.Pattern):
        topics, pattern = None, topics
    if pattern is not None:
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        if not isinstance(pattern, re.Pattern) or topics:
            raise TypeError("pass either topics or a pattern (str or re.Pattern)")
        return set(), pattern
    if isinstance(topics, str) or not isinstance(topics, Iterable):
        raise TypeError("topics must be a list of topic names")
    names = set(topics)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise ValueError("topics must be a non-empty list of topic names")
    return names, None


#: Integer settings and the smallest value each accepts.
_MINIMUMS = (("max_poll_records", 1), ("fetch_min_bytes", 0), ("fetch_max_wait_ms", 0), ("fetch_max_bytes", 1),
             ("max_partition_fetch_bytes", 1), ("request_timeout_ms", 1), ("retry_backoff_ms", 0),
             ("metadata_max_age_ms", 0), ("default_api_timeout_ms", 1), ("auto_commit_interval_ms", 0),
             ("session_timeout_ms", 1), ("heartbeat_interval_ms", 1), ("max_poll_interval_ms", 1))


@dataclasses.dataclass(frozen=True)
class ConsumerConfig:
    group_id: str | None
    auto_offset_reset: str
    enable_auto_commit: bool
    auto_commit_interval_ms: int
    isolation_level: str
    session_timeout_ms: int
    heartbeat_interval_ms: int
    max_poll_interval_ms: int
    max_poll_records: int
    fetch_min_bytes: int
    fetch_max_wait_ms: int
    fetch_max_bytes: int
    max_partition_fetch_bytes: int
    request_timeout_ms: int
    retry_backoff_ms: int
    metadata_max_age_ms: int
    default_api_timeout_ms: int
    consumer_timeout_ms: int | None
    key_deserializer: Callable[[bytes], Any] | None
    value_deserializer: Callable[[bytes], Any] | None
    client_id: str | None
    group_instance_id: str | None
    partition_assignment_strategy: Iterable[str] | str

    def __post_init__(self) -> None:
        """The checks, in the order ``Consumer`` always made them (the first failing one is raised)."""
        group_id = self.group_id
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise TypeError("group_id must be a non-empty str or None")
        if self.group_instance_id is not None and (not isinstance(self.group_instance_id, str) or group_id is None):
            raise ValueError("group_instance_id must be a str, and needs a group_id")
        strategies = self.assignors
        unknown_strategies = [a for a in strategies if a not in ASSIGNORS]
        if not strategies or unknown_strategies:
            raise ValueError(f"partition_assignment_strategy must name assignors among {sorted(ASSIGNORS)}, "
                             f"got {strategies!r}")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be lower than "
                             f"session_timeout_ms ({self.session_timeout_ms}), as in Kafka")
        if self.auto_offset_reset not in RESET_SPECS:
            raise ValueError(f"auto_offset_reset must be 'earliest', 'latest' or 'none', "
                             f"got {self.auto_offset_reset!r}")
        if self.isolation_level not in ("read_uncommitted", "read_committed"):
            raise ValueError(f"isolation_level must be 'read_uncommitted' or 'read_committed', "
                             f"got {self.isolation_level!r}")
        for name, minimum in _MINIMUMS:
            check_int(name, getattr(self, name), minimum)
        if self.consumer_timeout_ms is not None:
            check_int("consumer_timeout_ms", self.consumer_timeout_ms, 0)
        for name, fn in (("key_deserializer", self.key_deserializer), ("value_deserializer", self.value_deserializer)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
        object.__setattr__(self, "partition_assignment_strategy", strategies)  # a list from now on

    @property
    def assignors(self) -> list[str]:
        """``partition_assignment_strategy`` as a list of assignor names."""
        strategy = self.partition_assignment_strategy
        return [strategy] if isinstance(strategy, str) else list(strategy)

    @property
    def read_committed(self) -> bool:
        return self.isolation_level == "read_committed"

    @property
    def api_timeout_s(self) -> float:
        return self.default_api_timeout_ms / 1000

    @property
    def consumer_timeout_s(self) -> float | None:
        return None if self.consumer_timeout_ms is None else self.consumer_timeout_ms / 1000
