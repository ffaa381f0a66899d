"""One shared local Ray (and one raystream cluster) for the whole integration session."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    import ray

    import raystream as rs

    if ray.is_initialized():  # a fault test's private cluster must not leak into this session
        ray.shutdown()
    # Metrics reach Ray's Prometheus endpoint every metrics_report_interval_ms (10 s by default; Ray floors it
    # at 1 s): tests/integration/test_metrics.py reads them back without waiting 10 s per value.
    # address="local": always a Ray of this session's own, never one already running on the machine (a
    # `ray start` or another test run's cluster), which would be shared, or refuse num_cpus.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _system_config={"metrics_report_interval_ms": 1000})
    data_dir = tmp_path_factory.mktemp("raystream-data")
    handle = rs.init(data_dir=str(data_dir), cluster="it",
                     broker_config={"replica.lag.time.max.ms": 3000,
                                            "group.initial.rebalance.delay.ms": 100,
                                            "metrics.group.lag.interval.ms": 500})
    yield handle
    rs.shutdown(stop_cluster=True)
    ray.shutdown()


@pytest.fixture
def topic_name():
    return f"t-{uuid.uuid4().hex[:10]}"



@pytest.fixture(autouse=True)
def _delete_topics_created_by_the_test(request):
    """Delete, after each test on the shared cluster, the topics it created. Every replica is an actor with
    its own process (heartbeats, metrics every second): left alive, a session's hundreds of idle replicas
    would keep 2 cores busy and slow every later test down."""
    if "cluster" not in request.fixturenames:
        yield
        return
    import ray

    import raystream as rs

    request.getfixturevalue("cluster")
    before = set(rs.Admin().list_topics())
    yield
    if not ray.is_initialized():
        return
    try:
        admin = rs.Admin()
        for name in sorted(set(admin.list_topics()) - before):
            admin.delete_topic(name)
    except Exception as exc:  # noqa: BLE001 - a test that stopped or left the cluster: nothing to clean
        import warnings

        warnings.warn(f"could not delete the test's topics: {exc!r}", stacklevel=1)


@pytest.fixture
def gateway(cluster):
    """A Kafka gateway (raystream.gateway) on a free loopback port, in front of the shared cluster."""
    from gateway_runner import RunningGateway

    from raystream.client import context

    running = RunningGateway(context.get_current())
    yield running
    running.close()
