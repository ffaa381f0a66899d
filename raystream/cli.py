"""Command-line interface for raystream (``raystream --help``).

Errors print one line on stderr and exit non-zero; no tracebacks for expected failures.

Global options: ``--address`` (``RAY_ADDRESS``), ``--cluster``, ``--data-dir`` (``RAYSTREAM_DATA_DIR``) and
``--config`` (``RAYSTREAM_CONFIG``), a cluster defaults file (:mod:`raystream.cluster_config`): it is
checked before any command runs, supplies ``cluster`` / ``address`` / ``data_dir`` when no flag or variable
does, and its broker settings and topic defaults reach the controller that ``rs.init`` creates.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import click

from raystream import __version__, cluster_config
from raystream.cli_cluster import start, status, stop
from raystream.cli_gateway import gateway, gateway_credential
from raystream.cli_groups import groups
from raystream.cli_perf import perf_test
from raystream.cli_topics import configs, consume, produce, topics
from raystream.errors import InvalidConfigurationError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="raystream", message="%(prog)s %(version)s")
@click.option("--address", envvar="RAY_ADDRESS", default=None,
              help="Ray cluster address [env RAY_ADDRESS; default: the config file's, else auto].")
@click.option("--cluster", default=None, help="raystream cluster name [default: the config file's, else default].")
@click.option("--data-dir", envvar="RAYSTREAM_DATA_DIR", default=None,
              help="Data directory [env RAYSTREAM_DATA_DIR; default: the config file's, else ~/.raystream/data].")
@click.option("--config", "config_file", envvar=cluster_config.ENV_VAR, default=None, metavar="PATH",
              help=f"Cluster defaults file (YAML) [env {cluster_config.ENV_VAR}].")
@click.pass_context
def main(ctx: click.Context, address: str | None, cluster: str | None, data_dir: str | None,
         config_file: str | None) -> None:
    """raystream: Kafka-like event streaming on Ray, backed by an Arrow segment log.

    Run `raystream COMMAND --help` for help on a specific command.
    """
    try:
        file = cluster_config.load(config_file, environ={})
    except InvalidConfigurationError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if file.path is not None:
        _use_config_file(ctx, file.path)
    address = address or file.address
    if address and ctx.invoked_subcommand not in _NO_RAY_ADDRESS:
        _check_reachable(address)
    ctx.obj = {"address": address, "cluster": cluster or file.cluster or "default", "data_dir": data_dir,
               "config": file.path}


#: Commands that do not use --address (dump-log reads files; perf-test --embedded starts its own Ray).
_NO_RAY_ADDRESS = ("dump-log", "perf-test")
ADDRESS_PROBE_TIMEOUT_S = 3.0


def _check_reachable(address: str) -> None:
    """Fail fast, in one line, when a ``host:port`` Ray address takes no connections: ``ray.init`` would
    retry for minutes, logging as it goes. Other forms (``auto``, ``local``, ``ray://...``) go to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in host:
        return
    host = host.strip("[]")  # [::1]:6379
    try:
        socket.create_connection((host, int(port)), timeout=ADDRESS_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise click.ClickException(f"cannot reach a Ray cluster at {address} ({reason}); check --address / "
                                   "RAY_ADDRESS, or start one with `ray start --head`") from None


def _use_config_file(ctx: click.Context, path: str) -> None:
    """``rs.init`` (called by each command's connect) reads the file from the environment: point it at the
    file this command chose (the flag wins over the variable), for this command only."""
    previous = os.environ.get(cluster_config.ENV_VAR)
    os.environ[cluster_config.ENV_VAR] = path

    def restore() -> None:
        if previous is None:
            os.environ.pop(cluster_config.ENV_VAR, None)
        else:
            os.environ[cluster_config.ENV_VAR] = previous

    ctx.call_on_close(restore)


main.add_command(topics)
main.add_command(configs)
main.add_command(produce)
main.add_command(consume)
main.add_command(groups)
main.add_command(perf_test)
main.add_command(start)
main.add_command(status)
main.add_command(stop)
main.add_command(gateway)
main.add_command(gateway_credential)


@main.command("dump-log")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dump_log_command(directory: str, as_json: bool) -> None:
    """Print every batch of a partition log directory (like kafka-dump-log)."""
    from raystream.storage.dump import dump_log

    bad = 0
    for entry in dump_log(directory):
        if entry.get("error") or entry.get("crc_valid") is False:
            bad += 1
        if as_json:
            click.echo(json.dumps(entry))
        elif entry["kind"] == "segment":
            click.echo(f"Dumping {entry['file']} ({entry.get('size', '?')} bytes) "
                       f"schema: {', '.join(entry.get('schema', []))}{entry.get('error', '')}")
        elif "error" in entry:
            click.echo(f"position: {entry['position']} ERROR: {entry['error']}")
        else:
            click.echo(
                "baseOffset: {base_offset} lastOffset: {last_offset} count: {count} baseSequence: "
                "{base_sequence} producerId: {producer_id} producerEpoch: {producer_epoch} partitionLeaderEpoch: "
                "{leader_epoch} isTransactional: {is_transactional} isControl: {is_control} position: {position} "
                "CreateTime: {max_timestamp} size: {size} crc: {crc} isvalid: {crc_valid}".format(**entry))
    if bad:
        click.echo(f"{bad} invalid batch(es) found", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
