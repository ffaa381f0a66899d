"""Kafka's framing: every request and response is an int32 big-endian size, then that many bytes.

A request is a request header (api key, api version, correlation id, client id; tagged fields from header
v2, which flexible API versions use) and the API's body; a response is a response header (the correlation
id) and the body. Headers and bodies are read and written with kio, generated from Kafka's JSON message
specs (``clients/src/main/resources/common/message``), so every version's layout, flexible encoding and
tagged fields come from the specs rather than being written here.

Bad input raises :class:`~raystream.errors.InvalidRequestError` (the gateway then closes the connection,
as Kafka's broker does); an API version outside ``supported`` raises
:class:`~raystream.errors.UnsupportedVersionError`. Pure functions, plus :func:`read_frame` on an asyncio
stream; thread-safe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import struct
from collections.abc import Mapping
from typing import Any

from kio.index import KioIndexError, load_request_schema
from kio.serial import entity_reader, entity_writer

from raystream.errors import InvalidRequestError, UnsupportedVersionError

_SIZE = struct.Struct(">i")
_HEADER_START = struct.Struct(">hhi")  # api key, api version, correlation id: the same in every header version
#: Kafka's socket.request.max.bytes default.
SOCKET_REQUEST_MAX_BYTES = 104_857_600


@dataclasses.dataclass(frozen=True)
class Request:
    """One decoded request: header fields and the body (a kio entity of ``api_version``)."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = SOCKET_REQUEST_MAX_BYTES,
                     idle_timeout_s: float | None = None, frame_timeout_s: float | None = None) -> bytes | None:
    """The next frame's bytes (without the size); None at a clean end of stream (between frames).

    ``idle_timeout_s`` bounds the wait for a frame to start (connections.max.idle.ms), ``frame_timeout_s``
    the wait for the rest once it has (so a slow-loris sender cannot hold a connection): either raises
    ``TimeoutError``."""
    try:
        head = await asyncio.wait_for(reader.readexactly(1), idle_timeout_s)
    except asyncio.IncompleteReadError:
        return None  # closed between frames
    try:
        head += await asyncio.wait_for(reader.readexactly(_SIZE.size - 1), frame_timeout_s)
    except asyncio.IncompleteReadError:
        raise InvalidRequestError("connection closed inside a frame's size") from None
    (size,) = _SIZE.unpack(head)
    if size < _HEADER_START.size or size > max_bytes:
        raise InvalidRequestError(f"frame of {size} bytes (allowed: {_HEADER_START.size} to "
                                  f"socket.request.max.bytes={max_bytes})", size=size)
    try:
        return await asyncio.wait_for(reader.readexactly(size), frame_timeout_s)
    except asyncio.IncompleteReadError:
        raise InvalidRequestError(f"connection closed inside a frame of {size} bytes") from None


def peek_header(frame: bytes) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id): readable from any request frame before it is decoded."""
    if len(frame) < _HEADER_START.size:
        raise InvalidRequestError(f"frame of {len(frame)} bytes is shorter than a request header")
    return _HEADER_START.unpack_from(frame, 0)


def parse_request(frame: bytes, supported: Mapping[int, tuple[int, int]]) -> Request:
    """Decode one request frame whose API is in ``supported`` (api key -> (min, max) version)."""
    api_key, api_version, correlation_id = peek_header(frame)
    if api_key not in supported:
        raise InvalidRequestError(f"unknown or unsupported API key {api_key}", api_key=api_key)
    low, high = supported[api_key]
    if not low <= api_version <= high:
        raise UnsupportedVersionError(f"API key {api_key} version {api_version} (supported: {low} to {high})",
                                      api_key=api_key, api_version=api_version, correlation_id=correlation_id)
    try:
        schema = load_request_schema(api_key, api_version)
        header, offset = entity_reader(schema.__header_schema__)(frame, 0)
        body, size = entity_reader(schema)(frame, offset)
    except KioIndexError as exc:
        raise InvalidRequestError(f"API key {api_key} version {api_version}: {exc}") from None
    except Exception as exc:  # kio raises ValueError, IndexError, struct.error, UnicodeDecodeError, ...
        raise InvalidRequestError(f"malformed API key {api_key} v{api_version} request: "
                                  f"{type(exc).__name__}: {exc}") from None
    # Bytes after the body are ignored, as Kafka's broker ignores them: librdkafka's Metadata v12 request
    # for all topics carries three (a tagged-field section kio has already read past).
    return Request(api_key, api_version, correlation_id, getattr(header, "client_id", None), body)


def encode_response(correlation_id: int, body: Any) -> bytes:
    """The response frame (size included) for ``body``, a kio response entity (its class knows its header
    version: ApiVersions always answers with header v0, as Kafka clients expect)."""
    buffer = io.BytesIO()
    buffer.write(b"\0\0\0\0")
    header_schema = type(body).__header_schema__
    entity_writer(header_schema)(buffer, header_schema(correlation_id=correlation_id))
    entity_writer(type(body))(buffer, body)
    data = buffer.getbuffer()
    _SIZE.pack_into(data, 0, len(data) - _SIZE.size)
    return bytes(data)
