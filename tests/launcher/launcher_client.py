"""A raystream client of a cluster started by ``ray up``, run by ``test_ray_up.py`` as a subprocess.

    RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=... python launcher_client.py HOST:PORT TOPIC

It connects the way docs/deploy.md tells a driver to (``ray.init(address=...)`` with token authentication
from the environment), creates TOPIC, produces keyed records, consumes them back and prints one JSON
object on its last stdout line: what it sent, what it read, the brokers the controller knows, and
which Python and raystream the cluster's workers run.
Every wait has a deadline; the exit code is non-zero on any error.
"""

from __future__ import annotations

import json
import sys
import time

PARTITIONS = 2
RECORDS = 20
READ_DEADLINE_S = 60.0


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data


def main(address: str, topic: str) -> None:
    import ray

    import raystream as rs

    @ray.remote(num_cpus=0)
    def raystream_on_the_cluster() -> dict:
        """Which Python and which raystream the cluster's workers run (a task on the head)."""
        import raystream

        return {"python": sys.executable, "raystream": raystream.__file__}

    ray.init(address=address, log_to_driver=False)
    rs.init()  # joins the raystream cluster that `raystream start` created on the head
    brokers = rs.current().brokers()
    rs.Admin().create_topic(topic, partitions=PARTITIONS, replication_factor=1)
    sent = []
    with rs.Producer(acks="all") as producer:
        futures = [(f"key-{i % 5}", f"value-{i}", producer.send(topic, value=f"value-{i}", key=f"key-{i % 5}"))
                   for i in range(RECORDS)]
        for key, value, future in futures:
            meta = future.result(timeout=30)
            sent.append({"key": key, "value": value, "partition": meta.partition, "offset": meta.offset})
    read = []
    deadline = time.monotonic() + READ_DEADLINE_S
    with rs.Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([rs.TopicPartition(topic, p) for p in range(PARTITIONS)])
        while len(read) < RECORDS and time.monotonic() < deadline:
            for record in consumer.poll(timeout=1.0):
                read.append({"key": _text(record.key), "value": _text(record.value),
                             "partition": record.partition, "offset": record.offset})
    nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
    runs_from = ray.get(raystream_on_the_cluster.remote(), timeout=60)
    rs.shutdown()
    ray.shutdown()
    print(json.dumps({"sent": sent, "read": read, "nodes": nodes,
                      "runs_from": runs_from,
                      "brokers": [{"broker": b, "data_dir": info.data_dir, "alive": info.alive}
                                  for b, info in sorted(brokers.items())]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
