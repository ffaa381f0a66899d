"""The SASL mechanisms the gateway serves: PLAIN (RFC 4616) and SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802,
RFC 7677), with credentials as Kafka keeps them.

PLAIN checks a password given in the configuration. SCRAM checks a *stored credential*: the salt, the
iteration count, ``StoredKey = H(HMAC(SaltedPassword, "Client Key"))`` and
``ServerKey = HMAC(SaltedPassword, "Server Key")`` with ``SaltedPassword = PBKDF2-HMAC(password, salt,
iterations)``, which is what Kafka's ``kafka-configs --add-config 'SCRAM-SHA-256=[...]'`` stores; the
password itself need not be kept. :func:`scram_credential` makes one (``raystream gateway-credential`` on
the command line). SCRAM's messages, nonces and proof checks are the ``scramp`` library's (which computes
with :mod:`hashlib` and :mod:`hmac`); nothing cryptographic is written here.

An :class:`Exchange` is one connection's authentication in progress: :meth:`Exchange.step` takes the
client's next token and returns the server's answer; it raises
:class:`~raystream.errors.SaslAuthenticationError` for an unknown user, a wrong password or a malformed
message. Values are immutable; an exchange belongs to one connection (one task), so it is not thread-safe
and needs not be.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
from collections.abc import Callable, Mapping
from typing import Any

import scramp

from raystream.errors import InvalidConfigurationError, SaslAuthenticationError

PLAIN = "PLAIN"
SCRAM_SHA_256, SCRAM_SHA_512 = "SCRAM-SHA-256", "SCRAM-SHA-512"
SCRAM_MECHANISMS = (SCRAM_SHA_256, SCRAM_SHA_512)
MECHANISMS = (PLAIN, *SCRAM_MECHANISMS)
#: Kafka's default (and smallest allowed) SCRAM iteration count.
DEFAULT_ITERATIONS = 4096
#: The largest SCRAM iteration count accepted in a stored credential (Kafka allows 4096 to 16384).
MAX_ITERATIONS = 16384
#: scramp's server errors that mean a wrong password or an unknown user (told apart in no message).
_BAD_CREDENTIALS = ("invalid-proof", "unknown-user")
_CREDENTIAL_KEYS = ("salt", "stored_key", "server_key", "iterations")


@dataclasses.dataclass(frozen=True)
class ScramCredential:
    """One user's stored SCRAM credential for one mechanism (Kafka's salt, stored_key, server_key,
    iterations); the keys are bytes here and base64 in the configuration file."""

    salt: bytes
    stored_key: bytes = dataclasses.field(repr=False)
    server_key: bytes = dataclasses.field(repr=False)
    iterations: int = DEFAULT_ITERATIONS

    def to_mapping(self) -> dict[str, Any]:
        """The configuration file's form (base64 keys), which :meth:`from_mapping` reads back."""
        return {"salt": _b64(self.salt), "stored_key": _b64(self.stored_key),
                "server_key": _b64(self.server_key), "iterations": self.iterations}

    @classmethod
    def from_mapping(cls, value: Any, where: str) -> ScramCredential:
        """Read the configuration's form; ``where`` names the entry in errors."""
        if not isinstance(value, Mapping) or set(value) != set(_CREDENTIAL_KEYS):
            raise InvalidConfigurationError(f"{where}: expected a mapping with exactly the keys "
                                            f"{', '.join(_CREDENTIAL_KEYS)}", key=where)
        iterations = value["iterations"]
        if isinstance(iterations, bool) or not isinstance(iterations, int) or not (
                DEFAULT_ITERATIONS <= iterations <= MAX_ITERATIONS):
            raise InvalidConfigurationError(f"{where}.iterations: expected an integer from {DEFAULT_ITERATIONS}"
                                            f" to {MAX_ITERATIONS}, got {iterations!r}", key=where)
        keys = {}
        for name in ("salt", "stored_key", "server_key"):
            try:
                keys[name] = base64.b64decode(str(value[name]), validate=True)
            except (binascii.Error, ValueError):
                raise InvalidConfigurationError(f"{where}.{name}: not base64", key=where) from None
            if not keys[name]:
                raise InvalidConfigurationError(f"{where}.{name}: empty", key=where)
        return cls(keys["salt"], keys["stored_key"], keys["server_key"], iterations)


