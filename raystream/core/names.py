"""Topic and cluster names, validated by Kafka's rules. Names become directory names, so this is also the
path-safety check: only ``[a-zA-Z0-9._-]``, at most 249 characters, never ``.`` or ``..``."""

from __future__ import annotations

import re

from raystream.errors import InvalidTopicError

MAX_NAME_LENGTH = 249
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")
INTERNAL_PREFIX = "__"


def validate_topic_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidTopicError(f"topic name must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidTopicError("topic name is empty")
    if name in (".", ".."):
        raise InvalidTopicError(f"topic name cannot be {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidTopicError(f"topic name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not _LEGAL.fullmatch(name):
        bad = sorted(set(ch for ch in name if not _LEGAL.fullmatch(ch)))
        raise InvalidTopicError(f"topic name {name!r} has illegal characters {bad}: "
                                "only ASCII letters, digits, '.', '_' and '-' are allowed")
    return name


def validate_cluster_name(name: object) -> str:
    try:
        return validate_topic_name(name)
    except InvalidTopicError as exc:
        raise InvalidTopicError(str(exc).replace("topic name", "cluster name")) from None


def partition_dir_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"
