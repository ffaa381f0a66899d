"""Build one API version's kio message from plain values.

Kafka's messages gain fields version by version; kio has one class per version. A handler describes its
answer once, as nested mappings holding the fields of the newest version it serves, and :func:`build`
keeps what the requested version has: fields the version lacks are dropped, fields the mapping leaves out
take the version's defaults, and nested entities (tuples of mappings) are built recursively with that
version's nested classes. Times are given as raystream keeps them, in milliseconds. Pure; thread-safe (the type-hint cache is filled idempotently).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of the kio entity class ``cls`` from ``values`` (see the module docstring)."""
    kwargs = {}
    nested = _nested_types(cls)
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        inner = nested.get(field.name)
        if inner is not None and value is not None:
            entity, many = inner
            if many:
                value = tuple(build(entity, v) if isinstance(v, Mapping) else v for v in value)
            elif isinstance(value, Mapping):
                value = build(entity, value)
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, int):
            value = _from_millis(field.metadata.get("kafka_type"), value)
        kwargs[field.name] = value
    return cls(**kwargs)


@functools.cache
def _nested_types(cls: type) -> dict[str, tuple[type, bool]]:
    """Field name -> (nested entity class, is a tuple of them) for the fields of ``cls`` holding entities."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        for candidate in _unwrap_optional(hint):
            origin = typing.get_origin(candidate)
            if origin is tuple:
                args = [a for a in typing.get_args(candidate) if a is not Ellipsis]
                if args and dataclasses.is_dataclass(args[0]):
                    out[name] = (args[0], True)
            elif dataclasses.is_dataclass(candidate):
                out[name] = (candidate, False)
    return out


def _from_millis(kafka_type: str | None, value: int) -> Any:
    """kio's Python type for a time field given in milliseconds (as raystream keeps times): a timedelta for
    durations, an aware datetime for timestamps, None for Kafka's -1 "no timestamp"."""
    if kafka_type in ("timedelta_i32", "timedelta_i64"):
        return datetime.timedelta(milliseconds=value)
    if kafka_type == "datetime_i64":
        return None if value < 0 else datetime.datetime.fromtimestamp(value / 1000, datetime.timezone.utc)
    return value


def _unwrap_optional(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(hint) if a is not type(None))
    return (hint,)
