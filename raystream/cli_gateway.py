"""``raystream gateway``: serve the Kafka protocol for the cluster, until interrupted (Ctrl-C)."""

from __future__ import annotations

import asyncio

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
@click.pass_context
def gateway(ctx: click.Context, listen: str, advertised_listener: str | None, socket_request_max_bytes: int) -> None:
    """Serve the Kafka wire protocol (kcat, kafka-python, confluent-kafka, ...) for this cluster."""
    from raystream.client import context
    from raystream.gateway.server import Gateway

    host, port = _host_port(listen, "--listen")
    advertised = _host_port(advertised_listener, "--advertised-listener") if advertised_listener else (None, None)
    connect(ctx)
    server = Gateway(context.get_current(), host, port, advertised_host=advertised[0],
                     advertised_port=advertised[1], socket_request_max_bytes=socket_request_max_bytes)

    async def run() -> None:
        await server.start()
        click.echo(f"Kafka gateway listening on {host}:{server.port}", err=True)
        await server.serve()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
