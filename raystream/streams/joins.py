"""Tables read from topics, stream-table joins and windowed stream-stream joins.

* :class:`TableSource` — ``app.table(topic)``: each record upserts its key in a key-value store (a null
  value deletes it). The topic itself is the store's changelog (Kafka Streams' source-topic changelog), so
  a task restores the table by reading the topic up to its committed offset.
* :class:`TableJoin` — a stream record meets the table's current value for its key (one batched store
  lookup per batch).
* :class:`StreamJoin` — records of two streams with the same key and event times within a
  :class:`~raystream.streams.dsl.JoinWindows` meet; each side is buffered in a window store (retained for
  the window plus grace) and changelogged like any store. Left joins emit an unmatched record at once with
  ``None`` for the other side (Kafka Streams before 3.1; later versions wait for the window to close).

Called by one task thread only; values are stored msgpack-encoded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raystream.streams.batch import Batch
from raystream.streams.processors import Processor
from raystream.streams.serde import pack as _pack
from raystream.streams.serde import unpack as _unpack
from raystream.streams.topology import Node


class TableSource(Processor):
    def __init__(self, node: Node, ctx: Any) -> None:
        super().__init__(node, ctx)
        self.store = ctx.store(self.params["store"])

    def process(self, batch: Batch, parent: Node) -> Batch:
        self.apply(batch)
        return batch

    def apply(self, batch: Batch) -> None:
        """Upsert the batch's records (also how the table restores from its topic)."""
        if len(batch):
            keys = batch.encoded_keys().to_pylist()
            self.store.put_many(list(zip(keys, [None if v is None else _pack(v) for v in batch.py_values()],
                                         strict=True)))

    def get_many(self, keys: list[bytes]) -> dict[bytes, Any]:
        return {k: _unpack(v) for k, v in self.store.get_many(keys).items()}

    def query(self, key: bytes) -> Any:
        return self.get_many([key]).get(key)


class TableJoin(Processor):
    def process(self, batch: Batch, parent: Node) -> Batch | None:
        if parent is not self.node.parents[0] or not len(batch):
            return None  # table updates only change the table (a stream-table join is driven by the stream)
        keys = batch.encoded_keys().to_pylist()
        table = self.ctx.lookup(self.params["table_store"]).get_many([k for k in keys if k is not None])
        joiner, left = self.params["joiner"], self.params["left"]
        keep, out = [], []
        for i, (key, value) in enumerate(zip(keys, batch.py_values(), strict=True)):
            other = table.get(key) if key is not None else None
            if other is None and not left:
                continue
            keep.append(i)
            out.append(self.call(joiner, value, other))
        picked = batch.take(np.asarray(keep, np.int64))
        return picked.with_python(values=out)


class StreamJoin(Processor):
    def __init__(self, node: Node, ctx: Any) -> None:
        super().__init__(node, ctx)
        self.stores = {node.parents[0]: ctx.store(self.params["stores"][0]),
                       node.parents[1]: ctx.store(self.params["stores"][1])}
        self.names = {node.parents[0]: self.params["stores"][0], node.parents[1]: self.params["stores"][1]}

    def process(self, batch: Batch, parent: Node) -> Batch | None:
        if not len(batch):
            return None
        this_side = parent is self.node.parents[0]
        other_parent = self.node.parents[1] if this_side else self.node.parents[0]
        window = self.params["window"]
        # this-side record at t meets other-side records in [t - before, t + after], and vice versa.
        lo, hi = (window.before_ms, window.after) if this_side else (window.after, window.before_ms)
        keys, values, py_keys = batch.encoded_keys().to_pylist(), batch.py_values(), batch.py_keys()
        mine, theirs = self.stores[parent], self.stores[other_parent]
        out_keys, out_values, out_times, puts = [], [], [], {}
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            ts = int(batch.timestamps[i])
            matched = False
            for other_ts, packed in theirs.fetch(key, ts - lo, ts + hi):
                for other in _unpack(packed):
                    pair = (value, other) if this_side else (other, value)
                    out_keys.append(py_keys[i])
                    out_values.append(self.call(self.params["joiner"], *pair))
                    out_times.append(max(ts, other_ts))
                    matched = True
            if not matched and self.params["left"] and this_side:
                out_keys.append(py_keys[i])
                out_values.append(self.call(self.params["joiner"], value, None))
                out_times.append(ts)
            puts.setdefault((key, ts), []).append(value)
        self._buffer(parent, mine, puts)
        if not out_values:
            return None
        return Batch(out_keys, out_values, np.asarray(out_times, np.int64), batch.key_serde)

    def _buffer(self, parent: Node, store: Any, puts: dict) -> None:
        """Append the batch's records to this side's window store (several records may share key and time)."""
        existing = store.get_many(list(puts))
        items = []
        for (key, ts), new in puts.items():
            old = _unpack(existing[(key, ts)]) if (key, ts) in existing else []
            items.append((key, ts, _pack(old + new)))
        store.put_many(items)
        self.ctx.log_change(self.names[parent], [(k, t) for k, t, _ in items], [v for _, _, v in items])

    def flush(self) -> None:
        for store in self.stores.values():
            store.expire(self.ctx.stream_time.value)
        return None
