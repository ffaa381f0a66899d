"""The cluster defaults file end to end: ``rs.init(config=...)``, ``RAYSTREAM_CONFIG`` and ``raystream
--config`` on the shared local Ray (each test runs a raystream cluster of its own next to the shared one,
as a new controller takes the file's settings only when it is created, then stops it)."""

from __future__ import annotations

import json
import uuid

import pytest
import ray
from click.testing import CliRunner

import raystream as rs
from raystream import api, cluster_config
from raystream.cli import main
from raystream.protocol import ACTOR_NAMESPACE, controller_actor_name

pytestmark = pytest.mark.integration


@pytest.fixture
def own_clusters(cluster, monkeypatch):
    """Names of the raystream clusters a test starts: stopped afterwards, the shared one current again."""
    monkeypatch.delenv(cluster_config.ENV_VAR, raising=False)
    started: list[tuple[str, str]] = []
    yield started
    for name, data_dir in started:
        try:
            controller = ray.get_actor(controller_actor_name(name), namespace=ACTOR_NAMESPACE)
        except ValueError:  # never created, or stopped by the test
            continue
        try:
            api.stop(api.ClusterHandle(name, data_dir, controller, started_ray=False))
        except ray.exceptions.RayActorError:  # stopped (or never started) a moment ago
            pass
    rs.init(cluster=cluster.cluster, data_dir=cluster.data_dir)


def write_config(tmp_path, name: str, extra: str = "") -> str:
    path = tmp_path / "raystream.yaml"
    path.write_text(f"cluster: {name}\ndata_dir: data\nbroker:\n  replica.lag.time.max.ms: 4000\n"
                    f"  group.initial.rebalance.delay.ms: 100\n{extra}")
    return str(path)


def controller_broker_config(handle) -> dict:
    return ray.get(handle.controller.__ray_call__.remote(lambda self: dict(vars(self.broker_config))))


def test_init_and_cli_take_cluster_data_dir_and_broker_settings_from_the_file(tmp_path, own_clusters):
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path, name)
    own_clusters.append((name, str(tmp_path / "data")))
    handle = rs.init(config=path, broker_config={"replica_session_timeout_ms": 2000})
    assert (handle.cluster, handle.data_dir) == (name, str(tmp_path / "data"))
    broker = controller_broker_config(handle)
    assert broker["replica_lag_time_max_ms"] == 4000  # the file's
    assert broker["replica_session_timeout_ms"] == 2000  # init's broker_config wins over the file
    assert broker["num_partitions"] == 1  # neither: Kafka's default

    # the CLI finds the same cluster through RAYSTREAM_CONFIG alone (cluster name and data dir from the file)
    status = CliRunner(env={cluster_config.ENV_VAR: path}).invoke(main, ["status", "--json"])
    assert status.exit_code == 0, status.output
    assert (json.loads(status.stdout)["cluster"], json.loads(status.stdout)["data_dir"]) == (
        name, str(tmp_path / "data"))


def test_topic_defaults_from_the_file_apply_to_topics_created_without_them(tmp_path, own_clusters):
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path, name, "  num.partitions: 2\n  default.replication.factor: 1\n"
                                        "topic_defaults:\n  retention.ms: 3600000\n  flush.messages: 1000\n")
    own_clusters.append((name, str(tmp_path / "data")))
    runner = CliRunner()
    started = runner.invoke(main, ["--config", path, "start"])
    assert started.exit_code == 0 and f"defaults from {tmp_path / 'raystream.yaml'}" in started.output, \
        started.output
    assert runner.invoke(main, ["--config", path, "topics", "create", "plain"]).exit_code == 0
    created = runner.invoke(main, ["--config", path, "topics", "create", "own", "--partitions", "1",
                                   "--config", "retention.ms=60000"])
    assert created.exit_code == 0, created.output

    def described(topic):
        result = runner.invoke(main, ["--config", path, "topics", "describe", topic, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    plain, own = described("plain"), described("own")
    assert len(plain["partitions"]) == 2 and len(plain["partitions"][0]["replicas"]) == 1  # the file's
    assert (plain["config"]["retention.ms"], plain["config"]["flush.messages"]) == (3600000, 1000)
    assert len(own["partitions"]) == 1
    assert (own["config"]["retention.ms"], own["config"]["flush.messages"]) == (60000, 1000)  # its own wins
    assert own["config"]["segment.bytes"] == 1 << 30  # in neither: Kafka's default

    # the Python API on the same cluster, through the environment variable
    handle = rs.init(config=path)
    assert handle.cluster == name
    admin = rs.Admin()
    admin.create_topic("api-plain", partitions=1)
    admin.create_topic("api-own", partitions=1, config={"flush.messages": 5})
    assert admin.describe_topic("api-plain").config["flush.messages"] == 1000
    assert admin.describe_topic("api-own").config["flush.messages"] == 5
    assert admin.describe_topic("api-own").config["retention.ms"] == 3600000
    with rs.Producer() as producer:  # a replica created with the defaults serves records
        assert producer.send("plain", value=b"x", partition=1).result(30).offset == 0
    assert runner.invoke(main, ["--config", path, "stop"]).exit_code == 0
