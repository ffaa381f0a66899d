"""confluent-kafka (librdkafka) round trips through a gateway, for the tests of every suite."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition


def produce_values(bootstrap: str, topic: str, values: list[bytes], partitions: int, **config) -> None:
    """Produce ``values`` round-robin over ``partitions``; asserts every delivery succeeded."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config})
    errors = []
    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=i % partitions, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(60) == 0 and errors == [None] * len(values), errors
    # leaving scope destroys the producer: librdkafka closes its connections before a gateway closes


def consume_values(bootstrap: str, topic: str, partitions: int, count: int, timeout_s: float = 60) -> list[bytes]:
    """Read ``count`` values from the start of ``partitions`` partitions (fewer if ``timeout_s`` passes)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"readers-{topic}", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None:
            assert message.error() is None, message.error()
            got.append(message.value())
    consumer.close()
    return got
