"""SaslHandshake and SaslAuthenticate, and each connection's security state (:class:`Session`).

On a SASL listener (SASL_PLAINTEXT, SASL_SSL) a client first sends SaslHandshake naming a mechanism, then
the mechanism's tokens in SaslAuthenticate requests (KIP-152) until the exchange completes; until then the
gateway serves ApiVersions, SaslHandshake and SaslAuthenticate only (the server closes the connection on
any other request, as Kafka's broker does). A wrong password, an unknown user or a malformed token gets
SASL_AUTHENTICATION_FAILED, and the connection is closed after that answer; a mechanism the listener does
not enable gets UNSUPPORTED_SASL_MECHANISM (with the enabled list) and is closed too. A handshake on a
listener without SASL, or once authenticated, is ILLEGAL_SASL_STATE (re-authentication, KIP-368, is not
served: ``session_lifetime`` is 0). SaslHandshake v0 (raw tokens without Kafka framing, before Kafka 1.0)
is not served; every current client negotiates v1.

The principal: ``User:<name>`` after SASL; on an SSL listener with a verified client certificate, the
certificate's subject (:meth:`raystream.gateway.security.TlsConfig.principal_of`); else ``User:ANONYMOUS``.

Concurrency: a :class:`Session` belongs to one connection and is used by that connection's task only.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

from kio.schema.errors import ErrorCode

from raystream.core.acl import ANONYMOUS
from raystream.errors import SaslAuthenticationError
from raystream.gateway import sasl
from raystream.gateway.framing import Request
from raystream.gateway.security import SecurityConfig

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
#: What an unauthenticated client may ask on a SASL listener.
BEFORE_AUTHENTICATION = frozenset({API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE})


class Session:
    """One connection's security state: who the client is and where its SASL exchange stands."""

    def __init__(self, security: SecurityConfig, host: str, principal: str | None = None) -> None:
        self.security = security
        self.host = host
        self.principal = principal or ANONYMOUS
        self.authenticated = not security.uses_sasl
        self.exchange: sasl.Exchange | None = None
        #: Set by a handler whose answer must be the connection's last (a failed authentication).
        self.close_after_response = False

    def may_send(self, api_key: int) -> bool:
        """Whether the connection may make this request now (else the server closes it)."""
        return self.authenticated or api_key in BEFORE_AUTHENTICATION

    @property
    def max_frame_bytes(self) -> int | None:
        """The frame bound before authentication (sasl.server.max.receive.size); None once authenticated."""
        return None if self.authenticated else self.security.sasl_max_receive_bytes

    def authorize(self, operation: Any, resource_type: Any, name: str) -> bool:
        """Whether this connection's principal may do ``operation`` on the resource (True with no ACLs)."""
        authorizer = self.security.authorizer
        return authorizer is None or authorizer.authorize(self.principal, self.host, operation, resource_type, name)

    def authorize_any(self, operation: Any, resource_type: Any) -> bool:
        authorizer = self.security.authorizer
        return authorizer is None or authorizer.authorize_any(self.principal, self.host, operation, resource_type)


#: The current connection's session: the server sets it in each connection's task (asyncio gives every task
#: its own copy of the context), so handlers of that connection, and only they, see it.
CURRENT: contextvars.ContextVar[Session | None] = contextvars.ContextVar("raystream_gateway_session", default=None)


async def sasl_handshake(request: Request, ctx: Any) -> Mapping[str, Any]:
    session = CURRENT.get()
    enabled = list(session.security.sasl_mechanisms) if session is not None and session.security.uses_sasl else []
    if session is None or not enabled or session.authenticated or session.exchange is not None:
        session_close(session)
        return {"error_code": ErrorCode.illegal_sasl_state, "mechanisms": enabled}
    mechanism = request.body.mechanism
    if mechanism not in enabled:
        session_close(session)
        return {"error_code": ErrorCode.unsupported_sasl_mechanism, "mechanisms": enabled}
    session.exchange = sasl.start(mechanism, session.security.users)
    return {"error_code": ErrorCode.none, "mechanisms": enabled}


async def sasl_authenticate(request: Request, ctx: Any) -> Mapping[str, Any]:
    session = CURRENT.get()
    if session is None or session.exchange is None or session.authenticated:
        session_close(session)
        return {"error_code": ErrorCode.illegal_sasl_state, "auth_bytes": b"", "session_lifetime": 0,
                "error_message": "SaslAuthenticate without a SaslHandshake in progress"}
    try:
        answer = session.exchange.step(request.body.auth_bytes)
    except SaslAuthenticationError as exc:
        session.close_after_response = True
        return {"error_code": ErrorCode.sasl_authentication_failed, "error_message": exc.message,
                "auth_bytes": b"", "session_lifetime": 0}
    if session.exchange.complete:
        session.principal = f"User:{session.exchange.username}"
        session.authenticated = True
    return {"error_code": ErrorCode.none, "error_message": None, "auth_bytes": answer, "session_lifetime": 0}


def session_close(session: Session | None) -> None:
    if session is not None:
        session.close_after_response = True


#: Kafka API key -> (min version, max version, handler) served by this module.
HANDLERS = {
    SASL_HANDSHAKE: (1, 1, sasl_handshake),  # SaslHandshake (v0's raw tokens are not served)
    SASL_AUTHENTICATE: (0, 2, sasl_authenticate),  # SaslAuthenticate
}
