"""raystream: Kafka-like event streaming on Ray, backed by an Arrow segment log.

    import raystream as rs
    rs.init()                                   # embedded local cluster, or join a running one
    rs.Admin().create_topic("orders", partitions=3)
    with rs.Producer() as p:
        p.send("orders", value=b"hello", key=b"k")
"""

__version__ = "0.1.0"

from raystream import errors  # noqa: E402
from raystream.protocol import (  # noqa: E402
    BatchMetadata,
    GroupDescription,
    PartitionInfo,
    Record,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
)


def __getattr__(name: str):
    # Loaded on first use so that `import raystream` stays light: init / shutdown / current import Ray, and
    # every partition replica process imports this package but needs none of the clients.
    if name in ("init", "shutdown", "current"):
        from raystream import api

        return getattr(api, name)
    if name in ("Admin", "Consumer", "Producer"):
        from raystream import client

        return getattr(client, name)
    if name in ("data", "streams"):  # Ray Data integration, stream processing: imported on first use
        import importlib

        return importlib.import_module(f"raystream.{name}")
    raise AttributeError(f"module 'raystream' has no attribute {name!r}")


__all__ = [
    "Admin", "BatchMetadata", "Consumer", "GroupDescription", "PartitionInfo", "Producer", "Record", "RecordMetadata",
    "TopicDescription", "TopicPartition", "current", "data", "errors", "init", "shutdown",
]