def scram_credential(password: str, mechanism: str = SCRAM_SHA_256, iterations: int = DEFAULT_ITERATIONS,
                     salt: bytes | None = None) -> ScramCredential:
    """The stored SCRAM credential for ``password`` (a random salt unless given), as Kafka derives it."""
    if mechanism not in SCRAM_MECHANISMS:
        raise InvalidConfigurationError(f"not a SCRAM mechanism: {mechanism!r}; expected one of "
                                        f"{', '.join(SCRAM_MECHANISMS)}", key="mechanism")
    if not DEFAULT_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise InvalidConfigurationError(f"iterations: expected {DEFAULT_ITERATIONS} to {MAX_ITERATIONS}, "
                                        f"got {iterations}", key="iterations")
    made_salt, stored_key, server_key, count = scramp.ScramMechanism(mechanism).make_auth_info(
        password, iteration_count=iterations, salt=salt)
    return ScramCredential(made_salt, stored_key, server_key, count)


@dataclasses.dataclass(frozen=True)
class User:
    """A SASL user: a ``password`` for PLAIN (None: PLAIN refuses this user) and stored SCRAM credentials by
    mechanism name."""

    name: str
    password: str | None = dataclasses.field(default=None, repr=False)
    scram: Mapping[str, ScramCredential] = dataclasses.field(default_factory=dict)


class Exchange:
    """One SASL authentication in progress on one connection (see the module docstring)."""

    mechanism: str

    def __init__(self, users: Mapping[str, User]) -> None:
        self._users = users
        self.username: str | None = None  # the authenticated user, once :attr:`complete`
        self.complete = False

    def step(self, token: bytes) -> bytes:
        raise NotImplementedError

    def _failed(self, why: str) -> SaslAuthenticationError:
        return SaslAuthenticationError(f"Authentication failed during authentication with SASL mechanism "
                                       f"{self.mechanism}: {why}", mechanism=self.mechanism)


class PlainExchange(Exchange):
    """RFC 4616: one token ``[authzid] NUL authcid NUL password``; the authorization id, if given, must be
    the user itself (as Kafka's PLAIN server requires)."""

    mechanism = PLAIN

    def step(self, token: bytes) -> bytes:
        if self.complete:
            raise self._failed("the exchange is already complete")
        try:
            authzid, username, password = bytes(token).decode("utf-8").split("\0")
        except (UnicodeDecodeError, ValueError):
            raise self._failed("malformed PLAIN token (expected authzid NUL username NUL password)") from None
        if authzid and authzid != username:
            raise self._failed("the authorization id must be empty or the user name")
        user = self._users.get(username)
        expected = "" if user is None or user.password is None else user.password
        # Compare even for an unknown user, so that the time taken does not tell which users exist.
        matches = hmac.compare_digest(expected.encode("utf-8"), password.encode("utf-8"))
        if user is None or user.password is None or not matches or not password:
            raise self._failed("invalid credentials")
        self.username, self.complete = username, True
        return b""


class ScramExchange(Exchange):
    """RFC 5802 in two rounds: client-first -> server-first, client-final -> server-final."""

    def __init__(self, users: Mapping[str, User], mechanism: str, server_nonce: str | None = None) -> None:
        super().__init__(users)
        self.mechanism = mechanism
        self._asked: str | None = None
        # server_nonce: for known-answer tests only (RFC 7677's example); otherwise a fresh random one.
        self._server = scramp.ScramMechanism(mechanism).make_server(self._lookup, s_nonce=server_nonce)
        self._round = 0

    def _lookup(self, username: str) -> tuple[bytes, bytes, bytes, int] | None:
        self._asked = username
        user = self._users.get(username)
        credential = None if user is None else user.scram.get(self.mechanism)
        if credential is None:
            return None
        return credential.salt, credential.stored_key, credential.server_key, credential.iterations

    def step(self, token: bytes) -> bytes:
        steps: tuple[Callable[[str], str], ...] = (self._first, self._final)
        if self._round >= len(steps):
            raise self._failed("the exchange is already complete")
        try:
            text = bytes(token).decode("utf-8")
            answer = steps[self._round](text)
        except UnicodeDecodeError:
            raise self._failed("a SCRAM message that is not UTF-8") from None
        except scramp.ScramException as exc:
            code = getattr(exc.server_error, "value", None)
            raise self._failed("invalid credentials" if code in _BAD_CREDENTIALS else str(exc)) from None
        self._round += 1
        return answer.encode("utf-8")

    def _first(self, text: str) -> str:
        self._server.set_client_first(text)
        return self._server.get_server_first()

    def _final(self, text: str) -> str:
        self._server.set_client_final(text)
        answer = self._server.get_server_final()
        self.username, self.complete = self._asked, True
        return answer


def start(mechanism: str, users: Mapping[str, User]) -> Exchange:
    """A new exchange for ``mechanism`` (one of :data:`MECHANISMS`) over ``users`` (name -> user)."""
    if mechanism == PLAIN:
        return PlainExchange(users)
    if mechanism in SCRAM_MECHANISMS:
        return ScramExchange(users, mechanism)
    raise ValueError(f"unknown SASL mechanism {mechanism!r}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
