"""The gateway's TCP server: Kafka clients connect here and speak the Kafka protocol.

One asyncio task per connection reads frames and a second writes the answers in request order, as Kafka
clients expect. Produce requests are answered concurrently, up to ``max_in_flight_requests_per_connection``
read ahead (Kafka's broker handles one request of a connection at a time; a produce here waits on Ray calls
of a few milliseconds, so one at a time would hold a client that pipelines, as librdkafka does with
linger.ms=0, to a few hundred requests a second); any other request is answered before the next is read. Produce requests to one partition still reach its leader
in the order the client sent them (:mod:`raystream.gateway.data_apis`). Connections are independent.

Bad input never takes the server down: a frame that cannot be read (malformed, truncated, larger than
``socket_request_max_bytes``, an unknown API key) closes that connection; an unsupported version of
ApiVersions gets Kafka's UNSUPPORTED_VERSION answer (as version 0, so any client can read it); an
unsupported version of another API closes the connection; a connection idle for
``connections_max_idle_ms`` or silent for ``request_timeout_ms`` inside a frame (slow-loris) is closed.

Security (``security=``, a :class:`~raystream.gateway.security.SecurityConfig`; none: PLAINTEXT, no ACLs):
SSL and SASL_SSL listeners speak TLS (``asyncio.start_server(ssl=...)``, the handshake bounded by
``tls.handshake_timeout_ms``); each connection has a :class:`~raystream.gateway.sasl_apis.Session` (its
principal, its SASL state). On a SASL listener an unauthenticated connection may send ApiVersions,
SaslHandshake and SaslAuthenticate only, in frames of at most ``sasl.max_receive_bytes``; any other request
closes it, and so does a failed authentication once its answer is sent. With an authorizer, every request
is checked before its handler runs (:mod:`raystream.gateway.access`).

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
from raystream.gateway import access, apis, sasl_apis
from raystream.gateway.entities import build
from raystream.gateway.framing import (
    SOCKET_REQUEST_MAX_BYTES,
    encode_response,
    parse_request,
    peek_header,
    read_frame,
)
from raystream.gateway.security import SecurityConfig

log = logging.getLogger(__name__)
#: Produce requests of one connection handled at once (read ahead of the answers still being computed).
MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION = 32
PRODUCE = 0  # Kafka's API key


class Gateway:
    """A Kafka-protocol endpoint for one raystream cluster (reached through ``transport``).

    ``host``/``port``: where to listen (port 0: any free port, see :attr:`port`); ``advertised_host`` /
    ``advertised_port``: what Metadata tells clients to connect to (default: the listening address);
    ``node_id``: this gateway's Kafka node id (a per-node gateway's is its node's broker id). ``peers``: the
    other gateways of the cluster, Kafka node id -> advertised (host, port), called on the event loop for each
    Metadata, FindCoordinator and DescribeCluster (so it must return at once); without it this gateway is
    the cluster's only broker (:mod:`raystream.gateway.apis`). ``security``: the listener's security protocol,
    SASL users, TLS files and ACLs (see the module docstring)."""

    def __init__(self, transport: BaseTransport, host: str = "127.0.0.1", port: int = 9092, *,
                 advertised_host: str | None = None, advertised_port: int | None = None, node_id: int = 0,
                 socket_request_max_bytes: int = SOCKET_REQUEST_MAX_BYTES,
                 connections_max_idle_ms: int = 600_000, request_timeout_ms: int = 30_000,
                 metadata_max_age_ms: int = 300_000, peers: apis.Peers | None = None,
                 security: SecurityConfig | None = None,
                 max_in_flight_requests_per_connection: int = MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION) -> None:
        if max_in_flight_requests_per_connection < 1:
            raise ValueError("max_in_flight_requests_per_connection must be >= 1, got "
                             f"{max_in_flight_requests_per_connection!r}")
        self.max_in_flight_requests_per_connection = max_in_flight_requests_per_connection
        self.transport = transport
        self.security = security or SecurityConfig()
        self._ssl = self.security.ssl_context()  # built now, so that bad TLS files fail the constructor
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
        tls = self.security.tls if self._ssl is not None else None
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self._port, ssl=self._ssl,
            ssl_handshake_timeout=None if tls is None else tls.handshake_timeout_ms / 1000)
        log.info("Kafka gateway listening on %s:%d (%s)", self.host, self.port, self.security.protocol)

    async def serve(self) -> None:
        """Start (if not started) and serve until cancelled."""
        if self._server is None:
            await self.start()
        async with self._server:
            await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening, end every connection, and return once they are gone. Connections end first:
        ``wait_closed`` waits for every open connection (Python 3.11.5+, 3.12.1+), so with a client still
        connected it would never return."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        ctx = self.context()
        session = self._session(writer)
        sasl_apis.CURRENT.set(session)  # this task's context only: see sasl_apis.CURRENT
        answers: asyncio.Queue = asyncio.Queue(self.max_in_flight_requests_per_connection)
        responder = asyncio.create_task(self._respond_in_order(answers, writer))
        reading = asyncio.create_task(self._read_requests(reader, ctx, session, answers, responder))
        try:
            # Until both end, or either fails: a failed answer ends the connection at once, without waiting for
            # the client's next frame; a frame that cannot be read ends it without the answers still pending.
            await asyncio.wait([reading, responder], return_when=asyncio.FIRST_EXCEPTION)
            for part in (responder, reading):
                if part.done():
                    part.result()  # its exception, if it failed
            await responder
        except (InvalidRequestError, UnsupportedVersionError, asyncio.TimeoutError) as exc:
            log.info("closing Kafka connection from %s: %s", peer, exc or type(exc).__name__)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # the gateway is closing: end this connection quietly
            pass
        except Exception:  # a handler's bug must not end the server: this connection closes, others go on
            log.exception("closing Kafka connection from %s after an unexpected error", peer)
        finally:
            reading.cancel()
            responder.cancel()
            while not answers.empty():  # requests read but not answered: the connection is going
                pending = answers.get_nowait()
                if pending is not None:
                    pending.cancel()
            self._connections.discard(task)
            if session.close_after_response:
                await self._linger(reader)
            writer.close()

    async def _read_requests(self, reader: asyncio.StreamReader, ctx: apis.GatewayContext,
                             session: sasl_apis.Session, answers: asyncio.Queue, responder: asyncio.Task) -> None:
        """Read frames and start answering each at once; ends with None in ``answers`` (the connection's end).
        Produce requests are read ahead of their answers, up to ``max_in_flight_requests_per_connection``: the
        one kind clients pipeline by the hundred. Any other request is answered before the next frame is
        read, as Kafka's broker does (librdkafka's consumer reads 2.5x slower when its fetches overlap), and
        so is every request before SASL authentication, since each may change what the next may do."""
        while not session.close_after_response and not responder.done():
            frame = await self._next_frame(reader, session)
            if frame is None:
                break
            answer = asyncio.ensure_future(self._answer(frame, ctx, session))
            await answers.put(answer)
            if not session.authenticated or peek_header(frame)[0] != PRODUCE:
                await asyncio.wait([answer, responder], return_when=asyncio.FIRST_COMPLETED)
        await answers.put(None)

    @staticmethod
    async def _respond_in_order(answers: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        """Write each answer in request order, as Kafka clients expect; the first request that fails (a
        malformed frame, a handler's bug) ends the connection, after the answers before it."""
        while (answer := await answers.get()) is not None:
            response = await answer
            if response is not None:
                writer.write(response)
                await writer.drain()

    async def _linger(self, reader: asyncio.StreamReader) -> None:
        """After a refused authentication: let the client read the answer and close first (some clients drop
        an answer that arrives together with the server's close), up to
        ``sasl.failed_authentication_delay_ms``; anything it sends meanwhile is ignored."""
        deadline = asyncio.get_running_loop().time() + self.security.failed_authentication_delay_ms / 1000
        try:
            while await asyncio.wait_for(reader.read(65536), max(0.0, deadline - asyncio.get_running_loop().time())):
                pass
        except (asyncio.TimeoutError, ConnectionError):
            pass

    def _session(self, writer: asyncio.StreamWriter) -> sasl_apis.Session:
        """A new connection's session: its client host, and the principal of its verified client certificate
        (an SSL listener asking for one) or else User:ANONYMOUS until SASL says otherwise."""
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else ""
        principal = None
        if self._ssl is not None and self.security.tls is not None:
            principal = self.security.tls.principal_of(writer.get_extra_info("peercert"))
        return sasl_apis.Session(self.security, host, principal)

    async def _next_frame(self, reader: asyncio.StreamReader, session: sasl_apis.Session) -> bytes | None:
        limit = session.max_frame_bytes
        max_bytes = self.socket_request_max_bytes if limit is None else min(limit, self.socket_request_max_bytes)
        return await read_frame(reader, max_bytes, self.connections_max_idle_s, self.request_timeout_s)

    async def _answer(self, frame: bytes, ctx: apis.GatewayContext, session: sasl_apis.Session) -> bytes | None:
        api_key = peek_header(frame)[0]
        if not session.may_send(api_key):  # Kafka closes a connection that skips authentication
            raise InvalidRequestError(f"API key {api_key} before SASL authentication", api_key=api_key)
        try:
            request = parse_request(frame, apis.SUPPORTED)
        except UnsupportedVersionError as exc:
            if exc.api_key != apis.API_VERSIONS:
                raise
            # Kafka answers an ApiVersions request it does not know with version 0 and its versions.
            body = build(load_response_schema(apis.API_VERSIONS, 0),
                         apis.api_versions_values(ErrorCode.unsupported_version))
            return encode_response(exc.correlation_id, body)
        body = await access.handle(request, ctx, session)
        return None if body is None else encode_response(request.correlation_id, body)

