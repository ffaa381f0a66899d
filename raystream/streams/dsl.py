"""The dataflow DSL: :class:`Stream`, :class:`GroupedStream`, :class:`WindowedStream` and :class:`Table`
(Kafka Streams' ``KStream``, ``KGroupedStream``, ``TimeWindowedKStream`` and ``KTable``).

Each call adds a node to the application's :class:`~raystream.streams.topology.Topology` and returns a new
handle; nothing runs until ``App.run``. Per-record functions receive the record's value (``with_key=True``:
``(key, value)``); values of an Arrow-native topic are rows as dicts. Vectorised variants take a
``pyarrow.compute.Expression`` (``filter``) or a function over a ``pyarrow.Table`` (``map_batches``).
Built on one thread (the one defining the app).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc

from raystream.core.windows import HoppingWindows, SessionWindows
from raystream.streams.serde import MSGPACK, Serde, resolve
from raystream.streams.topology import Node, StoreSpec, Topology, TopologyError


@dataclasses.dataclass(frozen=True)
class JoinWindows:
    """A stream-stream join matches records whose event times differ by at most ``before_ms`` (the other
    record earlier) or ``after_ms`` (later); ``grace_ms`` keeps records for late partners."""

    before_ms: int
    after_ms: int | None = None
    grace_ms: int = 0

    @classmethod
    def of(cls, time_difference_ms: int, grace_ms: int = 0) -> JoinWindows:
        return cls(time_difference_ms, time_difference_ms, grace_ms)

    @property
    def after(self) -> int:
        return self.before_ms if self.after_ms is None else self.after_ms


def _callable(name: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


class Stream:
    """A record stream (KStream). Handles are immutable: each operator returns a new one."""

    def __init__(self, topology: Topology, node: Node, key_serde: Serde, value_serde: Serde | None = None) -> None:
        #: ``value_serde``: the serde values are still encoded with (read from a topic, not changed since).
        self._topology, self._node, self.key_serde, self.value_serde = topology, node, key_serde, value_serde

    def _then(self, kind: str, key_serde: Serde | None = None, keeps_values: bool = False, **params: Any) -> Stream:
        node = self._topology.add(kind, [self._node], **params)
        return Stream(self._topology, node, key_serde or self.key_serde, self.value_serde if keeps_values else None)

    # -- stateless ------------------------------------------------------------------------------------------
    def filter(self, predicate: Callable | pc.Expression, *, with_key: bool = False) -> Stream:
        """Keep records whose ``predicate(value)`` is true; an Expression is evaluated over the value
        columns, vectorised."""
        if isinstance(predicate, pc.Expression):
            return self._then("filter_expr", keeps_values=True, expression=predicate)
        _callable("predicate", predicate)
        return self._then("filter", keeps_values=True, fn=predicate, with_key=with_key)

    def filter_not(self, predicate: Callable, *, with_key: bool = False) -> Stream:
        _callable("predicate", predicate)
        return self._then("filter", keeps_values=True, fn=lambda *a: not predicate(*a), with_key=with_key)

    def map(self, fn: Callable, *, with_key: bool = False) -> Stream:
        """New values ``fn(value)`` (Kafka's mapValues); ``with_key=True``: ``fn(key, value) -> (key, value)``
        (Kafka's map; a changed key repartitions at the next ``group_by_key``/join, as in Kafka)."""
        _callable("fn", fn)
        return self._then("map", fn=fn, with_key=with_key)

    def flat_map(self, fn: Callable, *, with_key: bool = False) -> Stream:
        """Zero or more values per record: ``fn(value) -> iterable`` (``with_key``: of ``(key, value)``)."""
        _callable("fn", fn)
        return self._then("flat_map", fn=fn, with_key=with_key)

    def select_key(self, fn: Callable, *, key_serde: str | Serde = "json") -> Stream:
        """New keys ``fn(value)``, encoded with ``key_serde`` where they are stored or written."""
        _callable("fn", fn)
        return self._then("select_key", keeps_values=True, key_serde=resolve(key_serde), fn=fn)

    def map_batches(self, fn: Callable) -> Stream:
        """``fn(pyarrow.Table) -> pyarrow.Table`` over the value columns plus ``key`` and ``timestamp``
        (vectorised: no Python per record). A returned ``key`` or ``timestamp`` column replaces the old."""
        _callable("fn", fn)
        return self._then("map_batches", fn=fn)

    def peek(self, fn: Callable, *, with_key: bool = False) -> Stream:
        """Call ``fn(value)`` for each record (side effects: logging, metrics); records pass unchanged."""
        _callable("fn", fn)
        return self._then("peek", keeps_values=True, fn=fn, with_key=with_key)

    def foreach(self, fn: Callable, *, with_key: bool = False) -> None:
        self.peek(fn, with_key=with_key)

    def branch(self, *predicates: Callable, default: bool = False) -> list[Stream]:
        """Split by the first predicate each record satisfies (Kafka's ``split``); ``default=True`` adds a
        last stream of the records no predicate took. Records matching none are otherwise dropped."""
        for p in predicates:
            _callable("predicate", p)
        out = [self._then("branch", keeps_values=True, predicates=predicates, index=i) for i in range(len(predicates))]
        if default:
            out.append(self._then("branch", keeps_values=True, predicates=predicates, index=-1))
        return out

    def merge(self, *others: Stream) -> Stream:
        """One stream of this one's records and the others' (no order between them)."""
        for other in others:
            if not isinstance(other, Stream) or other._topology is not self._topology:
                raise TypeError("merge takes streams of the same App")
        node = self._topology.add("merge", [self._node, *[o._node for o in others]])
        same = all(o.value_serde is self.value_serde for o in others)
        return Stream(self._topology, node, self.key_serde, self.value_serde if same else None)

    def to(self, topic: str, *, key_serde: str | Serde | None = None, value_serde: str | Serde | None = None) -> None:
        """Write the stream to ``topic`` (created if missing, with the input's partition count). An
        Arrow-native topic takes the value columns as rows; otherwise values are encoded with
        ``value_serde`` (default: as read, or JSON for values a function produced)."""
        self._topology.add("sink", [self._node], topic=topic, key_serde=resolve(key_serde, self.key_serde),
                           value_serde=None if value_serde is None else resolve(value_serde))

    # -- stateful -------------------------------------------------------------------------------------------
    def group_by(self, key: Callable | str, *, key_serde: str | Serde = "json", name: str | None = None
                 ) -> GroupedStream:
        """Group by a new key — ``key(value)``, or a column name of the values — repartitioning through an
        internal topic so each key's records meet in one task."""
        if isinstance(key, str):
            column = key
            selected = self._then("select_key_column", keeps_values=True, key_serde=resolve(key_serde), column=column)
        else:
            selected = self.select_key(key, key_serde=key_serde)
        return selected._repartition(name)

    def group_by_key(self) -> GroupedStream:
        """Group by the current key (no repartition, unless an earlier operator may have changed keys)."""
        if self._key_changed():
            return self._repartition(None)
        return GroupedStream(self)

    def repartition(self, name: str | None = None) -> Stream:
        """Route through an internal topic keyed by the current key (Kafka's ``repartition``)."""
        return self._repartition(name).stream

    def _key_changed(self) -> bool:
        stack = [self._node]
        while stack:
            node = stack.pop()
            if node.kind in ("select_key", "select_key_column") or (node.kind in ("map", "flat_map")
                                                                    and node.params.get("with_key")):
                return True
            if node.kind != "source":
                stack.extend(node.parents)
        return False

    def _repartition(self, name: str | None) -> GroupedStream:
        topo = self._topology
        name = name or topo.next_name("KSTREAM-REPARTITION")
        topic = topo.internal_topic(f"{name}-repartition")
        if topic in topo.repartition_topics:
            raise TopologyError(f"repartition name {name!r} is used twice")
        topo.repartition_topics[topic] = None
        # Values still encoded as read cross as they are; others (rows, Python values) as msgpack.
        value_serde = self.value_serde or MSGPACK
        topo.add("repartition_sink", [self._node], topic=topic, key_serde=self.key_serde, value_serde=value_serde)
        source = topo.add("source", [], topics=[topic], key_serde=self.key_serde, value_serde=value_serde,
                          internal=True, timestamp_column=None)
        return GroupedStream(Stream(topo, source, self.key_serde, value_serde))

    def join(self, other: Table | Stream, joiner: Callable, *, window: JoinWindows | None = None) -> Stream:
        """Inner join: with a :class:`Table`, each record meets the table's current value for its key
        (``joiner(value, table_value)``); with a stream, records of both within ``window`` meet."""
        return self._join(other, joiner, window, left=False)

    def left_join(self, other: Table | Stream, joiner: Callable, *, window: JoinWindows | None = None) -> Stream:
        """Like ``join``; records without a partner are kept with ``None`` for the other side."""
        return self._join(other, joiner, window, left=True)

    def _join(self, other: Any, joiner: Callable, window: JoinWindows | None, left: bool) -> Stream:
        _callable("joiner", joiner)
        if isinstance(other, Table):
            if other.windowed:
                raise TopologyError("a stream joins tables keyed by plain keys, not windowed tables")
            node = self._topology.add("table_join", [self._node, other._node], table_store=other.store,
                                      joiner=joiner, left=left)
            return Stream(self._topology, node, self.key_serde)
        if not isinstance(other, Stream):
            raise TypeError(f"join takes a Table or a Stream, got {type(other).__name__}")
        if not isinstance(window, JoinWindows):
            raise TypeError("a stream-stream join needs window=JoinWindows(...)")
        topo = self._topology
        base = topo.next_name("KSTREAM-JOIN")
        retention = window.before_ms + window.after + window.grace_ms + 1
        stores = [topo.add_store(StoreSpec(f"{base}-{side}-store", "window", retention)).name
                  for side in ("this", "other")]
        node = topo.add("stream_join", [self._node, other._node], stores=stores, window=window,
                        joiner=joiner, left=left, store=stores[0])
        node.params["other_store"] = stores[1]
        return Stream(topo, node, self.key_serde)


class GroupedStream:
    """Records grouped by key (KGroupedStream): aggregate them into a :class:`Table`."""

    def __init__(self, stream: Stream, windows: Any = None) -> None:
        self.stream, self.windows = stream, windows

    def windowed_by(self, windows: HoppingWindows | SessionWindows) -> GroupedStream:
        if not isinstance(windows, (HoppingWindows, SessionWindows)):
            raise TypeError("windowed_by takes TumblingWindows, HoppingWindows or SessionWindows")
        return GroupedStream(self.stream, windows)

    def count(self, *, name: str | None = None) -> Table:
        return self._aggregate("count", name)

    def sum(self, value: str | Callable, *, name: str | None = None) -> Table:
        """Sum of a value column (vectorised) or of ``value(record_value)``."""
        if not isinstance(value, str):
            _callable("value", value)
        return self._aggregate("sum", name, value=value)

    def reduce(self, reducer: Callable, *, name: str | None = None) -> Table:
        """``reducer(aggregate, value) -> aggregate``, starting from the first value."""
        _callable("reducer", reducer)
        return self._aggregate("reduce", name, fn=reducer)

    def aggregate(self, initializer: Callable, aggregator: Callable, *, merger: Callable | None = None,
                  name: str | None = None) -> Table:
        """``aggregator(aggregate, value) -> aggregate`` from ``initializer()``; session windows also need
        ``merger(a, b)`` for sessions a record joins together. Aggregates must be msgpack-able."""
        _callable("initializer", initializer)
        _callable("aggregator", aggregator)
        if isinstance(self.windows, SessionWindows) and merger is None:
            raise TopologyError("aggregate over session windows needs merger=")
        return self._aggregate("aggregate", name, fn=aggregator, initializer=initializer, merger=merger)

    def _aggregate(self, op: str, name: str | None, **params: Any) -> Table:
        topo, windows = self.stream._topology, self.windows
        name = name or topo.next_name(f"KSTREAM-{op.upper()}-STATE-STORE")
        if windows is None:
            spec = StoreSpec(name, "kv")
        elif isinstance(windows, SessionWindows):
            spec = StoreSpec(name, "window", windows.inactivity_gap_ms * 2 + windows.grace_ms + 1)
        else:
            spec = StoreSpec(name, "window", windows.size_ms + windows.grace_ms)
        topo.add_store(spec)
        node = topo.add("aggregate", [self.stream._node], op=op, store=name, windows=windows,
                        key_serde=self.stream.key_serde, **params)
        return Table(topo, node, name, self.stream.key_serde, windows)


class Table:
    """A changelog as a table (KTable): the latest value per key (per window, for windowed tables),
    materialised in a state store that ``App.query`` reads."""

    def __init__(self, topology: Topology, node: Node, store: str, key_serde: Serde, windows: Any = None) -> None:
        self._topology, self._node, self.store, self.key_serde, self.windows = (
            topology, node, store, key_serde, windows)

    @property
    def windowed(self) -> bool:
        return self.windows is not None

    def to_stream(self) -> Stream:
        """Every update of the table as a record; windowed tables give values ``{"start", "end", "value"}``."""
        return Stream(self._topology, self._topology.add("to_stream", [self._node]), self.key_serde)

    def suppress(self) -> Table:
        """Emit each window's result once, when the window closes (Kafka's ``untilWindowCloses``), instead
        of every update."""
        if not self.windowed or isinstance(self.windows, SessionWindows):
            raise TopologyError("suppress() applies to tables of tumbling or hopping windows")
        self._node.params["suppress"] = True
        return self
