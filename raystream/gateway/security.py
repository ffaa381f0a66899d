"""The gateway's security settings: the listener's security protocol, SASL users, TLS files, ACLs.

One :class:`SecurityConfig` goes to ``Gateway(..., security=...)``; without one the gateway is PLAINTEXT
with no authorization, as before. It is read from the ``security:`` mapping of a configuration file by
:meth:`SecurityConfig.from_mapping` (or a whole YAML file by :meth:`SecurityConfig.load`)::

    protocol: SASL_SSL              # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL (Kafka's security protocols)
    sasl:
      mechanisms: [PLAIN, SCRAM-SHA-256, SCRAM-SHA-512]   # sasl.enabled.mechanisms
      max_receive_bytes: 524288     # largest frame before authentication (sasl.server.max.receive.size)
      failed_authentication_delay_ms: 100   # how long a refused client may take to read the answer and close
      users:
        alice: {password: alice-secret}           # PLAIN; SCRAM credentials are derived from it at load
        bob:                                      # SCRAM only: stored credentials, no password kept
          SCRAM-SHA-256: {salt: <base64>, stored_key: <base64>, server_key: <base64>, iterations: 4096}
    tls:
      certfile: server.pem          # the server's certificate chain (PEM); relative paths: to the file
      keyfile: server.key           # its private key (PEM)
      cafile: ca.pem                # CAs trusted for client certificates (needed for client_auth)
      client_auth: none             # none | requested | required (ssl.client.auth)
      principal: dn                 # a client certificate's principal: User:<subject DN> (dn) or User:<CN> (cn)
      handshake_timeout_ms: 10000   # a TLS handshake not done by then closes the connection
    authorization: ...              # ACLs: see raystream.core.acl.Authorizer.from_mapping

``raystream gateway-credential USER`` prints a SCRAM entry for ``users`` (:func:`raystream.gateway.sasl.
scram_credential` in Python). Every mistake raises :class:`~raystream.errors.InvalidConfigurationError`
naming the key. Values are immutable once loaded, so one config may serve many gateways and threads.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from raystream.core.acl import Authorizer
from raystream.errors import InvalidConfigurationError
from raystream.gateway import sasl

PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL = "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"
PROTOCOLS = (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)
#: Kafka's sasl.server.max.receive.size default: the largest frame an unauthenticated client may send.
SASL_MAX_RECEIVE_BYTES = 524_288
CLIENT_AUTH = {"none": ssl.CERT_NONE, "requested": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
PRINCIPAL_FORMS = ("dn", "cn")
#: The largest security file read (a file of users and ACLs is kilobytes).
FILE_BYTES_MAX = 1 << 20


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """The listener's TLS: certificate chain and key files (PEM), the CA file trusted for client certificates,
    whether a client certificate is asked for, and how its subject becomes the principal."""

    certfile: str
    keyfile: str
    cafile: str | None = None
    client_auth: str = "none"
    principal: str = "dn"
    handshake_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if self.client_auth not in CLIENT_AUTH:
            raise _error("tls.client_auth", f"expected one of {', '.join(CLIENT_AUTH)}, got {self.client_auth!r}")
        if self.client_auth != "none" and self.cafile is None:
            raise _error("tls.cafile", f"client_auth {self.client_auth} needs a cafile to check client certificates")
        if self.principal not in PRINCIPAL_FORMS:
            raise _error("tls.principal", f"expected one of {', '.join(PRINCIPAL_FORMS)}, got {self.principal!r}")
        if self.handshake_timeout_ms <= 0:
            raise _error("tls.handshake_timeout_ms", "must be positive")

    def context(self) -> ssl.SSLContext:
        """A server-side TLS context (TLS 1.2 or later) for ``asyncio.start_server(ssl=...)``."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
            if self.cafile is not None:
                context.load_verify_locations(cafile=self.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise _error("tls", f"cannot load the certificate, key or CA file: {exc}") from None
        context.verify_mode = CLIENT_AUTH[self.client_auth]
        return context

    def principal_of(self, peercert: Mapping[str, Any] | None) -> str | None:
        """``User:<subject>`` for a verified client certificate (:meth:`ssl.SSLSocket.getpeercert`), else None."""
        if not peercert or not peercert.get("subject"):
            return None
        rdns = [(_SHORT_NAMES.get(k, k), v) for rdn in peercert["subject"] for k, v in rdn]
        if self.principal == "cn":
            names = [v for k, v in rdns if k == "CN"]
            return f"User:{names[-1]}" if names else None
        # RFC 2253 order (the last RDN first), as Kafka's DEFAULT ssl.principal.mapping.rules give it.
        return "User:" + ",".join(f"{k}={_escape_dn(v)}" for k, v in reversed(rdns))


_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "localityName": "L",
                "stateOrProvinceName": "ST", "countryName": "C", "streetAddress": "STREET",
                "domainComponent": "DC", "userId": "UID"}


