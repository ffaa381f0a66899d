"""``raystream start`` with a ``gateway:`` section in the config file serves Kafka clients, and ``raystream
stop`` stops the gateways (a raystream cluster of the test's own on the shared local Ray, as in
test_config_file.py: a controller takes the file's settings only when it is created)."""

from __future__ import annotations

import re
import uuid

import pytest
import ray
from click.testing import CliRunner
from confluent_helpers import consume_values, produce_values

import raystream as rs
from raystream import api, cluster_config, handles
from raystream.actors.gateway_actor import supervisor_name
from raystream.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def own_cluster(cluster, monkeypatch, tmp_path):
    """A new cluster's name; stopped afterwards (if the test did not), the shared one current again."""
    monkeypatch.delenv(cluster_config.ENV_VAR, raising=False)
    name = f"gw-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        api.stop(api.ClusterHandle(name, str(tmp_path / "data"), handles.get_controller(name), started_ray=False))
    except (ValueError, ray.exceptions.RayActorError):  # stopped by the test
        pass
    rs.init(cluster=cluster.cluster, data_dir=cluster.data_dir)


def test_raystream_start_with_a_gateway_section_serves_kafka_clients(tmp_path, own_cluster):
    path = tmp_path / "raystream.yaml"
    path.write_text(f"cluster: {own_cluster}\ndata_dir: data\nbroker:\n  num.partitions: 2\n"
                    "gateway:\n  port: 0\n  listen.host: 127.0.0.1\n  socket.request.max.bytes: 1048576\n"
                    "  registration.interval.ms: 200\n  registration.timeout.ms: 2000\n")
    runner = CliRunner()
    started = runner.invoke(main, ["--config", str(path), "start"])
    assert started.exit_code == 0, started.output
    found = re.search(r"Kafka gateways \(1\): 127\.0\.0\.1:(\d+) \(node (\d+)\)", started.output)
    assert found, started.output
    bootstrap = f"127.0.0.1:{found.group(1)}"
    assert runner.invoke(main, ["--config", str(path), "start"]).exit_code == 0  # idempotent

    rs.Admin().create_topic("orders")  # 2 partitions: the file's num.partitions
    produce_values(bootstrap, "orders", [b"o%d" % i for i in range(20)], partitions=2)
    assert sorted(consume_values(bootstrap, "orders", 2, 20)) == sorted(b"o%d" % i for i in range(20))

    stopped = runner.invoke(main, ["--config", str(path), "stop"])
    assert stopped.exit_code == 0, stopped.output
    assert not handles.actor_exists(supervisor_name(own_cluster))


def test_a_bad_gateway_section_stops_raystream_start_with_one_line(tmp_path, own_cluster):
    path = tmp_path / "raystream.yaml"
    path.write_text(f"cluster: {own_cluster}\ngateway:\n  port: 70000\n")
    result = CliRunner().invoke(main, ["--config", str(path), "start"])
    assert result.exit_code != 0 and "gateway.port" in result.output and "Traceback" not in result.output
