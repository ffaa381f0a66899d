"""A stream application's processing graph (Kafka Streams' ``Topology``), built by the DSL, run by tasks.

Nodes are kept in creation order, which is a topological order (a node's parents exist before it).
Repartitioning (``group_by``) cuts the graph: the upstream part ends in a ``repartition_sink`` writing an
internal topic, the downstream part starts at a ``source`` reading it. Each connected part is a
*sub-topology*; a sub-topology runs as one task per partition of its source topics, which must be
co-partitioned (the same number of partitions) — as in Kafka Streams, partition ``p`` of every source topic
of a sub-topology goes to the same task.

Names are deterministic (creation order), so the same application code finds its state stores, changelog
topics and internal topics again after a restart. Pure; built on one thread, then read-only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raystream.core.names import validate_topic_name
from raystream.errors import RaystreamError


class TopologyError(RaystreamError):
    """The application's graph cannot run: e.g. source topics of one sub-topology are not co-partitioned, a
    name is used twice, or an operator is used where it cannot be."""


#: Node kinds that read topics (their ``params["topics"]``).
SOURCE_KINDS = ("source", "table_source")


@dataclasses.dataclass(eq=False)
class Node:
    kind: str
    name: str
    parents: list[Node]
    params: dict[str, Any]

    def __repr__(self) -> str:
        return f"Node({self.name})"


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """A state store: ``kind`` "kv" or "window" (``retention_ms`` for windows), changelogged to
    ``changelog`` (None: restored from ``source_topic``, the table's own input topic)."""

    name: str
    kind: str
    retention_ms: int = 0
    source_topic: str | None = None


@dataclasses.dataclass(frozen=True)
class SubTopology:
    id: int
    nodes: tuple[Node, ...]
    source_topics: tuple[str, ...]
    stores: tuple[str, ...]


class Topology:
    def __init__(self, application_id: str) -> None:
        self.application_id = application_id
        self.nodes: list[Node] = []
        self.stores: dict[str, StoreSpec] = {}
        #: Internal repartition topics: name -> the topic whose partition count they copy.
        self.repartition_topics: dict[str, str | None] = {}
        self._children: dict[Node, list[Node]] = {}

    # -- building ------------------------------------------------------------------------------------------
    def add(self, kind: str, parents: list[Node], **params: Any) -> Node:
        label = params.pop("label", None) or kind.upper()
        node = Node(kind, f"{label}-{len(self.nodes):010d}", list(parents), params)
        self.nodes.append(node)
        self._children[node] = []
        for parent in parents:
            self._children[parent].append(node)
        return node

    def add_store(self, spec: StoreSpec) -> StoreSpec:
        if spec.name in self.stores:
            raise TopologyError(f"state store {spec.name!r} is defined twice; give each a distinct name=")
        validate_topic_name(spec.name)  # names become file and topic names
        self.stores[spec.name] = spec
        return spec

    def next_name(self, prefix: str) -> str:
        return f"{prefix}-{len(self.nodes):010d}"

    def internal_topic(self, suffix: str) -> str:
        return validate_topic_name(f"{self.application_id}-{suffix}")

    # -- reading -------------------------------------------------------------------------------------------
    def children(self, node: Node) -> list[Node]:
        return self._children[node]

    def changelog_topics(self) -> dict[str, str]:
        """Store name -> its changelog topic, for stores not restored from a source topic."""
        return {name: self.internal_topic(f"{name}-changelog")
                for name, spec in self.stores.items() if spec.source_topic is None}

    def subtopologies(self) -> list[SubTopology]:
        """The connected parts of the graph, in the order of their first node."""
        group: dict[Node, Node] = {}

        def root(node: Node) -> Node:
            while group[node] is not node:
                group[node] = group[group[node]]
                node = group[node]
            return node

        for node in self.nodes:
            group[node] = node
            for parent in node.parents:
                group[root(node)] = root(parent)
        parts: dict[Node, list[Node]] = {}
        for node in self.nodes:
            parts.setdefault(root(node), []).append(node)
        result = []
        for i, nodes in enumerate(parts.values()):
            topics = tuple(dict.fromkeys(t for n in nodes if n.kind in SOURCE_KINDS for t in n.params["topics"]))
            if not topics:
                raise TopologyError(f"nodes {[n.name for n in nodes]} read no topic (every stream starts at "
                                    f"app.stream() or app.table())")
            stores = tuple(dict.fromkeys(n.params["store"] for n in nodes if n.params.get("store")))
            result.append(SubTopology(i, tuple(nodes), topics, stores))
        return result

    def source_topics(self) -> list[str]:
        """Every topic the application reads (user topics and internal repartition topics)."""
        return list(dict.fromkeys(t for n in self.nodes if n.kind in SOURCE_KINDS for t in n.params["topics"]))

    def sink_topics(self) -> list[str]:
        return list(dict.fromkeys(n.params["topic"] for n in self.nodes if n.kind in ("sink", "repartition_sink")))

    def describe(self) -> str:
        """A text rendering like Kafka Streams' ``TopologyDescription``."""
        lines = []
        for sub in self.subtopologies():
            lines.append(f"Sub-topology: {sub.id} (topics {list(sub.source_topics)})")
            for node in sub.nodes:
                extra = node.params.get("topic") or node.params.get("topics") or node.params.get("store") or ""
                kids = [c.name for c in self.children(node)]
                lines.append(f"    {node.name} {extra} --> {', '.join(kids) or 'none'}")
        return "\n".join(lines)
