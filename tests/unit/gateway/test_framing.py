"""Kafka framing and request headers: what kio encodes parses back; bad frames raise typed errors only."""

from __future__ import annotations

import asyncio
import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.request_header.v2.header import RequestHeader
from kio.serial import entity_writer

from raystream.errors import InvalidRequestError, UnsupportedVersionError
from raystream.gateway.apis import SUPPORTED
from raystream.gateway.framing import encode_response, parse_request, read_frame


def metadata_frame(correlation_id: int = 7, version: int = 12) -> bytes:
    buffer = io.BytesIO()
    entity_writer(RequestHeader)(buffer, RequestHeader(request_api_key=3, request_api_version=version,
                                                       correlation_id=correlation_id, client_id="tester"))
    entity_writer(MetadataRequest)(buffer, MetadataRequest(
        topics=(MetadataRequestTopic(topic_id=None, name="clicks"),), allow_auto_topic_creation=False,
        include_topic_authorized_operations=False))
    return buffer.getvalue()


def test_a_request_kio_encodes_parses_back_with_its_header():
    request = parse_request(metadata_frame(), SUPPORTED)
    assert (request.api_key, request.api_version, request.correlation_id, request.client_id) == (3, 12, 7, "tester")
    assert [t.name for t in request.body.topics] == ["clicks"]


def test_unknown_keys_and_unsupported_versions_are_refused_and_trailing_bytes_ignored():
    frame = metadata_frame()
    with pytest.raises(InvalidRequestError, match="API key 999"):
        parse_request(struct.pack(">hhi", 999, 0, 1) + frame[8:], SUPPORTED)
    with pytest.raises(UnsupportedVersionError) as info:
        parse_request(struct.pack(">hhi", 3, 99, 5) + frame[8:], SUPPORTED)
    assert info.value.correlation_id == 5
    # As Kafka's broker: what follows a whole body is ignored (librdkafka's Metadata v12 for all topics).
    assert [t.name for t in parse_request(frame + b"\x01\x00\x00", SUPPORTED).body.topics] == ["clicks"]
    with pytest.raises(InvalidRequestError):
        parse_request(frame[:-3], SUPPORTED)


def test_a_response_frame_is_size_prefixed_with_the_correlation_id():
    import datetime

    from kio.schema.api_versions.v3.response import ApiVersionsResponse
    from kio.schema.errors import ErrorCode
    frame = encode_response(42, ApiVersionsResponse(error_code=ErrorCode.none, api_keys=(),
                                                    throttle_time=datetime.timedelta(0)))
    (size, correlation_id) = struct.unpack_from(">ii", frame)
    assert size == len(frame) - 4 and correlation_id == 42  # ApiVersions answers with header v0


def _read(data: bytes, max_bytes: int = 1000):
    async def run():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader, max_bytes, 1, 1)
    return asyncio.run(run())


def test_read_frame_bounds_and_truncation():
    assert _read(b"") is None  # closed between frames
    assert _read(struct.pack(">i", 10) + b"x" * 10) == b"x" * 10
    for bad in (struct.pack(">i", 5000) + b"x", struct.pack(">i", -1), struct.pack(">i", 10) + b"short", b"\0\0"):
        with pytest.raises(InvalidRequestError):
            _read(bad)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 40), st.integers(-2, 40))
def test_arbitrary_frames_raise_only_request_errors(noise, api_key, version):
    frame = struct.pack(">hhi", api_key, version, 1) + noise
    for data in (noise, frame, metadata_frame()[:len(noise)]):
        try:
            parse_request(data, SUPPORTED)
        except (InvalidRequestError, UnsupportedVersionError):
            pass
