"""A whole new Ray cluster on the same data directory finds every topic, config and record again."""

from __future__ import annotations

import time

import pytest
import ray

import raystream as rs

pytestmark = pytest.mark.fault


def test_new_ray_cluster_on_same_data_dir_finds_everything(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    data_dir = str(tmp_path / "data")
    try:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        first_node = ray.get_runtime_context().get_node_id()
        rs.init(data_dir=data_dir, cluster="restart")
        rs.Admin().create_topic("durable", partitions=2, config={"retention.ms": 86_400_000})
        with rs.Producer(acks="all") as producer:
            for i in range(100):
                producer.send("durable", value=b"%d" % i, key=b"%d" % (i % 5))
            producer.flush()
        rs.shutdown(stop_cluster=True)
        ray.shutdown()

        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        assert ray.get_runtime_context().get_node_id() != first_node  # a different Ray cluster
        rs.init(data_dir=data_dir, cluster="restart")
        admin = rs.Admin()
        assert admin.list_topics() == ["durable"]
        description = admin.describe_topic("durable")
        assert description.config["retention.ms"] == 86_400_000
        assert all(p.leader == ray.get_runtime_context().get_node_id() for p in description.partitions)
        values = []
        with rs.Consumer(auto_offset_reset="earliest") as consumer:
            consumer.assign([rs.TopicPartition("durable", p) for p in range(2)])
            deadline = time.monotonic() + 60
            while len(values) < 100 and time.monotonic() < deadline:
                values.extend(r.value for r in consumer.poll(timeout=0.5))
        assert sorted(values) == sorted(b"%d" % i for i in range(100))
    finally:
        rs.shutdown(stop_cluster=True) if rs.current() else None
        ray.shutdown()
