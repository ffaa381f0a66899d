"""SASL/PLAIN and SCRAM-SHA-256/512 against the gateway with Kafka clients nobody here wrote (librdkafka,
kafka-python, aiokafka): the right password is served, a wrong one is refused with
SASL_AUTHENTICATION_FAILED and the connection closed, and nothing but ApiVersions/SaslHandshake/
SaslAuthenticate is served before authentication."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import aiokafka
import kafka
import kafka.errors
import pytest
from confluent_kafka import KafkaError, Producer
from gateway_runner import RunningGateway

from raystream.gateway.sasl import scram_credential
from raystream.gateway.security import SecurityConfig
from raystream.protocol import TopicPartition

USERS = {
    "alice": {"password": "alice-secret"},  # PLAIN, and SCRAM from the password
    "bob": {"SCRAM-SHA-256": scram_credential("bob-secret", "SCRAM-SHA-256").to_mapping(),
            "SCRAM-SHA-512": scram_credential("bob-secret", "SCRAM-SHA-512", iterations=8192).to_mapping()},
}


@pytest.fixture
def sasl_gateway(fake):
    security = SecurityConfig.from_mapping({"protocol": "SASL_PLAINTEXT", "sasl": {"users": USERS}})
    running = RunningGateway(fake, request_timeout_ms=5_000, security=security)
    yield running
    running.close()


def _librdkafka(bootstrap: str, mechanism: str, user: str, password: str) -> dict:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": user, "sasl.password": password}


@pytest.mark.parametrize(("mechanism", "user", "password"), [
    ("PLAIN", "alice", "alice-secret"), ("SCRAM-SHA-256", "alice", "alice-secret"),
    ("SCRAM-SHA-256", "bob", "bob-secret"), ("SCRAM-SHA-512", "bob", "bob-secret")])
def test_librdkafka_authenticates_and_produces(fake, sasl_gateway, mechanism, user, password):
    fake.add_topic("events")
    producer = Producer({**_librdkafka(sasl_gateway.bootstrap, mechanism, user, password), "acks": "all"})
    failures = []
    producer.produce("events", value=b"hello", on_delivery=lambda err, msg: failures.append(err))
    assert producer.flush(30) == 0
    assert failures == [None]
    assert fake.values(TopicPartition("events", 0)) == [b"hello"]


@pytest.mark.parametrize(("mechanism", "user", "password"), [
    ("PLAIN", "alice", "wrong"), ("PLAIN", "bob", "bob-secret"),  # bob has no PLAIN password
    ("SCRAM-SHA-256", "alice", "wrong"), ("SCRAM-SHA-512", "bob", "wrong"), ("SCRAM-SHA-256", "eve", "x")])
def test_librdkafka_is_refused_with_a_wrong_password(sasl_gateway, mechanism, user, password):
    assert librdkafka_auth_error(_librdkafka(sasl_gateway.bootstrap, mechanism, user, password)) is not None


def librdkafka_auth_error(config: dict, wait_s: float = 20) -> KafkaError | None:
    """The authentication error librdkafka reports through ``error_cb`` (None if none within ``wait_s``)."""
    errors: list[KafkaError] = []
    producer = Producer({**config, "error_cb": errors.append, "log_level": 0, "reconnect.backoff.ms": 1000})
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not any(e.code() == KafkaError._AUTHENTICATION for e in errors):
        producer.poll(0.2)
    found = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    return found[0] if found else None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_python_authenticates_and_a_wrong_password_is_refused(fake, sasl_gateway, mechanism, caplog):
    fake.add_topic("events")
    options = {"bootstrap_servers": sasl_gateway.bootstrap, "security_protocol": "SASL_PLAINTEXT",
               "sasl_mechanism": mechanism, "sasl_plain_username": "alice"}
    kafka_python_login_and_refusal(options, "events", caplog)
    assert fake.values(TopicPartition("events", 0)) == [b"from kafka-python"]


def kafka_python_login_and_refusal(options: dict, topic: str, caplog) -> None:
    """kafka-python sends one record with password alice-secret, and is refused with a wrong one."""
    producer = kafka.KafkaProducer(**options, sasl_plain_password="alice-secret")
    producer.send(topic, b"from kafka-python").get(timeout=30)
    producer.close()
    # kafka-python retries the bootstrap until its timeout, logging each refusal.
    with pytest.raises(kafka.errors.KafkaTimeoutError):
        kafka.KafkaProducer(**options, sasl_plain_password="wrong", bootstrap_timeout_ms=3_000,
                            reconnect_backoff_max_ms=500)
    assert "SaslAuthenticationFailedError" in caplog.text


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_aiokafka_authenticates_and_a_wrong_password_is_refused(fake, sasl_gateway, mechanism):
    fake.add_topic("events")

    async def produce(password: str) -> None:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=sasl_gateway.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
            sasl_plain_username="alice", sasl_plain_password=password, request_timeout_ms=10_000)
        try:
            await producer.start()
            await producer.send_and_wait("events", b"from aiokafka")
        finally:
            await producer.stop()

    asyncio.run(produce("alice-secret"))
    assert fake.values(TopicPartition("events", 0)) == [b"from aiokafka"]
    with pytest.raises(Exception) as refused:  # aiokafka wraps it: KafkaConnectionError, or the SASL error
        asyncio.run(produce("wrong"))
    assert "Authentication failed" in repr(refused.value) or "SaslAuthentication" in repr(refused.value) or \
        "Unable to bootstrap" in str(refused.value), repr(refused.value)


def test_a_request_before_authentication_closes_the_connection(fake, sasl_gateway):
    fake.add_topic("events")
    host, port = sasl_gateway.bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # Metadata v1 (all topics): header (api key 3, version 1, correlation id 7, no client id), topics null.
        body = struct.pack(">hhih", 3, 1, 7, -1) + struct.pack(">i", -1)
        sock.sendall(struct.pack(">i", len(body)) + body)
        assert sock.recv(4) == b""  # closed without an answer
