"""confluent-kafka (librdkafka, a Kafka client written in C by others) against the gateway, in front of
the in-process fake cluster: an idempotent, gzip-compressing producer and a consumer of what it wrote."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition

from raystream.protocol import TopicPartition as RaystreamTopicPartition


def test_librdkafka_produces_idempotently_and_consumes(fake, gateway):
    fake.add_topic("clicks", partitions=2)
    producer = Producer({"bootstrap.servers": gateway.bootstrap, "linger.ms": 5, "enable.idempotence": True,
                         "compression.type": "gzip"})
    delivered = []
    for i in range(40):
        producer.produce("clicks", key=b"k%d" % i, value=b"v%d" % i, partition=i % 2, headers=[("n", b"%d" % i)],
                         timestamp=1_700_000_000_000 + i,
                         on_delivery=lambda err, msg: delivered.append((err, msg.partition(), msg.offset())))
    assert producer.flush(30) == 0
    assert all(err is None for err, _, _ in delivered)
    assert sorted((p, o) for _, p, o in delivered) == sorted((p, o) for p in range(2) for o in range(20))
    assert fake.values(RaystreamTopicPartition("clicks", 1)) == [b"v%d" % i for i in range(1, 40, 2)]

    consumer = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": "readers",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition("clicks", 0, 0)])
    got, deadline = [], time.monotonic() + 30
    while len(got) < 20 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None:
            assert message.error() is None, message.error()
            got.append((message.offset(), message.key(), message.value(), message.headers(), message.timestamp()[1]))
    consumer.close()
    assert got == [(j, b"k%d" % (2 * j), b"v%d" % (2 * j), [("n", b"%d" % (2 * j))], 1_700_000_000_000 + 2 * j)
                   for j in range(20)]


def test_librdkafka_lists_every_topic(fake, gateway):
    # librdkafka's Metadata v12 for all topics ends with bytes after its body, which Kafka's broker ignores.
    from confluent_kafka.admin import AdminClient

    fake.add_topic("clicks", partitions=2)
    fake.add_topic("views", partitions=1)
    metadata = AdminClient({"bootstrap.servers": gateway.bootstrap}).list_topics(timeout=15)
    assert sorted(metadata.topics) == ["clicks", "views"]
    assert sorted(metadata.topics["clicks"].partitions) == [0, 1]
