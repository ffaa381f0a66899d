"""The gateway's TCP server: Kafka clients connect here and speak the Kafka protocol.

One asyncio task per connection reads frames and answers them in order, one request at a time, as
Kafka's broker does (it mutes a connection until the response to its request is sent), so a client may
pipeline requests and still gets responses in request order. Connections are independent.

Bad input never takes the server down: a frame that cannot be read (malformed, truncated, larger than
``socket_request_max_bytes``, an unknown API key) closes that connection; an unsupported version of
ApiVersions gets Kafka's UNSUPPORTED_VERSION answer (as version 0, so any client can read it); an
unsupported version of another API closes the connection; a connection idle for
``connections_max_idle_ms`` or silent for ``request_timeout_ms`` inside a frame (slow-loris) is closed.

Concurrency: everything runs on the event loop of the thread that calls :meth:`Gateway.serve` /
:meth:`Gateway.start`; handlers run blocking client calls in threads.
"""

from __future__ import annotations

import asyncio
import logging

from kio.index import load_response_schema
from kio.schema.errors import ErrorCode

from raystream.client.base import BaseTransport
from raystream.client.metadata import MetadataCache
from raystream.errors import InvalidRequestError, UnsupportedVersionError
from raystream.gateway import apis
from raystream.gateway.entities import build
from raystream.gateway.framing import SOCKET_REQUEST_MAX_BYTES, encode_response, parse_request, read_frame

log = logging.getLogger(__name__)


class Gateway:
    """A Kafka-protocol endpoint for one raystream cluster (reached through ``transport``).

    ``host``/``port``: where to listen (port 0: any free port, see :attr:`port`); ``advertised_host`` /
    ``advertised_port``: what Metadata tells clients to connect to (default: the listening address);
    ``node_id``: this gateway's Kafka node id (a per-node gateway's is its node's broker id). ``peers``: the
    other gateways of the cluster, Kafka node id -> advertised (host, port), called on the event loop for each
    Metadata, FindCoordinator and DescribeCluster (so it must return at once); without it this gateway is
    the cluster's only broker (:mod:`raystream.gateway.apis`)."""

    def __init__(self, transport: BaseTransport, host: str = "127.0.0.1", port: int = 9092, *,
                 advertised_host: str | None = None, advertised_port: int | None = None, node_id: int = 0,
                 socket_request_max_bytes: int = SOCKET_REQUEST_MAX_BYTES,
                 connections_max_idle_ms: int = 600_000, request_timeout_ms: int = 30_000,
                 metadata_max_age_ms: int = 300_000, peers: apis.Peers | None = None) -> None:
        self.transport = transport
        self.peers = peers or apis.no_peers
        self.host, self._port = host, port
        self.advertised_host, self.advertised_port = advertised_host, advertised_port
        self.node_id = node_id
        self.socket_request_max_bytes = socket_request_max_bytes
        self.connections_max_idle_s = connections_max_idle_ms / 1000
        self.request_timeout_s = request_timeout_ms / 1000
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._metadata = MetadataCache(transport, request_timeout_ms=request_timeout_ms, retry_backoff_ms=100,
                                       max_age_ms=metadata_max_age_ms)

    @property
    def port(self) -> int:
        """The port listened on (the one chosen when constructed with port 0, once started)."""
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    def context(self) -> apis.GatewayContext:
        return apis.GatewayContext(self.transport, self._metadata, self.node_id, self.advertised_host or self.host,
                                   self.advertised_port or self.port, getattr(self.transport, "cluster", "raystream"),
                                   self.peers)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve_connection, self.host, self._port)
        log.info("Kafka gateway listening on %s:%d", self.host, self.port)

    async def serve(self) -> None:
        """Start (if not started) and serve until cancelled."""
        if self._server is None:
            await self.start()
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        ctx = self.context()
        try:
            while True:
                frame = await self._next_frame(reader)
                if frame is None:
                    break
                response = await self._answer(frame, ctx)
                if response is not None:
                    writer.write(response)
                    await writer.drain()
        except (InvalidRequestError, UnsupportedVersionError, asyncio.TimeoutError) as exc:
            log.info("closing Kafka connection from %s: %s", peer, exc or type(exc).__name__)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # the gateway is closing: end this connection quietly
            pass
        except Exception:  # a handler's bug must not end the server: this connection closes, others go on
            log.exception("closing Kafka connection from %s after an unexpected error", peer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _next_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        return await read_frame(reader, self.socket_request_max_bytes, self.connections_max_idle_s,
                                self.request_timeout_s)

    async def _answer(self, frame: bytes, ctx: apis.GatewayContext) -> bytes | None:
        try:
            request = parse_request(frame, apis.SUPPORTED)
        except UnsupportedVersionError as exc:
            if exc.api_key != apis.API_VERSIONS:
                raise
            # Kafka answers an ApiVersions request it does not know with version 0 and its versions.
            body = build(load_response_schema(apis.API_VERSIONS, 0),
                         apis.api_versions_values(ErrorCode.unsupported_version))
            return encode_response(exc.correlation_id, body)
        body = await apis.handle(request, ctx)
        return None if body is None else encode_response(request.correlation_id, body)

