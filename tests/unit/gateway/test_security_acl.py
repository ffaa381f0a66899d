"""ACLs enforced by the gateway, seen by Kafka clients nobody here wrote (librdkafka, kafka-python): write
without read, default deny, prefixed patterns, deny winning, group authorization, Metadata filtering,
admin APIs, and a client certificate's subject as the principal."""

from __future__ import annotations

import time

import kafka
import kafka.admin
import kafka.errors
import kafka.structs
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from gateway_runner import RunningGateway
from pki import make_pki
from test_aiokafka import GroupOffsetsFake

from raystream.gateway import access, apis
from raystream.gateway.security import SecurityConfig
from raystream.protocol import TopicPartition

USERS = {name: {"password": f"{name}-pw"} for name in ("writer", "reader", "admin", "other")}
ACLS = [
    {"principal": "User:writer", "operation": "Write", "resource_type": "topic", "resource_name": "orders"},
    {"principal": "User:reader", "operation": "Read", "resource_type": "topic", "resource_name": "metrics.",
     "pattern_type": "prefixed"},
    {"principal": "User:reader", "operation": "Read", "resource_type": "topic", "resource_name": "metrics.secret",
     "permission": "deny"},
    {"principal": "User:reader", "operation": "Read", "resource_type": "group", "resource_name": "readers",
     "pattern_type": "prefixed"},
    {"principal": "User:*", "operation": "Read", "resource_type": "group", "resource_name": "shared-",
     "pattern_type": "prefixed"},  # everyone's group
]


@pytest.fixture
def fake():  # the gateway in front of the fake cluster, with group offsets
    return GroupOffsetsFake()


@pytest.fixture
def acl_gateway(fake):
    for name in ("orders", "metrics.cpu", "metrics.secret", "payments"):
        fake.add_topic(name)
    security = SecurityConfig.from_mapping({"protocol": "SASL_PLAINTEXT", "sasl": {"users": USERS},
                                            "authorization": {"acls": ACLS, "super_users": ["User:admin"]}})
    running = RunningGateway(fake, request_timeout_ms=5_000, security=security)
    yield running
    running.close()


