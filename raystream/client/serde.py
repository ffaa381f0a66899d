"""Turning user keys, values and headers into bytes, and estimating a record's size in an Arrow batch.

Serializers and deserializers are one-argument callables (as kafka-python's): ``value_serializer(obj) ->
bytes``. Without one, ``bytes``-like objects pass through, ``str`` is UTF-8 encoded and ``None`` stays
``None`` (a null value is a tombstone). Pure functions; thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Serializer = Callable[[Any], Any]

#: Bytes a record adds to a RECORD_SCHEMA batch besides its key, value and header bytes: three int32
#: offsets (key, value, headers list), the int64 timestamp and validity bits, rounded up generously so
#: that an estimated batch is never smaller than its Arrow ``nbytes``.
RECORD_OVERHEAD_BYTES = 32
#: Per header: the struct's two int32 offsets plus validity, rounded up.
HEADER_OVERHEAD_BYTES = 16
#: Per column of an Arrow-native row (offsets, validity, fixed-width values up to 8 bytes).
ROW_COLUMN_OVERHEAD_BYTES = 16


def to_bytes(data: Any, what: str) -> bytes | None:
    """``data`` as bytes: bytes-like pass through, ``str`` is UTF-8, ``None`` stays ``None``."""
    if data is None or type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, str or None (or pass {what}_serializer=), got {type(data).__name__}")


def serialize(serializer: Serializer | None, data: Any, what: str) -> bytes | None:
    if serializer is not None and data is not None:
        data = serializer(data)
    return to_bytes(data, what)


def normalize_headers(headers: Any) -> list[tuple[str, bytes | None]] | None:
    """Headers as a list of ``(str, bytes | None)`` pairs (keys may repeat, as in Kafka). Accepts a mapping
    or an iterable of pairs; ``str`` values are UTF-8 encoded. ``None`` or empty → ``None``."""
    if headers is None:
        return None
    if isinstance(headers, Mapping):
        items = list(headers.items())
    elif isinstance(headers, (str, bytes)):
        raise TypeError("headers must be a mapping or a list of (key, value) pairs")
    else:
        try:
            items = [tuple(pair) for pair in headers]
        except TypeError:
            raise TypeError("headers must be a mapping or a list of (key, value) pairs") from None
    out = []
    for pair in items:
        if len(pair) != 2:
            raise TypeError(f"each header must be a (key, value) pair, got {pair!r}")
        key, value = pair
        if not isinstance(key, str):
            raise TypeError(f"header keys must be str, got {type(key).__name__}")
        out.append((key, to_bytes(value, "header value")))
    return out or None


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]] | None) -> int:
    """Upper estimate of the bytes one record adds to a RECORD_SCHEMA Arrow batch."""
    size = RECORD_OVERHEAD_BYTES + (len(key) if key else 0) + (len(value) if value else 0)
    if headers:
        for hkey, hvalue in headers:
            size += HEADER_OVERHEAD_BYTES + len(hkey.encode("utf-8")) + (len(hvalue) if hvalue else 0)
    return size


def row_size(row: Mapping[str, Any]) -> int:
    """Rough estimate of the bytes one Arrow-native row (a mapping of column → Python value) adds."""
    size = 8  # the timestamp
    for value in row.values():
        size += ROW_COLUMN_OVERHEAD_BYTES
        if isinstance(value, str):
            size += len(value.encode("utf-8"))
        elif isinstance(value, (bytes, bytearray)):
            size += len(value)
        elif isinstance(value, (list, tuple, dict)):
            size += 16 * len(value)
    return size
