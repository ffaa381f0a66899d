"""``App``: a stream-processing application — define its dataflow, then run it on Ray.

    app = rs.streams.App("fraud", processing_guarantee="exactly_once")
    payments = app.stream("payments", value_serde="json")
    payments.filter(lambda p: p["amount"] > 1000).to("large-payments")
    counts = payments.group_by(lambda p: p["card"]).windowed_by(TumblingWindows(60_000)).count(name="per-card")
    app.run(num_workers=2)          # returns at once; workers are Ray actors
    app.query("per-card", "4111")   # interactive query of a state store
    app.stop()

``run`` creates the internal topics (repartition topics; compacted changelog topics of the state stores)
and any missing sink topic, checks that each sub-topology's source topics are co-partitioned, and starts
``num_workers`` :class:`~raystream.streams.worker_actor.StreamWorkerActor` actors spread over the Ray
cluster. They form the consumer group ``application_id``; adding or removing workers moves tasks (and
their state, through the changelogs), never input data.

Thread-safety: define and run an App from one thread; ``status`` and ``query`` may be called from any.
"""

from __future__ import annotations

from typing import Any

import ray

from raystream.client.admin import Admin
from raystream.core.names import validate_topic_name
from raystream.errors import TopicAlreadyExistsError
from raystream.streams.dsl import Stream, Table
from raystream.streams.serde import Serde, resolve
from raystream.streams.topology import StoreSpec, Topology, TopologyError
from raystream.streams.worker import AT_LEAST_ONCE, EXACTLY_ONCE, StreamsConfig
from raystream.streams.worker_actor import StreamWorkerActor, worker_name

#: Windowed changelogs also delete by time (Kafka Streams: the store's retention plus one day).
WINDOW_CHANGELOG_EXTRA_RETENTION_MS = 86_400_000
NAMESPACE = "raystream"


