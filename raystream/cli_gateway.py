"""``raystream gateway``: serve the Kafka protocol for the cluster, until interrupted (Ctrl-C); and
``raystream gateway-credential``: print a SCRAM credential entry for the gateway's security config."""

from __future__ import annotations

import asyncio
import json

import click

from raystream.cli_topics import connect


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint=option)
    return host, int(port)


@click.command("gateway")
@click.option("--listen", default="127.0.0.1:9092", show_default=True, help="HOST:PORT to accept Kafka clients on.")
@click.option("--advertised-listener", default=None,
              help="HOST:PORT that clients are told to connect to (default: the listen address).")
@click.option("--socket-request-max-bytes", type=click.IntRange(min=1024), default=104_857_600,
              show_default=True, help="Largest request frame accepted (Kafka's socket.request.max.bytes).")
@click.option("--security-config", "security_file", default=None, metavar="FILE",
              help="YAML file with the listener's security (protocol, SASL users, TLS files, ACLs): its "
                   "gateway.security or security mapping, or the whole file (docs/kafka-protocol.md#security).")
@click.option("--security-protocol", default=None,
              type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], case_sensitive=False),
              help="Override the security config's protocol [default: the file's, else PLAINTEXT].")
@click.pass_context
def gateway(ctx: click.Context, listen: str, advertised_listener: str | None, socket_request_max_bytes: int,
            security_file: str | None, security_protocol: str | None) -> None:
    """Serve the Kafka wire protocol (kcat, kafka-python, confluent-kafka, ...) for this cluster."""
    import dataclasses

    from raystream.client import context
    from raystream.errors import InvalidConfigurationError
    from raystream.gateway.security import SecurityConfig
    from raystream.gateway.server import Gateway

    try:
        security = SecurityConfig.load(security_file) if security_file else SecurityConfig()
        if security_protocol:
            security = dataclasses.replace(security, protocol=security_protocol.upper())
        security.ssl_context()  # bad TLS files fail here, before joining the cluster
    except InvalidConfigurationError as exc:
        raise click.ClickException(exc.message) from None
    host, port = _host_port(listen, "--listen")
    advertised = _host_port(advertised_listener, "--advertised-listener") if advertised_listener else (None, None)
    connect(ctx)
    server = Gateway(context.get_current(), host, port, advertised_host=advertised[0],
                     advertised_port=advertised[1], socket_request_max_bytes=socket_request_max_bytes,
                     security=security)

    async def run() -> None:
        await server.start()
        click.echo(f"Kafka gateway listening on {host}:{server.port} ({security.protocol})", err=True)
        await server.serve()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@click.command("gateway-credential")
@click.argument("user")
@click.option("--mechanism", type=click.Choice(["SCRAM-SHA-256", "SCRAM-SHA-512"], case_sensitive=False),
              default="SCRAM-SHA-256", show_default=True, help="The SCRAM mechanism the credential is for.")
@click.option("--iterations", type=click.IntRange(4096, 16384), default=4096, show_default=True,
              help="PBKDF2 iterations (Kafka's 4096 to 16384).")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help="The password (prompted for, unechoed, when not given).")
def gateway_credential(user: str, mechanism: str, iterations: int, password: str) -> None:
    """Print USER's stored SCRAM credential as a YAML entry for security.sasl.users (no password kept)."""
    from raystream.gateway.sasl import scram_credential

    credential = scram_credential(password, mechanism.upper(), iterations).to_mapping()
    # JSON is YAML: one flow mapping under the user, ready to paste into sasl.users.
    click.echo(f"{json.dumps(user)}:\n  {mechanism.upper()}: {json.dumps(credential)}")
