"""A durable key → value map kept as a compacted segment log (how Kafka keeps ``__consumer_offsets``).

Every ``put``/``delete`` of one call is appended as one record batch (key, value; a deleted key is a
tombstone: null value) and flushed, so a change is on disk when the call returns; ``open`` replays the
log into memory. The log is compacted (``cleanup.policy=compact``), so its size follows the number of live
keys, not the number of changes: ``compact()`` runs the log cleaner over the sealed segments. Keys and
values are msgpack-encoded Python values (a key must be hashable once decoded: tuples, str, int).

Time is injected: ``clock()`` returns the owner's "now" in ms (the records' timestamps, the flush interval
and the tombstone horizon of compaction), so storage reads no clock itself.

Not thread-safe: one owner (the controller actor's event loop) calls it; ``compact`` may run in a worker
thread while the owner keeps writing (the cleaner is crash-safe and concurrent with appends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa

from raystream.config import TopicConfig
from raystream.record import OFFSET_COLUMN, RECORD_SCHEMA
from raystream.storage.cleaner import compact
from raystream.storage.log import Log

_HEADERS_TYPE = RECORD_SCHEMA.field("headers").type
_READ_BYTES = 8 << 20

#: Sealed segments that trigger a compaction on the next update (the active one is not counted).
_SEALED_SEGMENTS_BEFORE_COMPACTION = 2


def _encode_key(key: Any) -> bytes:
    return msgpack.packb(list(key) if isinstance(key, tuple) else key)


def _decode_key(data: bytes) -> Any:
    key = msgpack.unpackb(data)
    return tuple(key) if isinstance(key, list) else key


class CompactedMap:
    """See the module docstring. ``segment_bytes`` bounds the active segment (only sealed ones compact)."""

    def __init__(self, directory: str | Path, segment_bytes: int = 16 << 20,
                 delete_retention_ms: int = 24 * 3600 * 1000, *, clock: Callable[[], int]) -> None:
        config = TopicConfig.from_dict({"cleanup.policy": "compact", "segment.bytes": segment_bytes,
                                        "delete.retention.ms": delete_retention_ms})
        self._clock = clock
        self.log = Log(directory, config, now=clock())
        self._items: dict[Any, Any] = {}
        self._replay()

    def _replay(self) -> None:
        offset = self.log.log_start_offset
        while offset < self.log.log_end_offset:
            batches = self.log.read(offset, _READ_BYTES, columns=[OFFSET_COLUMN, "key", "value"])
            if not batches:
                break
            for batch in batches:
                keys, values = batch.column("key").to_pylist(), batch.column("value").to_pylist()
                for key, value in zip(keys, values, strict=True):
                    if value is None:
                        self._items.pop(_decode_key(key), None)
                    else:
                        self._items[_decode_key(key)] = msgpack.unpackb(value)
                offset = batch.column(OFFSET_COLUMN)[-1].as_py() + 1

    # -- reads -----------------------------------------------------------------------------------------------
    def get(self, key: Any, default: Any = None) -> Any:
        return self._items.get(key, default)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(list(self._items.items()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    # -- writes ----------------------------------------------------------------------------------------------
    def update(self, puts: dict[Any, Any] | None = None, deletes: Iterable[Any] = ()) -> None:
        """Apply ``puts`` and ``deletes`` as one durable batch (all or nothing on disk)."""
        changes = [(_encode_key(k), msgpack.packb(v)) for k, v in (puts or {}).items()]
        changes += [(_encode_key(k), None) for k in deletes]
        if not changes:
            return
        keys = pa.array([k for k, _ in changes], pa.binary())
        values = pa.array([v for _, v in changes], pa.binary())
        batch = pa.RecordBatch.from_arrays([keys, values, pa.nulls(len(changes), _HEADERS_TYPE)],
                                           schema=RECORD_SCHEMA)
        now = self._clock()
        self.log.append(batch, now=now)
        self.log.flush(now=now)
        for key, value in (puts or {}).items():
            self._items[key] = value
        for key in deletes:
            self._items.pop(key, None)
        if len(self.log.segments) > _SEALED_SEGMENTS_BEFORE_COMPACTION:
            # Bounded growth: clean once a few segments are sealed (a map written forever stays about
            # the size of its live keys, and a restart replays only that).
            self.compact()

    def compact(self, now_ms: int | None = None) -> None:
        """Roll the active segment if it holds anything, then clean every sealed segment."""
        compact(self.log, now_ms if now_ms is not None else self._clock())

    def close(self) -> None:
        self.log.close()
