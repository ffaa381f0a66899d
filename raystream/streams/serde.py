"""Serdes of stream processing: how keys and values are turned into bytes on the way to a topic or a state
store, and back (Kafka Streams' ``Serde``, Quix Streams' serializers).

A serde is named (``"bytes"``, ``"str"``, ``"json"``, ``"msgpack"``) or a :class:`Serde` built from two
functions. Encoding whole columns goes through :meth:`Serde.encode_many` so the byte-preserving serdes skip
Python objects entirely. Pure; thread-safe.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.compute as pc


def _to_bytes(obj: Any) -> bytes | None:
    if obj is None or type(obj) is bytes:
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, str):
        return obj.encode()
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return str(obj).encode()  # an Arrow-native topic's numeric key column: its decimal text
    raise TypeError(f"the 'bytes' serde takes bytes (or str), got {type(obj).__name__}; pass a serde such as "
                    f"'json' for other values")


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=_json_default).encode()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


@dataclasses.dataclass(frozen=True)
class Serde:
    """``serialize(obj) -> bytes`` and ``deserialize(bytes) -> obj``; ``None`` always maps to ``None`` (a
    tombstone). ``name`` identifies the built-in ones."""

    serialize: Callable[[Any], bytes]
    deserialize: Callable[[bytes], Any]
    name: str = "custom"

    def dumps(self, obj: Any) -> bytes | None:
        return None if obj is None else self.serialize(obj)

    def loads(self, data: bytes | None) -> Any:
        return None if data is None else self.deserialize(data)

    def encode_many(self, objs: Sequence[Any] | pa.Array | pa.ChunkedArray) -> pa.Array:
        """A binary Arrow array of the encoded objects (binary and string Arrow columns pass through the
        'bytes' and 'str' serdes without a Python object per row)."""
        if isinstance(objs, (pa.Array, pa.ChunkedArray)) and self.name in ("bytes", "str"):
            if pa.types.is_binary(objs.type) or pa.types.is_string(objs.type) or pa.types.is_large_binary(
                    objs.type) or pa.types.is_large_string(objs.type):
                out = pc.cast(objs, pa.binary())
                return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
        if isinstance(objs, (pa.Array, pa.ChunkedArray)):
            objs = objs.to_pylist()
        return pa.array([self.dumps(o) for o in objs], pa.binary())

    def decode_many(self, data: pa.Array | pa.ChunkedArray) -> list[Any]:
        if self.name == "bytes":
            return data.to_pylist()
        if self.name == "str":
            return pc.cast(data, pa.string()).to_pylist()
        return [self.loads(d) for d in data.to_pylist()]


BYTES = Serde(_to_bytes, lambda b: b, "bytes")
STR = Serde(lambda s: s.encode() if isinstance(s, str) else _to_bytes(s), lambda b: b.decode(), "str")
JSON = Serde(_json_dumps, json.loads, "json")
MSGPACK = Serde(lambda o: pack(o), lambda b: unpack(b), "msgpack")
_NAMED = {s.name: s for s in (BYTES, STR, JSON, MSGPACK)}


def resolve(serde: str | Serde | None, default: Serde = BYTES) -> Serde:
    """A serde by name, or the given one; None: ``default``."""
    if serde is None:
        return default
    if isinstance(serde, Serde):
        return serde
    if isinstance(serde, str) and serde in _NAMED:
        return _NAMED[serde]
    raise ValueError(f"unknown serde {serde!r}: use one of {sorted(_NAMED)} or raystream.streams.Serde(...)")


def pack(value: Any) -> bytes:
    """A state store's encoding of aggregates and buffered values (msgpack)."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)
