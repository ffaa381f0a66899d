"""The controller's metadata log: an append-only file of msgpack records, fsynced one by one.

Kafka's KRaft controller keeps its metadata records in the ``__cluster_metadata`` log; ours is one file,
``<data_dir>/<cluster>/__controller/metadata.log``. What a record means is not this module's business (the
record types and their constructors are in :mod:`raystream.core.metadata`); this module only makes them
durable in order and reads them back:

* :meth:`MetadataLog.replay` hands every complete record to a callback, then truncates a torn tail (a record
  half-written when the process died), so the next append continues after the last good record;
* :meth:`MetadataLog.append` writes, flushes and fsyncs one record before returning: the write-ahead rule
  is the caller's (append, then apply).

No clock reads: a record that carries a time carries it as a field its caller filled in.

Not thread-safe: one owner (the controller's metadata store, on the actor's event loop) calls it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)
METADATA_DIR = "__controller"
METADATA_LOG = "metadata.log"


class MetadataLog:
    """One metadata log file under ``root`` (``<data_dir>/<cluster>``); see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / METADATA_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / METADATA_LOG
        self._file: Any = None

    def replay(self, apply: Callable[[dict[str, Any]], None]) -> None:
        """Apply every complete record in order; cut a torn tail. Call once, before the first append."""
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False)
                try:
                    for record in unpacker:
                        apply(record)
                        good = unpacker.tell()
                except (msgpack.OutOfData, ValueError, KeyError) as exc:
                    log.warning("metadata log has a torn tail after byte %d: %s", good, exc)
            if good < self.path.stat().st_size:
                os.truncate(self.path, good)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held until close()

    def append(self, record: dict[str, Any]) -> None:
        """Make ``record`` durable (written, flushed, fsynced) before returning."""
        if self._file is None:
            raise AssertionError("metadata log appended to before replay()")
        self._file.write(msgpack.packb(record))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
