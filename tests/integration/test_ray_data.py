"""rs.data: read_topic / write_topic / iter_topic_batches on the shared local Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pyarrow as pa
import pytest
import ray

import raystream as rs
from raystream.core.partitioner import partition_for_key

pytestmark = pytest.mark.integration

SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.float64()), ("k", pa.string())])
SYSTEM = ["topic", "partition", "offset", "timestamp"]


def rows(start: int, n: int, timestamps: list[int] | None = None) -> pa.Table:
    data = {"id": pa.array(range(start, start + n), pa.int64()),
            "value": pa.array([i * 0.5 for i in range(start, start + n)], pa.float64()),
            "k": pa.array([f"k{i % 13}" for i in range(start, start + n)])}
    if timestamps is not None:
        return pa.table({**data, "_timestamp": pa.array(timestamps, pa.int64())})
    return pa.table(data, schema=SCHEMA)


def produce(topic: str, per_partition: dict[int, pa.Table]) -> None:
    with rs.Producer(acks="all") as producer:
        futures = [producer.send_batch(topic, table, partition=p) for p, table in per_partition.items()]
        producer.flush()
        for f in futures:
            f.result(timeout=30)


def collect(ds: ray.data.Dataset) -> pa.Table:
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default").sort_by([("partition", "ascending"),
                                                                        ("offset", "ascending")])


def make_topic3(name: str) -> str:
    """A 3-partition topic with schema SCHEMA: partition p holds ids [1000 p, 1000 p + 40 (p + 1))."""
    rs.Admin().create_topic(name, partitions=3, schema=SCHEMA, key_column="k")
    produce(name, {p: rows(1000 * p, 40 * (p + 1)) for p in range(3)})
    return name


@pytest.fixture(scope="module")
def shared3(cluster):
    """make_topic3 once for the tests that only read it."""
    return make_topic3(f"t-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def topic3(cluster, topic_name):
    """make_topic3 for a test that writes to it."""
    return make_topic3(topic_name)


def test_import_raystream_does_not_import_ray_data():
    code = "import sys, raystream; assert 'ray.data' not in sys.modules and 'raystream.data' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_read_topic_returns_every_row_with_offsets(shared3):
    ds = rs.data.read_topic(shared3, cluster="it")
    table = collect(ds)
    assert table.column_names == SYSTEM + ["id", "value", "k"]
    assert table.num_rows == 40 + 80 + 120
    assert ds.count() == 240
    for p in range(3):
        part = table.filter(pa.compute.equal(table["partition"], p))
        assert part["offset"].to_pylist() == list(range(40 * (p + 1)))
        assert part["id"].to_pylist() == list(range(1000 * p, 1000 * p + 40 * (p + 1)))
        assert set(part["topic"].to_pylist()) == {shared3}


def test_read_topic_splits_large_partitions_into_tasks(shared3):
    source_ds = rs.data.read_topic(shared3, rows_per_task=25)  # default cluster: the current handle ("it")
    table = collect(source_ds)
    assert table.num_rows == 240
    for p in range(3):
        part = table.filter(pa.compute.equal(table["partition"], p))
        assert part["offset"].to_pylist() == list(range(40 * (p + 1)))
    from raystream.data import TopicDatasource

    source = TopicDatasource("it", rs.Admin()._transport.get_metadata([shared3])[shared3],
                             [(0, 0, 40), (1, 0, 80), (2, 0, 120)], None, rows_per_task=25)
    tasks = source.get_read_tasks(1)
    assert len(tasks) == 2 + 4 + 5
    assert sum(t.metadata.num_rows for t in tasks) == 240


def test_read_topic_projects_columns(shared3):
    table = collect(rs.data.read_topic(shared3, columns=["value"], cluster="it"))
    assert table.column_names == SYSTEM + ["value"]
    assert table.num_rows == 240
    with pytest.raises(ValueError, match="unknown columns"):
        rs.data.read_topic(shared3, columns=["nope"], cluster="it")


def test_read_topic_filters_in_the_replicas(shared3):
    ds = rs.data.read_topic(shared3, columns=["id"], filter=(pa.compute.field("id") >= 2100)
                            | (pa.compute.field("id") < 3), rows_per_task=25, cluster="it")
    table = collect(ds)
    assert table.column_names == SYSTEM + ["id"]
    assert table["id"].to_pylist() == [0, 1, 2] + list(range(2100, 2120))
    assert table["offset"].to_pylist() == [0, 1, 2] + list(range(100, 120))  # the rows' true offsets
    with pytest.raises(TypeError, match="Expression"):
        rs.data.read_topic(shared3, filter="id > 3", cluster="it")


def test_read_topic_is_a_snapshot_taken_when_called(topic3):
    ds = rs.data.read_topic(topic3, cluster="it")
    produce(topic3, {p: rows(5000, 10) for p in range(3)})  # after planning, before the dataset runs
    table = collect(ds)
    assert table.num_rows == 240
    assert 5000 not in table["id"].to_pylist()
    assert collect(rs.data.read_topic(topic3, cluster="it")).num_rows == 270


def test_read_topic_start_and_end_offsets(shared3):
    table = collect(rs.data.read_topic(shared3, start=10, end=50, cluster="it"))
    for p in range(3):
        part = table.filter(pa.compute.equal(table["partition"], p))
        assert part["offset"].to_pylist() == list(range(10, min(50, 40 * (p + 1))))
    table = collect(rs.data.read_topic(shared3, start={2: 5}, end={2: 8}, cluster="it"))
    assert table["partition"].to_pylist() == [2, 2, 2]
    assert table["offset"].to_pylist() == [5, 6, 7]
    assert table["id"].to_pylist() == [2005, 2006, 2007]
    assert collect(rs.data.read_topic(shared3, start="latest", cluster="it")).num_rows == 0


def test_read_topic_start_and_end_timestamps(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=2, schema=SCHEMA)
    produce(topic_name, {0: rows(0, 30, [1_000 + i for i in range(30)]),
                         1: rows(100, 30, [2_000 + i for i in range(30)])})
    table = collect(rs.data.read_topic(topic_name, start={"timestamp": 1_010}, end={"timestamp": 1_020},
                                       cluster="it"))
    assert table["partition"].to_pylist() == [0] * 10  # partition 1's records are all later than 1_020
    assert table["offset"].to_pylist() == list(range(10, 20))
    assert table["timestamp"].to_pylist() == list(range(1_010, 1_020))
    table = collect(rs.data.read_topic(topic_name, start={"timestamp": 2_025}, cluster="it"))
    assert table["partition"].to_pylist() == [1] * 5
    assert table["id"].to_pylist() == list(range(125, 130))


def test_write_topic_round_trip_partitions_by_key(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=3, schema=SCHEMA)
    source = rows(0, 1200)
    ds = ray.data.from_arrow([source.slice(i * 300, 300) for i in range(4)])  # 4 blocks, 4 write tasks
    assert rs.data.write_topic(ds, topic_name, key_column="k") == 1200
    table = collect(rs.data.read_topic(topic_name))
    assert table.num_rows == 1200
    assert sorted(table["id"].to_pylist()) == list(range(1200))
    for p, k in zip(table["partition"].to_pylist(), table["k"].to_pylist(), strict=True):
        assert p == partition_for_key(k.encode(), 3)


class DiesOnceDatasink:
    """Builds a TopicDatasink whose write task 0 writes a part of its rows (acknowledged, differently
    batched), then kills its worker process the first time; Ray runs the task again."""

    @staticmethod
    def make(topic: str, marker: str, num_partitions: int, key_column: str | None):
        from ray.data.block import BlockAccessor

        from raystream.data import TopicDatasink

        class _Sink(TopicDatasink):
            def write(self, blocks, ctx):
                blocks = list(blocks)
                if ctx.task_idx == 0 and not os.path.exists(marker):
                    with open(marker, "w") as f:
                        f.write(str(os.getpid()))
                    first = BlockAccessor.for_block(blocks[0]).to_arrow()
                    partial = [first.slice(0, 70), first.slice(70, 90)]  # 160 of this task's rows
                    super().write(partial, ctx)
                    os._exit(1)  # the worker dies as on a lost node: Ray retries the task
                return super().write(blocks, ctx)

        return _Sink(topic, "it", key_column, None, num_partitions, None)


@pytest.mark.parametrize("key_column", ["k", None])
def test_write_topic_task_retried_after_its_worker_died_writes_each_row_once(cluster, topic_name, tmp_path,
                                                                            key_column):
    rs.Admin().create_topic(topic_name, partitions=2, schema=SCHEMA)
    source = rows(0, 900)
    ds = ray.data.from_arrow([source.slice(i * 300, 300) for i in range(3)])  # 3 blocks, 3 write tasks
    marker = str(tmp_path / "died")
    ds.write_datasink(DiesOnceDatasink.make(topic_name, marker, 2, key_column))
    assert os.path.exists(marker)  # the first attempt of task 0 really ran, wrote and died
    table = collect(rs.data.read_topic(topic_name))
    assert sorted(table["id"].to_pylist()) == list(range(900))  # nothing lost, nothing twice


def test_write_topic_without_schema(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=2)
    ds = ray.data.from_items([{"key": f"key{i}".encode(), "value": f"v{i}".encode()} for i in range(50)])
    assert rs.data.write_topic(ds, topic_name) == 50
    table = collect(rs.data.read_topic(topic_name, columns=["key", "value"]))
    assert sorted(table["value"].to_pylist()) == sorted(f"v{i}".encode() for i in range(50))
    for p, k in zip(table["partition"].to_pylist(), table["key"].to_pylist(), strict=True):
        assert p == partition_for_key(k, 2)


def test_iter_topic_batches_without_group(shared3):
    seen = 0
    for batch in rs.data.iter_topic_batches(shared3, columns=["id"], timeout_s=1.0):
        assert batch.column_names == SYSTEM + ["id"]
        seen += batch.num_rows
    assert seen == 240


def test_iter_topic_batches_commits_after_each_step(topic3):
    group = f"g-{topic3}"
    seen = 0
    for batch in rs.data.iter_topic_batches(topic3, group_id=group, timeout_s=1.0):
        seen += batch.num_rows
    assert seen == 240
    offsets = rs.Admin().describe_group(group).offsets
    assert {tp.partition: o for tp, o in offsets.items()} == {0: 40, 1: 80, 2: 120}
    # The group resumes after its commits: only new records come.
    produce(topic3, {0: rows(7000, 5)})
    again = [b for b in rs.data.iter_topic_batches(topic3, group_id=group, timeout_s=1.0)]
    assert sum(b.num_rows for b in again) == 5


class FakeTransport:
    """Stands in for RayTransport in _read_range: the leader moves after the first fetch."""

    def __init__(self):
        from raystream.protocol import PartitionState, TopicMetadata

        self.leader = 1
        self.calls = []
        self.meta = lambda: {"t": TopicMetadata("t", (PartitionState("t", 0, (1, 2), self.leader, self.leader, (1, 2)),),
                                                {}, SCHEMA.serialize().to_pybytes())}
        self.log = pa.table({"_offset": pa.array(range(100), pa.int64()),
                             "_timestamp": pa.array([5] * 100, pa.int64()),
                             **{name: rows(0, 100)[name] for name in SCHEMA.names}}).to_batches(max_chunksize=30)

    def get_metadata(self, topics):
        return self.meta()

    def fetch(self, tp, broker, offset, max_bytes, max_wait_ms, min_bytes, columns, epoch, row_filter=None):
        from concurrent.futures import Future

        from raystream import errors
        from raystream.protocol import FetchResult

        self.calls.append((broker, offset, epoch))
        out = Future()
        if broker != self.leader or epoch != self.leader:
            out.set_exception(errors.NotLeaderError(f"broker {broker} is not the leader"))
            return out
        batch = next(b for b in self.log if b.column(0)[0].as_py() <= offset <= b.column(0)[-1].as_py())
        batch = batch.slice(offset - batch.column(0)[0].as_py())
        if columns is not None:
            batch = batch.select(["_offset", "_timestamp"] + columns)
        self.leader = 2  # the leader fails over after serving one fetch
        out.set_result(FetchResult([batch], 100, 0, 100, batch.column(0)[-1].as_py() + 1))
        return out


def test_read_range_follows_a_leader_change_and_trims_to_end(monkeypatch):
    from raystream import data
    from raystream.client.convert import output_schema

    fake = FakeTransport()
    monkeypatch.setattr(data, "_connect", lambda cluster: fake)
    schema = output_schema([fake.meta()["t"]], ("id",))
    tables = list(data._read_range("it", "t", 0, 10, 45, ("id",), schema, 1 << 20, 5.0))
    table = pa.concat_tables(tables)
    assert table.column_names == SYSTEM + ["id"]
    assert table["offset"].to_pylist() == list(range(10, 45))
    assert table["id"].to_pylist() == list(range(10, 45))
    assert fake.calls[:3] == [(1, 10, 1), (1, 30, 1), (2, 30, 2)]  # NotLeader at 30 → new leader, same offset