class App:
    def __init__(self, name: str, *, group_id: str | None = None, processing_guarantee: str = AT_LEAST_ONCE,
                 commit_interval_ms: int | None = None, state_dir: str | None = None,
                 auto_offset_reset: str = "earliest", max_poll_records: int | None = None, poll_ms: int = 100,
                 replication_factor: int | None = None, cluster: Any = None,
                 consumer_config: dict | None = None, producer_config: dict | None = None) -> None:
        """``name`` (and ``group_id``, default: the name) is Kafka Streams' ``application.id``: the
        consumer group, the prefix of internal topics and transactional ids, the state directory."""
        self.application_id = validate_topic_name(group_id or name)
        if processing_guarantee not in (AT_LEAST_ONCE, EXACTLY_ONCE, "exactly_once_v2"):
            raise ValueError(f"processing_guarantee must be {AT_LEAST_ONCE!r} or {EXACTLY_ONCE!r}, got "
                             f"{processing_guarantee!r}")
        if commit_interval_ms is not None and (not isinstance(commit_interval_ms, int) or commit_interval_ms < 0):
            raise ValueError(f"commit_interval_ms must be an int >= 0, got {commit_interval_ms!r}")
        self.name = name
        self.replication_factor = replication_factor
        self.topology = Topology(self.application_id)
        self._config = dict(processing_guarantee=EXACTLY_ONCE if processing_guarantee.startswith("exactly")
                            else AT_LEAST_ONCE, commit_interval_ms=commit_interval_ms, state_dir=state_dir or "",
                            auto_offset_reset=auto_offset_reset, max_poll_records=max_poll_records,
                            poll_ms=poll_ms, consumer_config=dict(consumer_config or {}),
                            producer_config=dict(producer_config or {}))
        self._cluster = cluster
        self._workers: list[Any] = []
        self._next_worker = 0
        self._num_cpus: float = 0

    # -- the dataflow ------------------------------------------------------------------------------------
    def stream(self, topics: str | list[str], *, key_serde: str | Serde = "bytes",
               value_serde: str | Serde = "bytes", timestamp_column: str | None = None) -> Stream:
        """A stream of the records of ``topics`` (co-partitioned if several). Values of a schema-less topic
        are decoded with ``value_serde``; an Arrow-native topic's values are its rows. Event time is the
        record timestamp, or ``timestamp_column`` of the rows."""
        names = [topics] if isinstance(topics, str) else list(topics)
        for t in names:
            validate_topic_name(t)
        ks, vs = resolve(key_serde), resolve(value_serde)
        node = self.topology.add("source", [], topics=names, key_serde=ks, value_serde=vs,
                                 timestamp_column=timestamp_column)
        return Stream(self.topology, node, ks, vs)

    def table(self, topic: str, *, key_serde: str | Serde = "bytes", value_serde: str | Serde = "bytes",
              name: str | None = None) -> Table:
        """The latest value per key of ``topic`` (a null value deletes the key), kept in a state store named
        ``name`` (default: the topic) that restores from the topic itself."""
        validate_topic_name(topic)
        store = name or f"{topic}-table"
        self.topology.add_store(StoreSpec(store, "kv", source_topic=topic))
        ks = resolve(key_serde)
        node = self.topology.add("table_source", [], topics=[topic], key_serde=ks, value_serde=resolve(value_serde),
                                 store=store, timestamp_column=None)
        return Table(self.topology, node, store, ks)

    def describe(self) -> str:
        return self.topology.describe()

    # -- running ----------------------------------------------------------------------------------------
    def streams_config(self) -> StreamsConfig:
        return StreamsConfig(application_id=self.application_id, cluster=self._cluster_name(), **self._config)

    def _cluster_name(self) -> str:
        if isinstance(self._cluster, str):
            return self._cluster
        if self._cluster is not None:
            return self._cluster.cluster
        from raystream import api

        handle = api.current()
        return handle.cluster if handle is not None else "default"

    def run(self, num_workers: int = 1, *, num_cpus: float = 0, wait_ready_s: float = 60.0) -> App:
        """Create the topics the app needs and start ``num_workers`` workers (Ray actors, ``num_cpus``
        each; 0 lets them share a laptop's cores). Returns once every worker has started its loop."""
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        if self._workers:
            raise RuntimeError(f"app {self.application_id!r} is already running; stop() it first")
        self.prepare_topics()
        self._num_cpus = num_cpus
        self._start_workers(num_workers, wait_ready_s)
        return self

    def scale(self, num_workers: int, *, wait_ready_s: float = 60.0) -> None:
        """Run ``num_workers`` workers from now on: new ones join the group, stopped ones leave it; the
        rebalance moves tasks (their state restores from the changelogs), never input data."""
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
        if not self._workers:
            raise RuntimeError(f"app {self.application_id!r} is not running; run() it first")
        if num_workers > len(self._workers):
            self._start_workers(num_workers - len(self._workers), wait_ready_s)
        while len(self._workers) > num_workers:
            worker = self._workers.pop()
            try:
                ray.get(worker.stop.remote(wait_ready_s), timeout=wait_ready_s + 10)
            finally:
                ray.kill(worker, no_restart=True)

    def _start_workers(self, count: int, wait_ready_s: float) -> None:
        config = self.streams_config()
        actor = ray.remote(StreamWorkerActor)
        new = []
        for _ in range(count):
            index = self._next_worker
            self._next_worker += 1
            new.append(actor.options(
                name=worker_name(self.application_id, index), namespace=NAMESPACE, num_cpus=self._num_cpus,
                max_restarts=-1, max_concurrency=4, scheduling_strategy="SPREAD",
            ).remote(self.topology, config, f"{index}"))
        self._workers.extend(new)
        ray.get([w.ready.remote() for w in new], timeout=wait_ready_s)

    def prepare_topics(self) -> None:
        """Create repartition and changelog topics, and missing sink topics; check co-partitioning."""
        admin = Admin(cluster=self._cluster_name())
        try:
            existing = set(admin.list_topics())
            counts: dict[str, int] = {t: len(admin.describe_topic(t).partitions)
                                      for t in self.topology.source_topics() if t in existing}
            for sub in self.topology.subtopologies():
                user = [t for t in sub.source_topics if t not in self.topology.repartition_topics]
                missing = [t for t in user if t not in counts]
                if missing:
                    from raystream.errors import UnknownTopicOrPartitionError

                    raise UnknownTopicOrPartitionError(f"app {self.application_id!r} reads topics that do not "
                                                       f"exist: {missing}", topic=missing[0])
                width = max((counts[t] for t in user), default=None)
                if width is None:  # fed only by repartition topics: they copy the widest user topic
                    width = max(counts.values())
                for topic in sub.source_topics:
                    if topic in self.topology.repartition_topics and topic not in counts:
                        self._create(admin, topic, width, {})
                        counts[topic] = width
                widths = {t: counts[t] for t in sub.source_topics}
                if len(set(widths.values())) > 1:
                    raise TopologyError(f"sub-topology {sub.id} reads topics that are not co-partitioned "
                                        f"(the same number of partitions): {widths}")
                for store in sub.stores:
                    self._create_changelog(admin, store, width)
            for topic in self.topology.sink_topics():
                if topic not in existing and topic not in counts:
                    self._create(admin, topic, max(counts.values()), {})
        finally:
            admin.close()

    def _create_changelog(self, admin: Admin, store: str, partitions: int) -> None:
        spec = self.topology.stores[store]
        topic = self.topology.changelog_topics().get(store)
        if topic is None:
            return
        config: dict[str, Any] = {"cleanup.policy": "compact"}
        if spec.kind == "window":
            config = {"cleanup.policy": "compact,delete",
                      "retention.ms": spec.retention_ms + WINDOW_CHANGELOG_EXTRA_RETENTION_MS}
        self._create(admin, topic, partitions, config)

    def _create(self, admin: Admin, topic: str, partitions: int, config: dict) -> None:
        try:
            admin.create_topic(topic, partitions=partitions, replication_factor=self.replication_factor,
                               config=config)
        except TopicAlreadyExistsError:
            pass

    def status(self) -> list[dict]:
        """Each worker's state, node, tasks (inputs, records processed, late records dropped, state size)."""
        return ray.get([w.status.remote() for w in self._workers])

    def query(self, store: str, key: Any) -> Any:
        """The value of ``key`` in state store ``store``, from the worker whose task holds it (windowed
        stores: a list of ``{"start", "end", "value"}``). ``key`` is encoded with the store's key serde."""
        if store not in self.topology.stores:
            raise KeyError(f"no state store {store!r}; the app has {sorted(self.topology.stores)}")
        node = next(n for n in self.topology.nodes if n.params.get("store") == store)
        encoded = (node.params.get("key_serde") or resolve(None)).dumps(key) if not isinstance(key, bytes) else key
        for owned, value in ray.get([w.query.remote(store, encoded) for w in self._workers]):
            if owned:
                return value
        return None

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop every worker (commit, checkpoint, leave the group) and end their actors."""
        workers, self._workers = self._workers, []
        try:
            ray.get([w.stop.remote(timeout_s) for w in workers], timeout=timeout_s + 10)
        finally:
            for w in workers:
                ray.kill(w, no_restart=True)

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._workers:
            self.stop()
