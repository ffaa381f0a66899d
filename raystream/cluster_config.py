"""Cluster defaults from a YAML file (``raystream.yaml``): parsing, validation and precedence.

The file is found by an explicit path (``rs.init(config=PATH)``, ``raystream --config PATH``), else the
``RAYSTREAM_CONFIG`` environment variable; without either there is no file and nothing changes. Format
(every key optional; Kafka's dotted names and the attribute spelling are both accepted, ``retention.ms`` or
``retention_ms``, ``data_dir`` or ``data.dir``)::

    cluster: prod                  # raystream cluster name (--cluster)
    address: auto                  # Ray cluster address (--address / RAY_ADDRESS)
    data_dir: /var/lib/raystream   # data directory (--data-dir / RAYSTREAM_DATA_DIR); relative: to this file
    broker:                        # cluster-wide settings: raystream.config.BrokerConfig
      default.replication.factor: 3  # a topic created without a replication factor
      num.partitions: 6              # a topic created without a partition count
      replica.lag.time.max.ms: 30000
    topic_defaults:                # defaults of every new topic: raystream.config.TopicConfig
      retention.ms: 604800000
      retention.bytes: -1
      flush.messages: 10000
      flush.ms: 1000
      min.insync.replicas: 2
    gateway:                       # Kafka gateways, one per node, run by `raystream start`:
      port: 9092                   #   raystream.gateway.settings.GatewaySettings (every key there)

Precedence, highest first: an explicit argument or CLI flag, then the environment variable
(``RAY_ADDRESS``, ``RAYSTREAM_DATA_DIR``), then this file, then the built-in (Kafka's) defaults. For a
topic: the config given to ``create_topic`` wins over ``topic_defaults``, which win over Kafka's defaults.
The defaults are resolved when a topic is created and recorded with it, so a later edit of the file changes
new topics only (``configs alter`` changes an existing one). Broker settings take effect when the
controller is created (the first ``rs.init`` / ``raystream start``); a running controller keeps its own.

Every mistake (a missing or unparsable file, an unknown key, a bad value) raises
:class:`~raystream.errors.InvalidConfigurationError` naming the file and the key. Pure: no Ray, no clock;
the environment comes in as an argument. Values are immutable once loaded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from raystream.config import BrokerConfig, TopicConfig
from raystream.core.names import validate_cluster_name
from raystream.errors import InvalidConfigurationError, InvalidTopicError
from raystream.gateway.settings import GatewaySettings

ENV_VAR = "RAYSTREAM_CONFIG"
BROKER = "broker"
TOPIC_DEFAULTS = "topic_defaults"
GATEWAY = "gateway"
_SCALARS = ("cluster", "address", "data_dir")
_TOP_LEVEL = (*_SCALARS, BROKER, TOPIC_DEFAULTS, GATEWAY)
_BROKER_KEYS = frozenset(f.name for f in dataclasses.fields(BrokerConfig))
_TOPIC_KEYS = frozenset(f.name for f in dataclasses.fields(TopicConfig))
#: Where data lives when no argument, environment variable or file says otherwise.
HOME_DATA_DIR = "~/.raystream/data"
#: Bounds the file we read: a defaults file is a few hundred bytes.
FILE_BYTES_MAX = 1 << 20


def _attr(key: str) -> str:
    return key.replace(".", "_")


def _kafka(key: str) -> str:
    return key.replace("_", ".")


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """The contents of one defaults file (or of none: every field empty). ``broker`` and
    ``topic_defaults`` hold only the keys the file sets, by Kafka's dotted names, values already checked."""

    path: str | None = None
    cluster: str | None = None
    address: str | None = None
    data_dir: str | None = None
    broker: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    topic_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The ``gateway:`` section (None: the file has none, ``raystream start`` runs no gateway).
    gateway: GatewaySettings | None = None

    def broker_config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The broker settings for the controller: this file's, with ``overrides`` (e.g. ``rs.init``'s
        ``broker_config``, either spelling) winning key by key."""
        merged = dict(self.broker)
        for key, value in (overrides or {}).items():
            merged[_kafka(str(key))] = value
        return merged

    def topic_config(self, config: Mapping[str, Any] | None = None) -> TopicConfig:
        """A new topic's effective config: ``config`` (given at create) over this file's
        ``topic_defaults`` over Kafka's defaults."""
        return TopicConfig.from_dict(config, base=TopicConfig.from_dict(self.topic_defaults))


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where ``rs.init`` connects: resolved from arguments, environment and file (see module docstring)."""

    address: str | None
    cluster: str
    data_dir: str


def config_path(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The defaults file to use: ``path``, else ``$RAYSTREAM_CONFIG``, else ``None`` (no file)."""
    environ = os.environ if environ is None else environ
    chosen = path if path not in (None, "") else environ.get(ENV_VAR) or None
    return None if chosen is None else os.fspath(chosen)


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> ClusterConfig:
    """Read and check the defaults file chosen by :func:`config_path`; an empty config without one."""
    chosen = config_path(path, environ)
    if chosen is None:
        return ClusterConfig()
    file = Path(chosen).expanduser().resolve()
    try:
        with open(file, "rb") as f:
            raw = f.read(FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise InvalidConfigurationError(f"config file {file} not found", file=str(file)) from None
    except OSError as exc:
        raise InvalidConfigurationError(f"cannot read config file {file}: {exc.strerror or exc}",
                                        file=str(file)) from None
    if len(raw) > FILE_BYTES_MAX:
        raise InvalidConfigurationError(f"config file {file} is larger than {FILE_BYTES_MAX} bytes",
                                        file=str(file))
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidConfigurationError(f"config file {file} is not UTF-8 text: {exc.reason}",
                                        file=str(file)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidConfigurationError(f"config file {file} is not valid YAML{where}: {problem}",
                                        file=str(file)) from None
    return parse(data, str(file))


def parse(data: Any, path: str) -> ClusterConfig:
    """Check parsed YAML ``data`` (from file ``path``, named in errors) and build the config."""
    if data is None:  # an empty file (or only comments): no defaults
        return ClusterConfig(path=path)
    section = _mapping(data, None, path)
    values: dict[str, Any] = {}
    for raw_key, value in section.items():
        key = _attr(raw_key)
        if key not in _TOP_LEVEL:
            raise _error(path, raw_key, f"unknown key {raw_key!r}{_hint(key)}; expected one of "
                                        f"{', '.join(_TOP_LEVEL)}")
        _no_duplicate(values, key, raw_key, path, None)
        values[key] = value
    scalars = {k: _scalar(k, values[k], path) for k in _SCALARS if values.get(k) is not None}
    if "cluster" in scalars:
        try:
            validate_cluster_name(scalars["cluster"])
        except (InvalidTopicError, ValueError) as exc:
            raise _error(path, "cluster", str(exc)) from None
    if "data_dir" in scalars:
        scalars["data_dir"] = str((Path(path).parent / Path(scalars["data_dir"]).expanduser()).resolve())
    return ClusterConfig(path=path, broker=_broker(values.get(BROKER), path),
                         topic_defaults=_topic_defaults(values.get(TOPIC_DEFAULTS), path),
                         gateway=_gateway(values, path), **scalars)


def resolve_connection(file: ClusterConfig, address: str | None = None, cluster: str | None = None,
                       data_dir: str | None = None, environ: Mapping[str, str] | None = None) -> Connection:
    """``rs.init``'s arguments over the environment over ``file`` over the built-in defaults."""
    environ = os.environ if environ is None else environ
    chosen_dir = data_dir or environ.get("RAYSTREAM_DATA_DIR") or file.data_dir or HOME_DATA_DIR
    return Connection(address=address or environ.get("RAY_ADDRESS") or file.address or None,
                      cluster=cluster or file.cluster or "default",
                      data_dir=str(Path(chosen_dir).expanduser().resolve()))


# -- sections ---------------------------------------------------------------------------------------------------
def _broker(section: Any, path: str) -> dict[str, Any]:
    given = _section(section, BROKER, _BROKER_KEYS, path)
    checked = _checked(BrokerConfig.from_dict, given, BROKER, path)
    return {_kafka(k): getattr(checked, k) for k in given}


def _topic_defaults(section: Any, path: str) -> dict[str, Any]:
    given = _section(section, TOPIC_DEFAULTS, _TOPIC_KEYS, path)
    checked = _checked(TopicConfig.from_dict, given, TOPIC_DEFAULTS, path)
    return {_kafka(k): getattr(checked, k) for k in given}


def _gateway(values: Mapping[str, Any], path: str) -> GatewaySettings | None:
    """The ``gateway:`` section's settings; an empty section (``gateway:`` alone) means every default."""
    if GATEWAY not in values:
        return None
    section = values[GATEWAY]
    if section is None:
        return GatewaySettings(base_dir=str(Path(path).parent))
    section = _mapping(section, GATEWAY, path)
    seen: dict[str, str] = {}
    for raw_key in section:  # one key given twice, in the dotted and the attribute spelling
        _no_duplicate(seen, _attr(raw_key), raw_key, path, GATEWAY)
        seen[_attr(raw_key)] = raw_key
    try:
        return GatewaySettings.from_dict(section, base_dir=str(Path(path).parent))
    except InvalidConfigurationError as exc:
        raise _error(path, f"{GATEWAY}.{exc.details.get('key', '')}".rstrip("."), exc.message) from None


def _checked(build: Any, given: Mapping[str, tuple[str, Any]], name: str, path: str) -> Any:
    """Build the config class from ``given`` (attribute key -> (key as written, value)): one key at a time
    first, so that each error names its key, then all together."""
    for raw_key, value in given.values():
        try:
            build({raw_key: value})
        except InvalidConfigurationError as exc:
            raise _error(path, f"{name}.{raw_key}", exc.message) from None
    try:
        return build({raw_key: value for raw_key, value in given.values()})
    except InvalidConfigurationError as exc:
        raise _error(path, name, exc.message) from None


def _section(section: Any, name: str, known: frozenset[str], path: str) -> dict[str, tuple[str, Any]]:
    """A section's keys, each checked to be known here (values are checked by the config classes)."""
    if section is None:
        return {}
    out: dict[str, tuple[str, Any]] = {}
    for raw_key, value in _mapping(section, name, path).items():
        key = _attr(raw_key)
        if key not in known:
            raise _error(path, f"{name}.{raw_key}", f"unknown {name} key {raw_key!r}{_hint(key, name)}")
        _no_duplicate(out, key, raw_key, path, name)
        out[key] = (raw_key, value)
    return out


def _mapping(value: Any, name: str | None, path: str) -> dict[str, Any]:
    where = f"section {name!r}" if name else "the top level"
    if not isinstance(value, Mapping):
        raise _error(path, name or "", f"{where} must be a mapping of keys to values, got "
                                       f"{type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise _error(path, name or "", f"keys in {where} must be strings, got {key!r}")
    return dict(value)


def _scalar(key: str, value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(path, key, f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _no_duplicate(seen: Mapping[str, Any], key: str, raw_key: str, path: str, name: str | None) -> None:
    if key in seen:
        full = f"{name}.{raw_key}" if name else raw_key
        raise _error(path, full, f"{raw_key!r} is given twice (as {_kafka(key)!r} and {key!r})")


def _hint(key: str, section: str | None = None) -> str:
    """Where a key that is misplaced belongs."""
    if key in _TOPIC_KEYS and section != TOPIC_DEFAULTS:
        return f" (a topic config: put it under {TOPIC_DEFAULTS}:)"
    if key in _BROKER_KEYS and section != BROKER:
        return f" (a broker config: put it under {BROKER}:)"
    if key in _SCALARS and section is not None:
        return " (a top-level key)"
    return ""


def _error(path: str, key: str, problem: str) -> InvalidConfigurationError:
    where = f"{key}: " if key and not problem.startswith(("unknown", f"{key} ")) else ""
    return InvalidConfigurationError(f"{path}: {where}{problem}", key=key, file=path)
