"""Fuzzing the gateway over TCP: malformed, truncated and mis-sized frames, random API keys and versions,
random bytes after a valid header, and mutated valid requests (a Produce among them) go to a running
gateway in front of the fake cluster. After every example the gateway has ended the fuzzed connection,
still answers ApiVersions on a fresh one, and the cluster holds only whole batches (never a half-decoded
one). Every socket has a timeout, so a gateway that stopped answering fails the test instead of hanging it.
"""

from __future__ import annotations

import datetime
import io
import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.serial import entity_writer
from test_kafka_python import _call
from test_records import RECORDS, kafka_python_batch

from raystream.protocol import TopicPartition

SOCKET_TIMEOUT_S = 5.0
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALUES = [r[1] for r in RECORDS]


def request_bytes(request, version: int, correlation_id: int = 9) -> bytes:
    """A request (header and body, without the size prefix) as kio writes it."""
    header_cls = type(request).__header_schema__
    buffer = io.BytesIO()
    entity_writer(header_cls)(buffer, header_cls(request_api_key=type(request).__api_key__,
                                                 request_api_version=version, correlation_id=correlation_id,
                                                 client_id="fuzz"))
    entity_writer(type(request))(buffer, request)
    return buffer.getvalue()


VALID = [
    request_bytes(ApiVersionsRequest(client_software_name="fuzz", client_software_version="1"), 3),
    request_bytes(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="clicks"),),
                                  allow_auto_topic_creation=False, include_topic_authorized_operations=False), 12),
    request_bytes(ProduceRequest(transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=5),
                                 topic_data=(TopicProduceData(name="clicks", partition_data=(
                                     PartitionProduceData(index=0, records=kafka_python_batch(RECORDS, 1)),)),)),
                  9),
]


def framed(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


def send_and_close(gateway, payload: bytes) -> None:
    """Send ``payload`` on a new connection, end the sending side, and read until the gateway ends it."""
    with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=SOCKET_TIMEOUT_S) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # the gateway closed first, with our bytes unread


def assert_still_serving(gateway, fake) -> None:
    answer = _call(gateway, ApiVersionsRequest(client_software_name="check", client_software_version="1"), 3)
    assert answer.error_code == 0
    assert {0, 1, 3, 18} <= {k.api_key for k in answer.api_keys}
    # Only whole batches were ever appended: each produce carried every record of the batch.
    produced = [c for c in fake.calls if c[0] == "produce"]
    assert all(c[3] == len(RECORDS) for c in produced)
    assert fake.values(TopicPartition("clicks", 0)) == VALUES * len(produced)


HEADER_THEN_NOISE = st.builds(
    lambda key, version, correlation, client, noise: framed(
        struct.pack(">hhih", key, version, correlation, len(client)) + client + noise),
    st.integers(-1, 80) | st.integers(-2**15, 2**15 - 1), st.integers(-1, 16) | st.integers(-2**15, 2**15 - 1),
    st.integers(-2**31, 2**31 - 1), st.binary(max_size=12), st.binary(max_size=80))
WRONG_SIZE = st.builds(lambda size, body: struct.pack(">i", size) + body,
                       st.integers(-2**31, 2**31 - 1) | st.integers(-4, 64), st.binary(max_size=80))


@st.composite
def mutated_valid(draw) -> bytes:
    body = draw(st.sampled_from(VALID))
    how = draw(st.sampled_from(["intact", "truncate", "truncate-framed", "flip", "append", "resize"]))
    cut = draw(st.integers(0, len(body)))
    if how == "intact":  # so that whole Produce requests land between the broken ones
        return framed(body)
    if how == "truncate":  # the size says more than arrives
        return framed(body)[:4 + cut]
    if how == "truncate-framed":  # a complete frame of a request cut short
        return framed(body[:cut])
    if how == "flip":
        position = draw(st.integers(0, len(body) - 1))
        flipped = bytes([body[position] ^ draw(st.integers(1, 255))])
        return framed(body[:position] + flipped + body[position + 1:])
    if how == "append":
        return framed(body + draw(st.binary(min_size=1, max_size=40)))
    return struct.pack(">i", len(body) + draw(st.integers(-len(body), 64))) + body  # a wrong size prefix


@FUZZ
@given(payload=st.binary(max_size=120) | WRONG_SIZE | HEADER_THEN_NOISE)
def test_malformed_frames_leave_the_gateway_serving(fake, gateway, payload):
    if "clicks" not in fake.topics:
        fake.add_topic("clicks", partitions=1)
    send_and_close(gateway, payload)
    assert_still_serving(gateway, fake)


@FUZZ
@given(payload=mutated_valid(), prefix=st.sampled_from([b"", framed(VALID[0])]))
def test_mutated_requests_write_whole_batches_or_nothing(fake, gateway, payload, prefix):
    # prefix: a valid ApiVersions request first, so the bad frame follows an answered one on its connection.
    if "clicks" not in fake.topics:
        fake.add_topic("clicks", partitions=1)
    send_and_close(gateway, prefix + payload)
    assert_still_serving(gateway, fake)


def test_a_valid_frame_then_garbage_is_answered_then_closed(fake, gateway):
    fake.add_topic("clicks", partitions=1)
    with socket.create_connection(("127.0.0.1", gateway.gateway.port), timeout=SOCKET_TIMEOUT_S) as s:
        s.sendall(framed(VALID[0]) + framed(b"\x00\x12\x00\x03garbage"))
        size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
        answer = s.recv(size, socket.MSG_WAITALL)
        assert struct.unpack_from(">i", answer)[0] == 9  # ApiVersions' correlation id
        assert s.recv(1) == b""  # then the gateway closes the connection
    assert_still_serving(gateway, fake)
