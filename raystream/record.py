"""The stored-batch format that clients and the log engine share (Kafka's ``org.apache.kafka.common.record``).

What a producer builds and a consumer reads is what the log stores, so both sides need the same
vocabulary: the system column names the log adds to every stored batch, the attribute bits of a batch
header, the Kafka-style record schema, and the sequence arithmetic of idempotent producers. They live here,
in a leaf module (stdlib, pyarrow and :mod:`raystream.errors` only), so the client imports no storage
engine (the import-linter contract "clients do not import the log engine"). How a batch is encoded on disk
(header packing, checksums, framing) stays in :mod:`raystream.storage.batch`.

Two record shapes:

* Kafka-style records: ``key`` (binary, nullable), ``value`` (binary, nullable: a null value is a
  tombstone for compaction) and ``headers`` (list of key/value structs; keys may repeat, as in Kafka).
* Arrow-native rows: any ``pyarrow.Schema`` of the topic, optionally with a key column.

Either way the producer may add an int64 ``_timestamp`` column (CreateTime, ms); the log adds
``_offset`` (and ``_timestamp`` when absent).

Constants and pure functions; thread-safe.
"""

from __future__ import annotations

import pyarrow as pa

from raystream.errors import SchemaMismatchError

# -- system columns of a stored batch -----------------------------------------------------------------------
OFFSET_COLUMN = "_offset"
TIMESTAMP_COLUMN = "_timestamp"
SYSTEM_FIELDS = (pa.field(OFFSET_COLUMN, pa.int64(), nullable=False),
                 pa.field(TIMESTAMP_COLUMN, pa.int64(), nullable=False))
SYSTEM_COLUMNS = (OFFSET_COLUMN, TIMESTAMP_COLUMN)

# -- batch attribute bits, as in Kafka's RecordBatch ---------------------------------------------------------
ATTR_LOG_APPEND_TIME = 1 << 3
ATTR_TRANSACTIONAL = 1 << 4
ATTR_CONTROL = 1 << 5
#: raystream's own bit: a control batch (a transaction marker) that commits; without it, it aborts. (Kafka
#: keeps the marker type in the control record's key; a raystream marker batch holds no rows.)
ATTR_COMMIT_MARKER = 1 << 8

# -- producer fields of a batch header ----------------------------------------------------------------------
NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
#: Kafka's sequence numbers are Int32 and wrap from this value to 0.
MAX_SEQUENCE = 2**31 - 1
#: Producer epochs are Int16.
MAX_PRODUCER_EPOCH = 2**15 - 1


def increment_sequence(sequence: int, increment: int) -> int:
    """``sequence + increment`` with Kafka's Int32 wrap-around (``MAX_SEQUENCE + 1`` is 0); Kafka keeps
    this rule in ``DefaultRecordBatch.incrementSequence``."""
    if sequence > MAX_SEQUENCE - increment:
        return increment - (MAX_SEQUENCE - sequence) - 1
    return sequence + increment


# -- record schemas -----------------------------------------------------------------------------------------
HEADER_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
RECORD_SCHEMA = pa.schema([("key", pa.binary()), ("value", pa.binary()), ("headers", HEADER_TYPE)])


def check_user_schema(schema: pa.Schema) -> None:
    """A topic schema may not use the system column names."""
    if not isinstance(schema, pa.Schema):
        raise TypeError(f"schema must be a pyarrow.Schema, got {type(schema).__name__}")
    reserved = [f.name for f in schema if f.name in SYSTEM_COLUMNS]
    if reserved:
        raise SchemaMismatchError(f"schema uses reserved column names {reserved}", fields=reserved)


def stored_schema(user_schema: pa.Schema) -> pa.Schema:
    """The stored schema for a user schema: system columns first."""
    return pa.schema(list(SYSTEM_FIELDS) + list(user_schema), metadata=user_schema.metadata)


def user_schema_of(schema: pa.Schema) -> pa.Schema:
    """The user schema of a stored schema (the system columns removed)."""
    return pa.schema([f for f in schema if f.name not in SYSTEM_COLUMNS], metadata=schema.metadata)