def _escape_dn(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    return out[:-1] + "\\ " if out.endswith(" ") else out


@dataclasses.dataclass(frozen=True)
class SecurityConfig:
    """Everything the gateway needs to secure its listener (see the module docstring for the file form)."""

    protocol: str = PLAINTEXT
    sasl_mechanisms: tuple[str, ...] = sasl.MECHANISMS
    users: Mapping[str, sasl.User] = dataclasses.field(default_factory=dict, repr=False)
    tls: TlsConfig | None = None
    authorizer: Authorizer | None = None
    sasl_max_receive_bytes: int = SASL_MAX_RECEIVE_BYTES
    failed_authentication_delay_ms: int = 100

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise _error("protocol", f"expected one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.uses_tls and self.tls is None:
            raise _error("tls", f"protocol {self.protocol} needs a tls section (certfile and keyfile)")
        unknown = [m for m in self.sasl_mechanisms if m not in sasl.MECHANISMS]
        if unknown or (self.uses_sasl and not self.sasl_mechanisms):
            raise _error("sasl.mechanisms", f"expected some of {', '.join(sasl.MECHANISMS)}, got "
                                            f"{list(self.sasl_mechanisms)}")
        if self.sasl_max_receive_bytes < 1024:
            raise _error("sasl.max_receive_bytes", "must be at least 1024")
        if not 0 <= self.failed_authentication_delay_ms <= 60_000:
            raise _error("sasl.failed_authentication_delay_ms", "expected 0 to 60000 (milliseconds)")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in (SASL_PLAINTEXT, SASL_SSL)

    @property
    def uses_tls(self) -> bool:
        return self.protocol in (SSL, SASL_SSL)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The listener's TLS context, or None for a protocol without TLS."""
        return self.tls.context() if self.uses_tls and self.tls is not None else None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, base_dir: str | os.PathLike | None = None
                     ) -> SecurityConfig:
        """The config of a ``security:`` mapping; relative TLS paths are taken from ``base_dir``."""
        data = _section(data, "security", ("protocol", "sasl", "tls", "authorization"))
        protocol = str(data.get("protocol", PLAINTEXT)).upper()
        mechanisms, users, limits = _sasl(data.get("sasl"))
        authorization = data.get("authorization")
        return cls(protocol=protocol, sasl_mechanisms=mechanisms, users=users,
                   tls=_tls(data.get("tls"), Path(base_dir or ".")),
                   authorizer=None if authorization is None else Authorizer.from_mapping(authorization),
                   **limits)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SecurityConfig:
        """The config in a YAML file: its ``gateway.security`` mapping (a raystream.yaml), else its
        ``security`` mapping, else the whole file as the security mapping."""
        file = Path(path).expanduser().resolve()
        try:
            with open(file, "rb") as f:
                raw = f.read(FILE_BYTES_MAX + 1)
            if len(raw) > FILE_BYTES_MAX:
                raise _error(str(file), f"larger than {FILE_BYTES_MAX} bytes")
            data = yaml.safe_load(raw.decode("utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InvalidConfigurationError(f"cannot read security config {file}: {exc}", file=str(file)) from None
        if isinstance(data, Mapping) and isinstance(data.get("gateway"), Mapping):
            data = data["gateway"].get("security") or {}
        elif isinstance(data, Mapping) and "security" in data:
            data = data["security"]
        try:
            return cls.from_mapping(data, base_dir=file.parent)
        except InvalidConfigurationError as exc:
            raise InvalidConfigurationError(f"{file}: {exc.message}", file=str(file)) from None


def _sasl(section: Any) -> tuple[tuple[str, ...], dict[str, sasl.User], dict[str, int]]:
    data = _section(section, "sasl", ("mechanisms", "users", "max_receive_bytes", "failed_authentication_delay_ms"))
    mechanisms = data.get("mechanisms", list(sasl.MECHANISMS))
    if isinstance(mechanisms, str):
        mechanisms = [m.strip() for m in mechanisms.split(",")]
    if not isinstance(mechanisms, list):
        raise _error("sasl.mechanisms", "expected a list of mechanism names")
    mechanisms = tuple(str(m).upper() for m in mechanisms)
    limits = {}
    for key in ("max_receive_bytes", "failed_authentication_delay_ms"):
        if key in data:
            if isinstance(data[key], bool) or not isinstance(data[key], int):
                raise _error(f"sasl.{key}", f"expected an integer, got {data[key]!r}")
            limits["sasl_max_receive_bytes" if key == "max_receive_bytes" else key] = data[key]
    users = {}
    for name, entry in _section(data.get("users"), "sasl.users", None).items():
        users[str(name)] = _user(str(name), entry, mechanisms)
    return mechanisms, users, limits


def _user(name: str, entry: Any, mechanisms: tuple[str, ...]) -> sasl.User:
    where = f"sasl.users.{name}"
    entry = _section(entry, where, None)
    password = entry.get("password")
    if password is not None and (not isinstance(password, str) or not password):
        raise _error(f"{where}.password", "expected a non-empty string")
    scram = {}
    for key, value in entry.items():
        if key == "password":
            continue
        mechanism = str(key).upper()
        if mechanism not in sasl.SCRAM_MECHANISMS:
            raise _error(f"{where}.{key}", f"unknown key; expected password or one of "
                                           f"{', '.join(sasl.SCRAM_MECHANISMS)}")
        scram[mechanism] = sasl.ScramCredential.from_mapping(value, f"{where}.{key}")
    if password is None and not scram:
        raise _error(where, "a user needs a password or a SCRAM credential")
    for mechanism in sasl.SCRAM_MECHANISMS:  # a password also serves SCRAM, with credentials made now
        if password is not None and mechanism in mechanisms and mechanism not in scram:
            scram[mechanism] = sasl.scram_credential(password, mechanism)
    return sasl.User(name, password, scram)


def _tls(section: Any, base_dir: Path) -> TlsConfig | None:
    if section is None:
        return None
    keys = [f.name for f in dataclasses.fields(TlsConfig)]
    data = _section(section, "tls", keys)
    for required in ("certfile", "keyfile"):
        if not data.get(required):
            raise _error(f"tls.{required}", "missing")
    values = dict(data)
    for name in ("certfile", "keyfile", "cafile"):
        if values.get(name):
            values[name] = str((base_dir / Path(str(values[name])).expanduser()).resolve())
    for name in ("client_auth", "principal"):
        if name in values:
            values[name] = str(values[name]).lower()
    if not isinstance(values.get("handshake_timeout_ms", 1), int):
        raise _error("tls.handshake_timeout_ms", "expected an integer (milliseconds)")
    return TlsConfig(**values)


def _section(value: Any, name: str, keys: Any) -> dict[str, Any]:
    """A mapping section (None: empty) with keys spelt ``a_b`` or ``a.b``, each one of ``keys`` (None: any)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _error(name, f"expected a mapping, got {type(value).__name__}")
    out = {}
    for raw_key, item in value.items():
        key = str(raw_key).replace(".", "_") if keys is not None else str(raw_key)
        if keys is not None and key not in keys:
            raise _error(f"{name}.{raw_key}", f"unknown key; expected one of {', '.join(keys)}")
        out[key] = item
    return out


def _error(key: str, message: str) -> InvalidConfigurationError:
    return InvalidConfigurationError(f"security config {key}: {message}", key=key)
