"""What a replica's own process carries: it must stay light, since every replica is a process."""

from __future__ import annotations

import sys

import pytest
import ray

import raystream as rs
from raystream.protocol import ACTOR_NAMESPACE, replica_actor_name

pytestmark = pytest.mark.integration


def _pandas_state(replica) -> tuple[bool, bool]:
    """(pandas imported in the replica's process, ``import pandas`` fails there)."""
    def probe(_self):
        try:
            import pandas  # noqa: F401
            importable = True
        except ImportError:
            importable = False
        return "pandas" in sys.modules, not importable
    return ray.get(replica.__ray_call__.remote(probe), timeout=30)


def test_replica_never_imports_pandas_even_after_produce_and_fetch(cluster, topic_name):
    rs.Admin().create_topic(topic_name, partitions=1)
    with rs.Producer(acks=1) as producer:
        producer.send(topic_name, value=b"v", key=b"k", headers={"h": b"1"}).result(timeout=30)
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic_name, 0)])
        assert consumer.poll_arrow(timeout=10).num_rows == 1
    replica = ray.get_actor(replica_actor_name("it", topic_name, 0, 0), namespace=ACTOR_NAMESPACE)
    imported, blocked = _pandas_state(replica)
    assert not imported
    assert blocked
    # ... while the driver (user code) still has pandas: the block is per replica process only.
    import pandas  # noqa: F401
