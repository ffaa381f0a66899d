"""The configuration file's ``gateway:`` section (raystream.gateway.settings): defaults, both spellings,
every documented key, and one-line errors naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raystream.cluster_config import load, parse
from raystream.errors import InvalidConfigurationError
from raystream.gateway.settings import GatewaySettings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_no_section_no_gateways_and_an_empty_one_every_default(tmp_path):
    assert parse({"cluster": "c"}, "x.yaml").gateway is None
    settings = parse({"gateway": None}, str(tmp_path / "x.yaml")).gateway
    assert settings == GatewaySettings(base_dir=str(tmp_path))
    assert (settings.enabled, settings.port, settings.listen_host) == (True, 9092, None)


def test_both_spellings_and_per_node_advertised_hosts():
    settings = parse({"gateway": {"socket_request_max_bytes": "2048", "listen.host": "0.0.0.0", "enabled": "false",
                                  "advertised.hosts": {"10.0.0.2": "kafka-2", "abc123": "kafka-3"}}}, "x.yaml").gateway
    assert (settings.socket_request_max_bytes, settings.listen_host, settings.enabled) == (2048, "0.0.0.0", False)
    assert settings.advertised_host("10.0.0.2", "zzz") == "kafka-2"
    assert settings.advertised_host("10.0.0.3", "abc123") == "kafka-3"
    assert settings.advertised_host("10.0.0.4", "zzz") == "10.0.0.4"


def test_the_documented_example_is_valid(tmp_path):
    example = next(b for b in re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S) if "gateway:" in b)
    path = tmp_path / "raystream.yaml"
    path.write_text(example)
    settings = load(str(path)).gateway
    assert settings is not None and settings.listen_host == "0.0.0.0" and settings.security == {}


@pytest.mark.parametrize(("section", "key"), [
    ({"port": 70000}, "gateway.port"), ({"socket.request.max.bytes": 10}, "gateway.socket.request.max.bytes"),
    ({"registration.timeout.ms": 500}, "gateway.registration.timeout.ms"), ({"listen.host": ""}, "gateway.listen.host"),
    ({"advertised.hosts": ["a"]}, "gateway.advertised.hosts"), ({"security": "on"}, "gateway.security"),
    ({"port": 1, "port_": 2}, "port_"), ({"node.check.interval.ms": 0}, "gateway.node.check.interval.ms")])
def test_a_bad_value_names_its_key(section, key):
    with pytest.raises(InvalidConfigurationError, match=re.escape(key)):
        parse({"gateway": section}, "x.yaml")


def test_a_key_given_in_both_spellings_is_refused():
    with pytest.raises(InvalidConfigurationError, match="given twice"):
        parse({"gateway": {"listen.host": "a", "listen_host": "b"}}, "x.yaml")
