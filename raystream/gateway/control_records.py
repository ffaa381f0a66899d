"""Kafka control batches the gateway writes into fetch responses: one transaction marker record.

A Kafka consumer moves its position to the offset after the last batch a fetch returns. raystream's
leaders leave transaction markers (and, for read_committed, aborted transactions' batches) out of what
they return, and say where the next fetch starts (``FetchResult.next_offset``). When that is past the last
record returned, the gateway ends the answer with a control batch at ``next_offset - 1``, so the client
steps over the skipped offsets as it steps over Kafka's own markers, instead of fetching the same offset
forever. Clients never hand control records to the application.

Pure functions; thread-safe.
"""

from __future__ import annotations

import struct

import crc32c

from raystream.gateway.records import _POST_CRC, _PRE_CRC, CONTROL, MAGIC, TRANSACTIONAL

#: Kafka's control record types (the key's second int16).
ABORT, COMMIT = 0, 1
_KEY = struct.Struct(">hh")  # version 0, type
_VALUE = struct.Struct(">hi")  # version 0, coordinator epoch


def encode_control_batch(offset: int, leader_epoch: int = -1, marker: int = COMMIT, producer_id: int = -1,
                         producer_epoch: int = -1, timestamp: int = -1) -> bytes:
    """One control batch holding one marker record at ``offset`` (a transactional batch, as Kafka's)."""
    key, value = _KEY.pack(0, marker), _VALUE.pack(0, 0)
    # attributes 0, timestamp delta 0, offset delta 0, key length, key, value length, value, 0 headers:
    # every varint here is one byte (zigzag of a small number).
    record = bytes([0, 0, 0, len(key) * 2]) + key + bytes([len(value) * 2]) + value + bytes([0])
    body = bytes([len(record) * 2]) + record
    post = _POST_CRC.pack(CONTROL | TRANSACTIONAL, 0, timestamp, timestamp, producer_id, producer_epoch, -1, 1)
    crc = crc32c.crc32c(body, crc32c.crc32c(post))
    return b"".join((_PRE_CRC.pack(offset, len(post) + len(body) + 9, leader_epoch, MAGIC, crc), post, body))
