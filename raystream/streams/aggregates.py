"""Aggregations of grouped streams (``count``, ``sum``, ``reduce``, ``aggregate``), plain or over tumbling
and hopping windows, backed by a state store and its changelog.

How a batch is folded in: window assignment, late-record detection and, for ``count`` and ``sum`` of a
column, the per-(key, window) partial results are computed column-wise (numpy and Arrow's hash
aggregation); ``reduce``, ``aggregate`` and ``sum`` of a function run the user's function per record. The
results wait in a cache (Kafka Streams' record cache) until the task commits: ``flush`` then writes them to
the store and the changelog, and emits one update per changed (key, window), so a commit interval's worth
of records for one key costs one store write and one output record. ``suppress`` emits a window once,
when it closes, instead.

Called by one task thread only. Aggregates are stored msgpack-encoded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from raystream.core.windows import HoppingWindows
from raystream.streams.batch import Batch
from raystream.streams.processors import Processor
from raystream.streams.serde import BYTES
from raystream.streams.serde import pack as _pack
from raystream.streams.serde import unpack as _unpack
from raystream.streams.topology import Node

#: The slot under which a suppressed windowed aggregation keeps the start of the last window it emitted
#: (changelogged with the aggregates, so a restored task neither repeats nor skips final results).
_SUPPRESS_KEY, _SUPPRESS_START = b"", -(2 ** 62)


class Aggregate(Processor):
    def __init__(self, node: Node, ctx: Any) -> None:
        super().__init__(node, ctx)
        self.op = self.params["op"]
        self.windows: HoppingWindows | None = self.params["windows"]
        self.store = ctx.store(self.params["store"])
        self.suppress = bool(self.params.get("suppress"))
        #: slot -> [aggregate, max event time]; slot: key bytes, or (key bytes, window start).
        self.dirty: dict[Any, list] = {}
        self.key_serde = BYTES
        self._last_emitted: int | None = None  # suppress: the start of the last window emitted

    # -- folding a batch in ------------------------------------------------------------------------------
    def process(self, batch: Batch, parent: Node) -> None:
        if not len(batch):
            return None
        self.key_serde = batch.key_serde
        keys = batch.encoded_keys()
        if self.windows is None:
            rows, starts = np.arange(len(batch), dtype=np.int64), None
        else:
            assignment = self.windows.assign(batch.timestamps)
            late = self.ctx.stream_time.late(self.windows, assignment, len(batch))
            if late.any():
                self.ctx.record_late(self.node, batch, late)
            open_ = ~self.windows.closed(assignment.starts, self.ctx.stream_time.value)
            rows, starts = assignment.rows[open_], assignment.starts[open_]
        if self.op == "count" or (self.op == "sum" and isinstance(self.params["value"], str)):
            partial = self._vectorised(batch, keys, rows, starts)
            self._merge_additive(partial)
        else:
            self._fold_records(batch, keys, rows, starts)
        return None

    def _vectorised(self, batch: Batch, keys: pa.Array, rows: np.ndarray, starts: np.ndarray | None) -> dict:
        """(slot -> (partial aggregate, max event time)) with Arrow's hash aggregation."""
        picked = pa.array(rows, pa.int64())
        columns = {"k": keys.take(picked), "t": pa.array(batch.timestamps[rows])}
        if starts is not None:
            columns["s"] = pa.array(starts, pa.int64())
        aggs = [("t", "max")]
        if self.op == "count":
            aggs.append(("t", "count"))
        else:
            columns["v"] = batch.arrow_values().column(self.params["value"]).take(picked)
            aggs.append(("v", "sum"))
        by = ["k", "s"] if starts is not None else ["k"]
        grouped = pa.table(columns).group_by(by, use_threads=False).aggregate(aggs)
        ks = grouped.column("k").to_pylist()
        slots = ks if starts is None else list(zip(ks, grouped.column("s").to_pylist(), strict=True))
        value_col = "t_count" if self.op == "count" else "v_sum"
        values = grouped.column(value_col).to_pylist()
        return dict(zip(slots, zip(values, grouped.column("t_max").to_pylist(), strict=True), strict=True))

    def _current(self, slots: list) -> dict:
        """The stored aggregates of the ``slots`` not in the cache."""
        missing = [s for s in slots if s not in self.dirty]
        return {slot: _unpack(v) for slot, v in self.store.get_many(missing).items()} if missing else {}

    def _merge_additive(self, partial: dict) -> None:
        stored = self._current(list(partial))
        for slot, (value, max_ts) in partial.items():
            entry = self.dirty.get(slot)
            if entry is None:
                base = stored.get(slot)
                self.dirty[slot] = [value if base is None else base + value, max_ts]
            else:
                entry[0] += value
                entry[1] = max(entry[1], max_ts)

    def _fold_records(self, batch: Batch, keys: pa.Array, rows: np.ndarray, starts: np.ndarray | None) -> None:
        values = batch.py_values()
        key_list = keys.to_pylist()
        slot_of = (lambda i, j: key_list[i]) if starts is None else (lambda i, j: (key_list[i], int(starts[j])))
        slots = [slot_of(int(r), j) for j, r in enumerate(rows)]
        stored = self._current(list(dict.fromkeys(slots)))
        op, fn = self.op, self.params.get("fn")
        for slot, r in zip(slots, rows, strict=True):
            value, ts = values[r], int(batch.timestamps[r])
            entry = self.dirty.get(slot)
            if entry is None:
                base = stored.get(slot)
                entry = self.dirty[slot] = [self._initial(base), ts]
            if op == "sum":
                entry[0] = (entry[0] or 0) + self.call(self.params["value"], value)
            elif op == "reduce":
                entry[0] = value if entry[0] is None else self.call(fn, entry[0], value)
            else:
                entry[0] = self.call(fn, entry[0], value)
            entry[1] = max(entry[1], ts)

    def _initial(self, stored: Any) -> Any:
        if stored is not None:
            return stored
        if self.op == "aggregate":
            return self.call(self.params["initializer"])
        return None

    # -- lookups (joins, interactive queries) ----------------------------------------------------------------
    def get_many(self, keys: list[bytes]) -> dict[bytes, Any]:
        out = {k: self.dirty[k][0] for k in keys if k in self.dirty}
        rest = [k for k in keys if k not in out]
        out.update({k: _unpack(v) for k, v in self.store.get_many(rest).items()} if rest else {})
        return out

    def query(self, key: bytes) -> Any:
        """The aggregate of ``key`` (windowed: every retained window of it, oldest first)."""
        if self.windows is None:
            return self.get_many([key]).get(key)
        size = self.windows.size_ms
        cached = {slot[1]: entry[0] for slot, entry in list(self.dirty.items()) if slot[0] == key}
        stored = {s: _unpack(v) for s, v in self.store.fetch(key, _SUPPRESS_START + 1, 2 ** 62)}
        stored.update(cached)
        return [{"start": s, "end": s + size, "value": stored[s]} for s in sorted(stored)]

    # -- commit ------------------------------------------------------------------------------------------
    def flush(self) -> Batch | None:
        """Write the cache to the store and changelog; emit its updates (none when suppressed)."""
        if not self.dirty:
            return None
        dirty, self.dirty = self.dirty, {}
        self._write([(slot, _pack(entry[0])) for slot, entry in dirty.items()])
        if self.windows is not None:
            self.store.expire(self.ctx.stream_time.value)
        if self.suppress:
            return None
        return self._updates([(slot, entry[0], entry[1]) for slot, entry in dirty.items()])

    def _write(self, items: list[tuple[Any, bytes | None]]) -> None:
        if self.windows is None:
            self.store.put_many(items)
        else:
            self.store.put_many([(k, s, v) for (k, s), v in items])
        self.ctx.log_change(self.params["store"], [slot for slot, _ in items], [v for _, v in items])

    def _updates(self, rows: list[tuple[Any, Any, int]]) -> Batch:
        if self.windows is None:
            keys = [slot for slot, _, _ in rows]
            values = [agg for _, agg, _ in rows]
        else:
            size = self.windows.size_ms
            keys = [slot[0] for slot, _, _ in rows]
            values = [{"start": slot[1], "end": slot[1] + size, "value": agg} for slot, agg, _ in rows]
        times = np.asarray([ts for _, _, ts in rows], np.int64)
        return Batch(pa.array(keys, pa.binary()), values, times, self.key_serde)

    def punctuate(self) -> Batch | None:
        """Suppressed: the final result of every window closed since the last one emitted."""
        if not self.suppress or self.windows is None:
            return None
        w = self.windows
        if self._last_emitted is None:
            done = self.store.get_many([(_SUPPRESS_KEY, _SUPPRESS_START)])
            self._last_emitted = _unpack(done[(_SUPPRESS_KEY, _SUPPRESS_START)]) if done else _SUPPRESS_START
        newest_closed = self.ctx.stream_time.value - w.grace_ms - w.size_ms  # the latest start that is closed
        first = self._last_emitted + 1
        if newest_closed < first:
            return None
        if self.dirty:  # closing windows may have updates still cached
            dirty, self.dirty = self.dirty, {}
            self._write([(slot, _pack(entry[0])) for slot, entry in dirty.items()])
        closed = [(k, s, v) for k, s, v in self.store.fetch_all(first, newest_closed) if k != _SUPPRESS_KEY]
        self._write([((_SUPPRESS_KEY, _SUPPRESS_START), _pack(newest_closed))])
        self._last_emitted = newest_closed
        if not closed:
            return None
        return self._updates([((k, s), _unpack(v), s + w.size_ms - 1) for k, s, v in closed])
