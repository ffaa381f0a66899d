"""The broker agent: one small actor per (raystream cluster, Ray node) that makes its node a broker.

The controller creates it (``get_if_exists``; detached, ``num_cpus=0``, pinned to its node with a hard
``NodeAffinitySchedulingStrategy``, never restarted: a dead node's agent is gone for good, and a node that
comes back is a new Ray node with a new agent) and calls :meth:`BrokerAgent.register`. The first call
claims a broker directory under the node's root ``<RAYSTREAM_DATA_DIR or the cluster's data_dir>/<cluster>/``
(:func:`raystream.storage.broker_dirs.claim_broker_directory`) and holds its ``.lock`` for the agent's
lifetime, so no other node sharing that root (several nodes on one machine, NFS/EFS) can be the same broker
or write into its partition logs. Its partition replicas keep their logs in that directory.

Concurrency contract: a synchronous actor, so its methods run one at a time; the claim happens once, and
every later :meth:`register` returns the same answer whatever id it proposes. The controller proposes
distinct ids to the agents it registers at once. Killing the agent (``raystream stop``) releases the lock
when its process exits; the next agent on the same node waits, bounded, for that.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

from raystream.actors import logs
from raystream.storage.broker_dirs import BrokerDirectory, claim_broker_directory

log = logging.getLogger(__name__)


class BrokerAgent:
    def __init__(self, cluster: str, default_data_dir: str) -> None:
        logs.configure()
        self.cluster = cluster
        self.data_dir = os.environ.get("RAYSTREAM_DATA_DIR") or default_data_dir
        self.node_id = ray.get_runtime_context().get_node_id()
        self._claimed: BrokerDirectory | None = None

    def register(self, proposed_id: int) -> tuple[int, str, str]:
        """(broker id, the node's data dir, the broker's log dir); claims the directory on the first call."""
        if self._claimed is None:
            root = Path(self.data_dir) / self.cluster
            self._claimed = claim_broker_directory(root, self.cluster, proposed_id, owner=self.node_id)
            log.info("node %s is broker %d (log dir %s)", self.node_id, self._claimed.broker_id,
                     self._claimed.log_dir)
        return self._claimed.broker_id, self.data_dir, str(self._claimed.log_dir)

    def ping(self) -> str:
        return self.node_id
