"""TLS listeners (SSL, SASL_SSL, client certificates) against Kafka clients nobody here wrote, with a
certificate authority made for the test (:mod:`pki`)."""

from __future__ import annotations

import asyncio
import socket
import ssl

import aiokafka
import aiokafka.helpers
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from gateway_runner import RunningGateway
from pki import make_pki
from test_security_sasl import kafka_python_login_and_refusal, librdkafka_auth_error

from raystream.gateway.security import SecurityConfig
from raystream.protocol import TopicPartition


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def _gateway(fake, pki, protocol: str, **tls) -> RunningGateway:
    security = SecurityConfig.from_mapping({
        "protocol": protocol, "tls": {"certfile": pki.server_cert, "keyfile": pki.server_key, **tls},
        "sasl": {"users": {"alice": {"password": "alice-secret"}}}})
    return RunningGateway(fake, request_timeout_ms=5_000, security=security)


@pytest.fixture
def ssl_gateway(fake, pki):
    running = _gateway(fake, pki, "SSL")
    yield running
    running.close()


def test_librdkafka_produces_and_consumes_over_tls(fake, pki, ssl_gateway):
    fake.add_topic("secure")
    config = {"bootstrap.servers": ssl_gateway.bootstrap, "security.protocol": "SSL", "ssl.ca.location": pki.ca}
    producer = Producer(config)
    for i in range(5):
        producer.produce("secure", value=b"v%d" % i)
    assert producer.flush(30) == 0
    consumer = Consumer({**config, "group.id": "g", "enable.auto.commit": False})
    consumer.assign([KafkaTopicPartition("secure", 0, 0)])
    got = []
    for _ in range(100):
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append(message.value())
        if len(got) == 5:
            break
    consumer.close()
    assert got == [b"v%d" % i for i in range(5)]


def test_a_plaintext_client_cannot_talk_to_a_tls_listener(ssl_gateway):
    host, port = ssl_gateway.bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\x00\x00\x00\x0a" + b"\x00\x12\x00\x03\x00\x00\x00\x01\xff\xff")  # ApiVersions, no TLS
        assert sock.recv(4096)[:1] in (b"\x15", b"")  # a TLS alert record, or closed: never a Kafka answer


def test_a_client_that_does_not_trust_the_server_is_refused(fake, ssl_gateway, tmp_path):
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")  # another CA: the gateway's certificate is not signed by it
    context = ssl.create_default_context(cafile=other.ca)
    host, port = ssl_gateway.bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock, pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(sock, server_hostname="localhost")


def test_kafka_python_sasl_ssl_scram(fake, pki, caplog):
    fake.add_topic("secure")
    running = _gateway(fake, pki, "SASL_SSL")
    try:
        options = {"bootstrap_servers": running.bootstrap, "security_protocol": "SASL_SSL", "ssl_cafile": pki.ca,
                   "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "alice"}
        kafka_python_login_and_refusal(options, "secure", caplog)
        assert fake.values(TopicPartition("secure", 0)) == [b"from kafka-python"]
    finally:
        running.close()


def test_librdkafka_and_aiokafka_sasl_ssl_plain(fake, pki):
    fake.add_topic("secure")
    running = _gateway(fake, pki, "SASL_SSL")
    try:
        config = {"bootstrap.servers": running.bootstrap, "security.protocol": "SASL_SSL", "ssl.ca.location": pki.ca,
                  "sasl.mechanism": "PLAIN", "sasl.username": "alice"}
        producer = Producer({**config, "sasl.password": "alice-secret"})
        producer.produce("secure", value=b"librdkafka")
        assert producer.flush(30) == 0
        assert librdkafka_auth_error({**config, "sasl.password": "wrong"}) is not None

        async def produce() -> None:
            client = aiokafka.AIOKafkaProducer(
                bootstrap_servers=running.bootstrap, security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                ssl_context=aiokafka.helpers.create_ssl_context(cafile=pki.ca), sasl_plain_username="alice",
                sasl_plain_password="alice-secret")
            await client.start()
            try:
                await client.send_and_wait("secure", b"aiokafka")
            finally:
                await client.stop()

        asyncio.run(produce())
        assert fake.values(TopicPartition("secure", 0)) == [b"librdkafka", b"aiokafka"]
    finally:
        running.close()


def test_client_certificates_are_required_when_asked(fake, pki):
    fake.add_topic("secure")
    running = _gateway(fake, pki, "SSL", cafile=pki.ca, client_auth="required")
    try:
        config = {"bootstrap.servers": running.bootstrap, "security.protocol": "SSL", "ssl.ca.location": pki.ca}
        producer = Producer({**config, "ssl.certificate.location": pki.client_cert, "ssl.key.location": pki.client_key})
        producer.produce("secure", value=b"with a certificate")
        assert producer.flush(30) == 0
        assert fake.values(TopicPartition("secure", 0)) == [b"with a certificate"]
        context = ssl.create_default_context(cafile=pki.ca)  # no client certificate
        host, port = running.bootstrap.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                # TLS 1.3 reports the missing certificate at the first read rather than in the handshake.
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    tls.sendall(b"\x00\x00\x00\x0a" + b"\x00\x12\x00\x03\x00\x00\x00\x01\xff\xff")
                    if not tls.recv(4096):
                        raise ConnectionResetError("closed")
    finally:
        running.close()
