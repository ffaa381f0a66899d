"""Per-batch column statistics (min, max, null count) and skipping batches a row filter cannot match.

Every stored batch carries, in its IPC message's ``custom_metadata`` (key ``raystream.stats``, msgpack),
``{column: [min, max, null_count]}`` for the columns whose values have a total order Arrow compares
natively: integers, floats (only when the batch has no NaN: Arrow's ``min_max`` skips NaN, and a filter
such as ``~(x < 3)`` matches a NaN row), booleans, temporals (stored as their integer value) and strings
(``min``/``max`` longer than :data:`MAX_STRING_BYTES` bytes are left out — ``None``, unbounded — so a
header never grows with the data). ``_offset`` needs no statistics: the batch header bounds it.

Whether a batch may hold rows matching a ``pyarrow.compute`` filter is decided by pyarrow itself: each
batch's statistics become a *guarantee* expression (``(x >= min) & (x <= max)``, ``| is_null(x)`` when the
batch has nulls, ``is_null(x)`` for a column added to the topic after the batch was written) and pyarrow's
dataset layer simplifies the filter against it — the same machinery that skips Parquet row groups — so
only batches whose guarantee contradicts the filter are skipped. Anything the simplifier cannot decide
keeps the batch: skipping is an optimisation, never a change of result.

Pure functions; thread-safe.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

import msgpack
import pyarrow as pa
import pyarrow.compute as pc

from raystream.record import OFFSET_COLUMN

log = logging.getLogger(__name__)

STATS_KEY = b"raystream.stats"
#: Longer string minima/maxima are not kept (the bound is then open on that side).
MAX_STRING_BYTES = 64
#: Batches whose guarantees are simplified against a filter in one pyarrow call (bounds wasted work when
#: a read stops early at ``max_bytes``).
PRUNE_CHUNK_BATCHES = 128


def _dataset_module():
    """``pyarrow.dataset``, imported on first use: only processes that filter pay its import."""
    import pyarrow.dataset

    return pyarrow.dataset


@functools.cache
def _local_filesystem():
    from pyarrow import fs

    return fs.LocalFileSystem()


def _stats_kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "plain"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_timestamp(arrow_type) or pa.types.is_duration(arrow_type) or pa.types.is_date64(arrow_type):
        return "int64"
    if pa.types.is_date32(arrow_type) or pa.types.is_time32(arrow_type):
        return "int32"
    if pa.types.is_time64(arrow_type):
        return "int64"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return None


def compute(data: pa.RecordBatch) -> bytes:
    """The statistics of one batch as stored (msgpack). Costs one vectorised pass per eligible column."""
    out = {}
    for field, column in zip(data.schema, data.columns, strict=True):
        kind = _stats_kind(field.type)
        if kind is None or field.name == OFFSET_COLUMN:
            continue
        nulls = column.null_count
        if nulls == len(column):
            out[field.name] = [None, None, nulls]
            continue
        if kind == "float" and nulls == 0 and not pa.types.is_float16(field.type):
            # numpy's min/max propagate NaN (so a NaN is found for free) and are ~15x faster than
            # Arrow's NaN-skipping min_max on floats.
            values = column.to_numpy(zero_copy_only=True)
            low, high = values.min(), values.max()
            if math.isnan(low) or math.isnan(high):
                continue
            out[field.name] = [float(low), float(high), 0]
            continue
        if kind == "float" and pc.any(pc.is_nan(column)).as_py():
            continue
        if kind in ("int64", "int32"):
            column = column.view(pa.int64() if kind == "int64" else pa.int32())
        low, high = (s.as_py() for s in pc.min_max(column).values())
        if kind == "string":
            low = low if len(low.encode()) <= MAX_STRING_BYTES else None
            high = high if len(high.encode()) <= MAX_STRING_BYTES else None
        out[field.name] = [low, high, nulls]
    return msgpack.packb(out)


def guarantee(stats_bytes: bytes, header, batch_schema: pa.Schema, target_schema: pa.Schema) -> pc.Expression:
    """What every row of the batch (``header``: its ``BatchHeader``) satisfies, as an expression over
    ``target_schema`` (the stored schema reads return; a batch of an older compatible schema is read in
    it). Unknown statistics bound nothing."""
    parts = [(pc.field(OFFSET_COLUMN) >= header.base_offset) & (pc.field(OFFSET_COLUMN) <= header.last_offset)]
    stats = msgpack.unpackb(stats_bytes) if stats_bytes else {}
    for field in target_schema:
        name = field.name
        if name == OFFSET_COLUMN:
            continue
        if batch_schema.get_field_index(name) < 0:  # added after this batch: read back as nulls
            parts.append(pc.field(name).is_null())
            continue
        entry = stats.get(name)
        if entry is None:
            continue
        low, high, nulls = entry
        if nulls >= header.record_count:
            parts.append(pc.field(name).is_null())
            continue
        try:
            bounds = [pc.field(name) >= pa.scalar(low, field.type)] if low is not None else []
            if high is not None:
                bounds.append(pc.field(name) <= pa.scalar(high, field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            continue  # statistics of a type this field no longer has a literal for: no bound
        if not bounds:
            continue
        bound = bounds[0] if len(bounds) == 1 else bounds[0] & bounds[1]
        parts.append(bound | pc.field(name).is_null() if nulls else bound)
    result = parts[0]
    for part in parts[1:]:
        result = result & part
    return result


def may_match(row_filter: pc.Expression, guarantees: Sequence[pc.Expression], schema: pa.Schema) -> list[bool]:
    """For each guarantee: could a batch satisfying it hold a row the filter keeps? Decided by pyarrow's
    expression simplification (a dataset of placeholder fragments, one per batch; nothing is read).
    When pyarrow cannot bind the filter (e.g. an unknown column) every batch is kept, so the filter itself
    raises its clear error when applied."""
    if not guarantees:
        return []
    ds = _dataset_module()
    try:
        dataset = ds.FileSystemDataset.from_paths([f"/{i}" for i in range(len(guarantees))], schema=schema,
                                                  format=ds.IpcFileFormat(), filesystem=_local_filesystem(),
                                                  partitions=list(guarantees))
        kept = {int(fragment.path[1:]) for fragment in dataset.get_fragments(filter=row_filter)}
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as exc:
        log.debug("batch statistics not used for filter %s: %s", row_filter, exc)
        return [True] * len(guarantees)
    return [i in kept for i in range(len(guarantees))]
