"""Shared set-up of the fault suites: a multi-node ``ray.cluster_utils.Cluster`` on one machine, each node
with its own raystream data directory (``RAYSTREAM_DATA_DIR``), this process connected to it."""

from __future__ import annotations

import contextlib

import ray


@contextlib.contextmanager
def multi_node_ray(tmp_path_factory, nodes: int, prefix: str):
    """Yield ``(cluster, data_dirs)`` for ``nodes`` nodes (the head first); everything is shut down after."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # a previous module's Ray must not leak into this one
        ray.shutdown()
    dirs = [str(tmp_path_factory.mktemp(f"{prefix}{i}")) for i in range(nodes)]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "env_vars": {"RAYSTREAM_DATA_DIR": dirs[0]}})
    try:
        for d in dirs[1:]:
            cluster.add_node(num_cpus=1, env_vars={"RAYSTREAM_DATA_DIR": d})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, dirs
    finally:
        ray.shutdown()
        cluster.shutdown()
