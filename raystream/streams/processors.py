"""The stateless operators of a stream task, and the conversions at its edges (topic records → :class:`Batch`
at a source, :class:`Batch` → records at a sink).

Each processor is built for one node of one task and called by that task's thread only: ``process(batch,
parent)`` returns the batch its children receive (or None), ``flush()`` what it emits at a commit and
``punctuate()`` what it emits as stream time advances (both None for stateless ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import RaystreamError
from raystream.streams.batch import Batch
from raystream.streams.serde import BYTES, Serde
from raystream.streams.topology import Node

#: Columns ``poll_arrow_partitions`` adds in front of a topic's own.
SYSTEM_COLUMNS = ("topic", "partition", "offset", "timestamp")


class StreamsError(RaystreamError):
    """A user function or operator failed on a record batch (the message names the operator)."""


def source_batch(table: pa.Table, node: Node, key_column: str | None) -> Batch:
    """The records a source node reads: a schema-less topic's ``key``/``value`` columns (values kept
    encoded with the source's serde), or an Arrow-native topic's rows (keys: its key column)."""
    key_serde: Serde = node.params.get("key_serde") or BYTES
    user = table.drop_columns([c for c in SYSTEM_COLUMNS if c in table.column_names])
    ts_column = node.params.get("timestamp_column")
    if ts_column:
        timestamps = _event_times(user.column(ts_column))
    else:
        timestamps = table.column("timestamp").to_numpy()
    if "value" in user.column_names and "headers" in user.column_names and key_column is None:
        return Batch(user.column("key"), user.select(["value"]), timestamps, key_serde,
                     node.params.get("value_serde") or BYTES)
    keys = user.column(key_column) if key_column else pa.nulls(table.num_rows, pa.binary())
    return Batch(keys, user, timestamps, key_serde)


def _event_times(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = pc.cast(pc.cast(column, pa.timestamp("ms")), pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False), np.int64)


class Processor:
    def __init__(self, node: Node, ctx: Any) -> None:
        self.node, self.ctx, self.params = node, ctx, node.params

    def process(self, batch: Batch, parent: Node) -> Batch | None:
        return batch

    def flush(self) -> Batch | None:
        return None

    def punctuate(self) -> Batch | None:
        return None

    def call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            raise StreamsError(f"{self.node.name}: {type(exc).__name__}: {exc}") from exc


def _args(batch: Batch, with_key: bool) -> list[tuple]:
    values = batch.py_values()
    if with_key:
        return list(zip(batch.py_keys(), values, strict=True))
    return [(v,) for v in values]


class Filter(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch:
        fn = self.params["fn"]
        keep = np.fromiter((bool(self.call(fn, *a)) for a in _args(batch, self.params["with_key"])), bool,
                           len(batch))
        return batch.take(keep)


class FilterExpression(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch:
        table = batch.arrow_values().append_column("__row", pa.array(np.arange(len(batch), dtype=np.int64)))
        try:
            rows = table.filter(self.params["expression"]).column("__row").to_numpy()
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
            raise StreamsError(f"{self.node.name}: the filter expression does not apply to columns "
                               f"{table.column_names[:-1]}: {exc}") from exc
        return batch.take(rows)


class Map(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch:
        fn, with_key = self.params["fn"], self.params["with_key"]
        out = [self.call(fn, *a) for a in _args(batch, with_key)]
        if not with_key:
            return batch.with_python(values=out)
        pairs = [_pair(self.node, p) for p in out]
        return batch.with_python(keys=[k for k, _ in pairs], values=[v for _, v in pairs])


def _pair(node: Node, pair: Any) -> tuple:
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise StreamsError(f"{node.name}: with_key=True functions return (key, value) pairs, got {pair!r}")
    return pair


class FlatMap(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch:
        fn, with_key = self.params["fn"], self.params["with_key"]
        keys, values, times = [], [], []
        old_keys = batch.py_keys()
        for i, a in enumerate(_args(batch, with_key)):
            for item in self.call(fn, *a) or ():
                key, value = _pair(self.node, item) if with_key else (old_keys[i], item)
                keys.append(key)
                values.append(value)
                times.append(batch.timestamps[i])
        return batch.with_python(keys=keys, values=values, timestamps=np.asarray(times, np.int64))


class SelectKey(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch:
        fn = self.params["fn"]
        keys = [self.call(fn, v) for v in batch.py_values()]
        return Batch(keys, batch.values, batch.timestamps, self.params["key_serde"], batch.value_serde)


class SelectKeyColumn(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch:
        table = batch.arrow_values()
        column = self.params["column"]
        if column not in table.column_names:
            raise StreamsError(f"{self.node.name}: group_by column {column!r} is not among {table.column_names}")
        return Batch(table.column(column), batch.values, batch.timestamps, self.params["key_serde"],
                     batch.value_serde)


class MapBatches(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch:
        table = batch.arrow_values()
        keys = batch.keys if not isinstance(batch.keys, list) else pa.array(batch.keys)
        table = table.append_column("key", keys).append_column("timestamp", pa.array(batch.timestamps))
        out = self.call(self.params["fn"], table)
        if isinstance(out, pa.RecordBatch):
            out = pa.Table.from_batches([out])
        if not isinstance(out, pa.Table):
            raise StreamsError(f"{self.node.name}: map_batches functions return a pyarrow.Table, got "
                               f"{type(out).__name__}")
        same = out.num_rows == len(batch)
        if not same and ("key" not in out.column_names or "timestamp" not in out.column_names):
            raise StreamsError(f"{self.node.name}: a map_batches result with another row count "
                               f"({out.num_rows}, not {len(batch)}) must carry 'key' and 'timestamp' columns")
        new_keys = out.column("key") if "key" in out.column_names else batch.keys
        times = (_event_times(out.column("timestamp")) if "timestamp" in out.column_names else batch.timestamps)
        values = out.drop_columns([c for c in ("key", "timestamp") if c in out.column_names])
        return Batch(new_keys, values, times, batch.key_serde, None)


class Peek(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch:
        for a in _args(batch, self.params["with_key"]):
            self.call(self.params["fn"], *a)
        return batch


class Branch(Processor):
    """One branch of ``split``: the records whose first true predicate is this branch's (index -1: none)."""

    def process(self, batch: Batch, parent: Node) -> Batch:
        cache = self.ctx.branch_choices
        key = (id(self.params["predicates"]), id(batch))
        if key not in cache:
            cache.clear()  # one batch at a time: older entries are stale
            choice = np.full(len(batch), -1, np.int64)
            for row, value in enumerate(batch.py_values()):
                for i, predicate in enumerate(self.params["predicates"]):
                    if self.call(predicate, value):
                        choice[row] = i
                        break
            cache[key] = (batch, choice)  # the batch is kept so its id is not reused meanwhile
        return batch.take(cache[key][1] == self.params["index"])


class Sink(Processor):
    """``to(topic)`` and the write side of a repartition: records go to the task's producer."""

    def process(self, batch: Batch, parent: Node) -> None:
        if len(batch):
            self.ctx.send(self.params["topic"], batch, self.params["key_serde"], self.params.get("value_serde"))
        return None


STATELESS = {"source": Processor, "merge": Processor, "to_stream": Processor, "filter": Filter,
             "filter_expr": FilterExpression, "map": Map, "flat_map": FlatMap, "select_key": SelectKey,
             "select_key_column": SelectKeyColumn, "map_batches": MapBatches, "peek": Peek, "branch": Branch,
             "sink": Sink, "repartition_sink": Sink}
