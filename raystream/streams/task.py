"""A stream task: one sub-topology on one partition number (Kafka Streams' ``StreamTask``).

The task owns its processors, its state stores (one SQLite file under the state directory) and, under
exactly-once, its own transactional producer (``transactional.id`` = ``<application_id>-<task_id>``, so a
task moved to another worker fences its previous owner, as Kafka Streams' first exactly-once mode does).
Input comes from the worker's consumer as Arrow tables per partition; everything the task writes — sink
records, repartition records, changelog records — goes through its producer, and ``commit`` returns the
input offsets to commit with it.

Opening a task restores its stores: from the checkpoint a clean close left (only the changelog's tail),
else from the changelog's beginning after wiping the local file; a table read from a topic restores from
that topic up to the group's committed offset.

Called by its worker's thread only (interactive queries read the stores from other threads, which the
store's lock allows).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raystream.core.windows import StreamTime
from raystream.protocol import TopicPartition
from raystream.streams.aggregates import Aggregate
from raystream.streams.batch import Batch
from raystream.streams.joins import StreamJoin, TableJoin, TableSource
from raystream.streams.processors import STATELESS, Processor, source_batch
from raystream.streams.serde import JSON, Serde
from raystream.streams.state import StateDB, decode_window_key, encode_window_key
from raystream.streams.topology import Node, SubTopology, Topology

log = logging.getLogger(__name__)

PROCESSORS = {**STATELESS, "aggregate": Aggregate, "table_source": TableSource, "table_join": TableJoin,
              "stream_join": StreamJoin}


@dataclasses.dataclass(frozen=True)
class TaskId:
    subtopology: int
    partition: int

    def __str__(self) -> str:
        return f"{self.subtopology}_{self.partition}"


@dataclasses.dataclass
class TaskMetrics:
    records_processed: int = 0
    records_late_dropped: int = 0
    records_emitted: int = 0
    commits: int = 0


class StreamTask:
    def __init__(self, task_id: TaskId, sub: SubTopology, topology: Topology, io: Any) -> None:
        """``io``: the worker's side — ``producer_for(task)``, ``topic_schema(topic)``,
        ``key_column(topic)``, ``read(tp, start, end)`` (tables of a partition's records in ``[start,
        end)``), ``end_offset(tp)``, ``committed(tp)``, ``state_dir``."""
        self.id, self.sub, self.topology, self.io = task_id, sub, topology, io
        self.partition = task_id.partition
        self.inputs = {TopicPartition(t, self.partition) for t in sub.source_topics}
        self.stream_time = StreamTime()
        self.metrics = TaskMetrics()
        self.branch_choices: dict = {}
        self.offsets: dict[TopicPartition, int] = {}
        #: Whether the task sent records since its last commit (exactly-once: its transaction has data).
        self.pending_output = False
        self.changelogs = {s: c for s, c in topology.changelog_topics().items() if s in sub.stores}
        self.db = StateDB(Path(io.state_dir) / str(task_id) / "state.db")
        self._stores = {}
        for name in sub.stores:
            spec = topology.stores[name]
            self._stores[name] = (self.db.window_store(name, spec.retention_ms) if spec.kind == "window"
                                  else self.db.key_value_store(name))
        self.processors: dict[Node, Processor] = {n: PROCESSORS[n.kind](n, self) for n in sub.nodes}
        self.producer = io.producer_for(self)

    # -- the context processors see ----------------------------------------------------------------------
    def store(self, name: str) -> Any:
        return self._stores[name]

    def lookup(self, store: str) -> Any:
        """The processor that owns ``store`` (it reads through its cache)."""
        return next(p for n, p in self.processors.items() if n.params.get("store") == store)

    def record_late(self, node: Node, batch: Batch, late: np.ndarray) -> None:
        self.metrics.records_late_dropped += int(late.sum())

    def send(self, topic: str, batch: Batch, key_serde: Serde, value_serde: Serde | None) -> None:
        schema = self.io.topic_schema(topic)
        if key_serde is batch.key_serde or key_serde.name == batch.key_serde.name:
            keys = batch.encoded_keys()
        else:
            keys = key_serde.encode_many(batch.py_keys())
        times = pa.array(batch.timestamps, pa.int64())
        if schema is None:
            serde = value_serde or batch.value_serde or JSON
            table = pa.table({"key": keys, "value": batch.encoded_values(serde), "timestamp": times})
        else:
            values = batch.values
            rows = pa.Table.from_pylist(values, schema) if isinstance(values, list) else values
            table = rows.select(schema.names).cast(schema).append_column("_timestamp", times)
        self.producer.send_batch(topic, table)
        self.pending_output = True
        self.metrics.records_emitted += len(batch)

    def log_change(self, store: str, slots: list, values: list[bytes | None]) -> None:
        topic = self.changelogs.get(store)
        if topic is None or not slots:
            return
        if self.topology.stores[store].kind == "window":
            keys = [encode_window_key(k, s) for k, s in slots]
        else:
            keys = slots
        self.producer.send_batch(topic, pa.table({"key": pa.array(keys, pa.binary()),
                                                  "value": pa.array(values, pa.binary())}),
                                 partition=self.partition)
        self.pending_output = True

    # -- restore -----------------------------------------------------------------------------------------
    def restore(self) -> int:
        """Bring the stores up to date; returns the number of records read to do it."""
        checkpoint = self.db.read_checkpoint()
        self.db.delete_checkpoint()  # a crash from here on must not trust the local file (exactly-once)
        if checkpoint is None:
            self.db.wipe()
            checkpoint = {}
        restored = 0
        for store, topic in self.changelogs.items():
            tp = TopicPartition(topic, self.partition)
            start = checkpoint.get(topic, 0)
            window = self.topology.stores[store].kind == "window"
            for table in self.io.read(tp, start, self.io.end_offset(tp)):
                keys, values = table.column("key").to_pylist(), table.column("value").to_pylist()
                if window:
                    pairs = [decode_window_key(k) for k in keys]
                    self._stores[store].put_many([(k, s, v) for (k, s), v in zip(pairs, values, strict=True)])
                else:
                    self._stores[store].restore(keys, values)
                restored += table.num_rows
        for node, proc in self.processors.items():
            if node.kind == "table_source":
                restored += self._restore_table(node, proc)
        return restored

    def _restore_table(self, node: Node, proc: Any) -> int:
        tp = TopicPartition(node.params["topics"][0], self.partition)
        end = self.io.committed(tp) or 0
        count = 0
        for table in self.io.read(tp, 0, end):
            proc.apply(source_batch(table, node, self.io.key_column(tp.topic)))
            count += table.num_rows
        return count

    # -- processing --------------------------------------------------------------------------------------
    def process(self, tp: TopicPartition, table: pa.Table) -> None:
        """Run a polled table of one input partition through the graph."""
        if not table.num_rows:
            return
        self.offsets[tp] = int(table.column("offset")[-1].as_py()) + 1
        key_column = self.io.key_column(tp.topic)
        with self.db.transaction():
            for node in self.sub.nodes:
                if node.kind in ("source", "table_source") and tp.topic in node.params["topics"]:
                    batch = source_batch(table, node, key_column)
                    self._push(node, batch, None)
            self.stream_time.advance(table.column("timestamp").to_numpy())
            for node, proc in self.processors.items():
                out = proc.punctuate()
                if out is not None:
                    self._forward(node, out)
        self.metrics.records_processed += table.num_rows

    def _push(self, node: Node, batch: Batch, parent: Node | None) -> None:
        out = self.processors[node].process(batch, parent)
        if out is not None and len(out):
            self._forward(node, out)

    def _forward(self, node: Node, batch: Batch) -> None:
        for child in self.topology.children(node):
            if child in self.processors:
                self._push(child, batch, node)

    def flush(self) -> dict[TopicPartition, int]:
        """Empty the caches downstream (in graph order) and return the input offsets to commit."""
        with self.db.transaction():
            for node in self.sub.nodes:
                out = self.processors[node].flush()
                if out is not None and len(out):
                    self._forward(node, out)
        self.metrics.commits += 1
        return dict(self.offsets)

    def state_size_bytes(self) -> int:
        return self.db.size_bytes()

    def close(self, clean: bool) -> None:
        """Release the stores; a clean close (after a commit) leaves a checkpoint of the changelog ends."""
        try:
            if clean:
                ends = {topic: self.io.end_offset(TopicPartition(topic, self.partition))
                        for topic in self.changelogs.values()}
                self.db.write_checkpoint(ends)
        finally:
            self.db.close()

    def query(self, store: str, key: bytes) -> Any:
        return self.lookup(store).query(key)