def _config(gateway: RunningGateway, user: str) -> dict:
    return {"bootstrap.servers": gateway.bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN", "sasl.username": user, "sasl.password": f"{user}-pw"}


def _produce(config: dict, topic: str) -> KafkaError | None:
    results = []
    producer = Producer({**config, "message.timeout.ms": 10_000})
    producer.produce(topic, value=b"x", on_delivery=lambda err, msg: results.append(err))
    producer.flush(30)
    return results[0]


def _first_fetch_error(config: dict, topic: str, group: str = "shared-1") -> KafkaError | None:
    """The first message error of a consumer assigned ``topic``-0 (None: it read a record)."""
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([KafkaTopicPartition(topic, 0, 0)])
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                return message.error()
        raise AssertionError("no record and no error within 20 s")
    finally:
        consumer.close()


def test_a_writer_may_produce_but_not_consume(fake, acl_gateway):
    config = _config(acl_gateway, "writer")
    assert _produce(config, "orders") is None
    assert fake.values(TopicPartition("orders", 0)) == [b"x"]
    assert _first_fetch_error(config, "orders").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_default_deny_and_metadata_lists_only_described_topics(fake, acl_gateway):
    assert _produce(_config(acl_gateway, "other"), "orders").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert fake.values(TopicPartition("orders", 0)) == []
    listing = kafka.admin.KafkaAdminClient(bootstrap_servers=acl_gateway.bootstrap, security_protocol="SASL_PLAINTEXT",
                                           sasl_mechanism="PLAIN", sasl_plain_username="reader",
                                           sasl_plain_password="reader-pw")
    try:
        # Read implies Describe: both metrics topics are listed (the deny is of Read, not of Describe).
        assert sorted(listing.list_topics()) == ["metrics.cpu", "metrics.secret"]
    finally:
        listing.close()
    super_user = kafka.admin.KafkaAdminClient(bootstrap_servers=acl_gateway.bootstrap,
                                              security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                                              sasl_plain_username="admin", sasl_plain_password="admin-pw")
    try:
        assert sorted(super_user.list_topics()) == ["metrics.cpu", "metrics.secret", "orders", "payments"]
    finally:
        super_user.close()


def test_prefixed_allow_deny_wins_and_group_authorization(fake, acl_gateway):
    assert _produce(_config(acl_gateway, "admin"), "metrics.cpu") is None
    assert _produce(_config(acl_gateway, "admin"), "metrics.secret") is None
    reader = _config(acl_gateway, "reader")
    assert _first_fetch_error(reader, "metrics.cpu") is None  # the prefixed allow
    assert _first_fetch_error(reader, "metrics.secret").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED  # deny wins
    assert _produce(reader, "metrics.cpu").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED  # Read is not Write

    # Groups: the fake cluster serves offsets (no membership), so commits of an assigned consumer show them.
    committed = KafkaTopicPartition("metrics.cpu", 0, 1)
    consumer = Consumer({**reader, "group.id": "readers-app", "enable.auto.commit": False})
    assert consumer.commit(offsets=[committed], asynchronous=False)[0].error is None
    assert consumer.committed([KafkaTopicPartition("metrics.cpu", 0)], timeout=10)[0].offset == 1
    consumer.close()
    assert fake.committed["readers-app"] == {TopicPartition("metrics.cpu", 0): (1, "")}
    denied = kafka.KafkaConsumer(bootstrap_servers=acl_gateway.bootstrap, security_protocol="SASL_PLAINTEXT",
                                 sasl_mechanism="PLAIN", sasl_plain_username="reader", sasl_plain_password="reader-pw",
                                 group_id="elsewhere", enable_auto_commit=False)
    denied.assign([kafka.TopicPartition("metrics.cpu", 0)])
    with pytest.raises(kafka.errors.GroupAuthorizationFailedError):
        denied.commit({kafka.TopicPartition("metrics.cpu", 0): kafka.structs.OffsetAndMetadata(1, "", -1)})
    denied.close()
    assert "elsewhere" not in fake.committed


def test_admin_apis_need_their_operations(fake, acl_gateway):
    options = {"bootstrap_servers": acl_gateway.bootstrap, "security_protocol": "SASL_PLAINTEXT",
               "sasl_mechanism": "PLAIN"}
    writer = kafka.admin.KafkaAdminClient(**options, sasl_plain_username="writer", sasl_plain_password="writer-pw")
    try:
        with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
            writer.create_topics([kafka.admin.NewTopic("new-topic", 1, 1)])
        with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
            writer.delete_topics(["orders"])
    finally:
        writer.close()
    admin = kafka.admin.KafkaAdminClient(**options, sasl_plain_username="admin", sasl_plain_password="admin-pw")
    try:
        admin.create_topics([kafka.admin.NewTopic("new-topic", 1, 1)])
    finally:
        admin.close()
    assert "new-topic" in fake.list_topics()


def test_a_client_certificate_subject_is_the_principal(fake, tmp_path):
    pki = make_pki(tmp_path, client_cn="cert-writer")
    fake.add_topic("orders")
    security = SecurityConfig.from_mapping({
        "protocol": "SSL", "tls": {"certfile": pki.server_cert, "keyfile": pki.server_key, "cafile": pki.ca,
                                   "client_auth": "requested", "principal": "cn"},
        "authorization": {"acls": [{"principal": "User:cert-writer", "operation": "Write", "resource_type": "topic",
                                    "resource_name": "orders"}]}})
    running = RunningGateway(fake, request_timeout_ms=5_000, security=security)
    try:
        config = {"bootstrap.servers": running.bootstrap, "security.protocol": "SSL", "ssl.ca.location": pki.ca}
        assert _produce(config, "orders").code() == KafkaError.TOPIC_AUTHORIZATION_FAILED  # User:ANONYMOUS
        assert _produce({**config, "ssl.certificate.location": pki.client_cert,
                         "ssl.key.location": pki.client_key}, "orders") is None
        assert fake.values(TopicPartition("orders", 0)) == [b"x"]
    finally:
        running.close()


def test_every_served_api_has_an_authorization_rule():
    assert set(apis.HANDLERS) <= set(access.RULES), sorted(set(apis.HANDLERS) - set(access.RULES))
