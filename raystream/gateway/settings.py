"""The ``gateway:`` section of the configuration file: Kafka gateways that ``raystream start`` runs, one per
Ray node (:mod:`raystream.actors.gateway_actor`; docs/kafka-protocol.md, "Running gateways with raystream
start").

Keys (Kafka's dotted spelling or the attribute spelling; every key optional)::

    gateway:
      enabled: true                    # false: keep the section, start no gateway
      port: 9092                       # on every node (0: any free port, e.g. several nodes on one machine)
      listen.host: null                # null: the node's IP; 0.0.0.0: every interface
      advertised.hosts:                # what Metadata tells clients per node (default: the node's IP),
        10.0.0.2: broker-2.example.com #   keyed by the node's IP or its Ray node id
      socket.request.max.bytes: 104857600
      connections.max.idle.ms: 600000
      request.timeout.ms: 30000
      metadata.max.age.ms: 300000
      registration.interval.ms: 1000   # each gateway announces itself and reads the others this often
      registration.timeout.ms: 5000    # a gateway not heard from this long leaves Metadata
      node.check.interval.ms: 2000     # how often new Ray nodes get a gateway
      start.timeout.ms: 60000          # `raystream start` waits this long for every node's gateway
      security: {...}                  # the gateways' security settings (Gateway's ``security=``)

Pure: no Ray, no I/O. A mistake raises :class:`~raystream.errors.InvalidConfigurationError` naming the key.
Values are immutable once built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from raystream.config import _coerce
from raystream.errors import InvalidConfigurationError

#: Kafka's socket.request.max.bytes default (as raystream.gateway.framing's; not imported from there, which
#: loads the whole message index, so that reading a config file stays cheap).
SOCKET_REQUEST_MAX_BYTES = 104_857_600
#: Smallest ``socket.request.max.bytes`` accepted (as ``raystream gateway --socket-request-max-bytes``).
SOCKET_REQUEST_MIN_BYTES = 1024
_PORT_MAX = 65535
#: Positive integer settings (milliseconds), each at least 1.
_MS_KEYS = ("connections_max_idle_ms", "request_timeout_ms", "metadata_max_age_ms", "registration_interval_ms",
            "registration_timeout_ms", "node_check_interval_ms", "start_timeout_ms")


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    """How ``raystream start`` runs the per-node Kafka gateways (see the module docstring for each key)."""

    enabled: bool = True
    port: int = 9092
    listen_host: str | None = None
    advertised_hosts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    socket_request_max_bytes: int = SOCKET_REQUEST_MAX_BYTES
    connections_max_idle_ms: int = 600_000
    request_timeout_ms: int = 30_000
    metadata_max_age_ms: int = 300_000
    registration_interval_ms: int = 1000
    registration_timeout_ms: int = 5000
    node_check_interval_ms: int = 2000
    start_timeout_ms: int = 60_000
    security: Mapping[str, Any] | None = None
    #: Not a key: the configuration file's directory (set when the file is read), which relative paths in
    #: ``security`` (TLS files) are taken from.
    base_dir: str | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, base_dir: str | None = None) -> GatewaySettings:
        """Settings from the section's keys (either spelling), each checked; ``base_dir``: see the field."""
        known = {f.name for f in dataclasses.fields(cls)} - {"base_dir"}
        chosen: dict[str, Any] = {}
        for raw_key, value in (values or {}).items():
            key = str(raw_key).replace(".", "_")
            if key not in known:
                raise InvalidConfigurationError(f"unknown gateway config {raw_key!r}", key=raw_key)
            chosen[key] = _checked(key, str(raw_key), value)
        settings = cls(**chosen, base_dir=base_dir)
        if settings.registration_timeout_ms <= settings.registration_interval_ms:
            raise InvalidConfigurationError(
                f"registration.timeout.ms ({settings.registration_timeout_ms}) must be larger than "
                f"registration.interval.ms ({settings.registration_interval_ms}), or gateways would leave "
                f"Metadata between two announcements", key="registration.timeout.ms")
        return settings

    def advertised_host(self, node_ip: str, ray_node_id: str) -> str:
        """The host a node's gateway advertises: configured for its Ray node id or IP, else its IP."""
        return self.advertised_hosts.get(ray_node_id) or self.advertised_hosts.get(node_ip) or node_ip


def _checked(key: str, raw_key: str, value: Any) -> Any:
    """One setting's value, converted and range-checked."""
    if key == "enabled":
        return _coerce(raw_key, value, bool)
    if key in ("listen_host",):
        return None if value is None else _host(raw_key, value)
    if key == "advertised_hosts":
        if not isinstance(value, Mapping):
            raise InvalidConfigurationError(f"{raw_key} must map node IPs or Ray node ids to host names, got "
                                            f"{type(value).__name__}", key=raw_key)
        return {str(node): _host(f"{raw_key}.{node}", host) for node, host in value.items()}
    if key == "security":
        if value is not None and not isinstance(value, Mapping):
            raise InvalidConfigurationError(f"{raw_key} must be a mapping, got {type(value).__name__}", key=raw_key)
        return None if value is None else dict(value)
    number = _coerce(raw_key, value, int)
    low, high = (0, _PORT_MAX) if key == "port" else (SOCKET_REQUEST_MIN_BYTES, None) \
        if key == "socket_request_max_bytes" else (1, None)
    assert key == "port" or key == "socket_request_max_bytes" or key in _MS_KEYS, key
    if number < low or high is not None and number > high:
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidConfigurationError(f"{raw_key} must be {bounds}, got {value!r}", key=raw_key)
    return number


def _host(raw_key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidConfigurationError(f"{raw_key} must be a non-empty host name, got {value!r}", key=raw_key)
    return value.strip()
