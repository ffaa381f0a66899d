"""Pure tests of the gateway's SASL mechanisms (RFC 7677's SCRAM-SHA-256 example, a SCRAM client of
scramp's against the server, PLAIN) and of reading the security configuration."""

from __future__ import annotations

import base64

import pytest
import scramp

from raystream.errors import InvalidConfigurationError, SaslAuthenticationError
from raystream.gateway import sasl
from raystream.gateway.security import SecurityConfig

RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


def test_rfc7677_example_exchange():
    credential = sasl.scram_credential("pencil", sasl.SCRAM_SHA_256, 4096, salt=RFC7677_SALT)
    users = {"user": sasl.User("user", scram={sasl.SCRAM_SHA_256: credential})}
    exchange = sasl.ScramExchange(users, sasl.SCRAM_SHA_256,
                                  server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = exchange.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = exchange.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                          b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert exchange.complete and exchange.username == "user"
    with pytest.raises(SaslAuthenticationError):
        exchange.step(b"c=biws")  # nothing after the end


def _scram_login(mechanism: str, users, user: str, password: str) -> sasl.ScramExchange:
    client = scramp.ScramClient([mechanism], user, password)
    exchange = sasl.ScramExchange(users, mechanism)
    client.set_server_first(exchange.step(client.get_client_first().encode()).decode())
    client.set_server_final(exchange.step(client.get_client_final().encode()).decode())
    return exchange


@pytest.mark.parametrize("mechanism", sasl.SCRAM_MECHANISMS)
def test_scram_accepts_the_password_and_refuses_others(mechanism):
    users = {"bob": sasl.User("bob", scram={mechanism: sasl.scram_credential("right", mechanism, 8192)})}
    assert _scram_login(mechanism, users, "bob", "right").username == "bob"
    with pytest.raises(SaslAuthenticationError, match="invalid credentials"):
        _scram_login(mechanism, users, "bob", "wrong")
    with pytest.raises(SaslAuthenticationError, match="invalid credentials"):
        _scram_login(mechanism, users, "nobody", "right")
    with pytest.raises(SaslAuthenticationError):
        sasl.ScramExchange(users, mechanism).step(b"\xff\xfe not utf-8")
    with pytest.raises(SaslAuthenticationError):
        sasl.ScramExchange(users, mechanism).step(b"garbage")


def test_plain_checks_the_password_and_the_authorization_id():
    users = {"alice": sasl.User("alice", password="pw"), "bob": sasl.User("bob", scram={})}
    exchange = sasl.PlainExchange(users)
    assert exchange.step(b"\0alice\0pw") == b"" and exchange.username == "alice"
    assert sasl.PlainExchange(users).step(b"alice\0alice\0pw") == b""
    for token in (b"\0alice\0wrong", b"\0bob\0", b"\0eve\0pw", b"bob\0alice\0pw", b"alice\0pw", b"\0alice\0pw\0x"):
        with pytest.raises(SaslAuthenticationError):
            sasl.PlainExchange(users).step(token)


def test_a_stored_credential_round_trips_through_its_config_form():
    credential = sasl.scram_credential("pw", sasl.SCRAM_SHA_512, 4096)
    assert sasl.ScramCredential.from_mapping(credential.to_mapping(), "x") == credential
    for bad in ({**credential.to_mapping(), "iterations": 100}, {**credential.to_mapping(), "salt": "%%"},
                {"salt": "AA=="}, "text"):
        with pytest.raises(InvalidConfigurationError):
            sasl.ScramCredential.from_mapping(bad, "x")
    with pytest.raises(InvalidConfigurationError):
        sasl.scram_credential("pw", "PLAIN")


def test_security_config_reads_users_and_derives_scram_from_a_password():
    config = SecurityConfig.from_mapping({
        "protocol": "sasl_plaintext", "sasl": {"mechanisms": ["PLAIN", "SCRAM-SHA-512"], "users": {
            "alice": {"password": "pw"},
            "bob": {"scram-sha-512": sasl.scram_credential("b", sasl.SCRAM_SHA_512).to_mapping()}}}})
    assert config.uses_sasl and not config.uses_tls and config.sasl_mechanisms == ("PLAIN", "SCRAM-SHA-512")
    assert set(config.users["alice"].scram) == {"SCRAM-SHA-512"} and config.users["alice"].password == "pw"
    assert config.users["bob"].password is None
    assert "pw" not in repr(config) and "pw" not in repr(config.users["alice"])
    assert _scram_login("SCRAM-SHA-512", config.users, "alice", "pw").username == "alice"


@pytest.mark.parametrize("bad", [
    {"protocol": "KERBEROS"}, {"protocol": "SSL"}, {"sasl": {"mechanisms": ["GSSAPI"]}},
    {"sasl": {"users": {"x": {}}}}, {"sasl": {"users": {"x": {"password": ""}}}},
    {"sasl": {"users": {"x": {"pasword": "typo"}}}}, {"sasl": {"max_receive_bytes": 10}},
    {"tls": {"certfile": "a.pem"}}, {"tls": {"certfile": "a", "keyfile": "b", "client_auth": "required"}},
    {"unknown": 1}, {"authorization": {"acls": [{"principal": "alice", "operation": "Read",
                                                 "resource_type": "topic", "resource_name": "t"}]}},
])
def test_security_config_mistakes_are_named(bad):
    with pytest.raises(InvalidConfigurationError):
        SecurityConfig.from_mapping(bad)


def test_security_config_loads_a_raystream_yaml_gateway_section(tmp_path):
    path = tmp_path / "raystream.yaml"
    path.write_text("gateway:\n  security:\n    protocol: SASL_PLAINTEXT\n"
                    "    sasl: {users: {alice: {password: pw}}}\n")
    assert SecurityConfig.load(path).users["alice"].password == "pw"
    path.write_text("protocol: SSL\ntls: {certfile: missing.pem, keyfile: missing.key}\n")
    config = SecurityConfig.load(path)
    assert config.tls.certfile == str(tmp_path / "missing.pem")
    with pytest.raises(InvalidConfigurationError, match="certificate"):
        config.ssl_context()


def test_the_credential_command_prints_an_entry_the_config_reads(tmp_path):
    import yaml
    from click.testing import CliRunner

    from raystream.cli import main

    result = CliRunner().invoke(main, ["gateway-credential", "bob", "--mechanism", "scram-sha-512"],
                                input="s3cret\ns3cret\n")
    assert result.exit_code == 0, result.output
    entry = yaml.safe_load(result.output[result.output.index('"bob"'):])
    config = SecurityConfig.from_mapping({"protocol": "SASL_PLAINTEXT", "sasl": {"users": entry}})
    assert _scram_login("SCRAM-SHA-512", config.users, "bob", "s3cret").username == "bob"
    assert "s3cret" not in result.output  # neither echoed nor kept
